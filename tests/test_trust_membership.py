"""What a stolen node key can no longer do (issue 12, attacks 1, 2 and 4), against a real 5-node network.

The attacker holds a node certificate of the cluster's CA and speaks raw frames over a
real TLS connection (as ``test_hostile_messages`` does). Each attack is followed, on the
same connection, by a Ping to the attacked node whose Ack proves the node has processed
everything sent before it (a node handles one connection's messages in order), so the
outcome is checked without waiting on luck.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import secrets
import socket
import threading

import pytest
import trio

from cryptography.hazmat.primitives.serialization import Encoding

from p2pfs import identity, net, testnet, wire
from p2pfs.address import Address, parse_address
from p2pfs.claims import NodeClaims
from p2pfs.membership import MembershipConfig, MembershipService, incarnation_from_wall_clock
from p2pfs.membership import messages as mm
from p2pfs.membership.records import RecordSigner, RecordVerifier
from p2pfs.membership.state import Membership
from p2pfs.clock import SystemClock
from p2pfs.node import messages as nm
from p2pfs.node.daemon import EndpointGossip
from p2pfs.replication import messages as dm
from p2pfs.replication.healing import bucket_of
from p2pfs.replication.placement import name_key
from p2pfs.storage import NameEntry, Timestamp
from p2pfs.storage.hlc import WALL_MS_MAX
from p2pfs.wire import ErrorCode, Frame, FrameKind, Role

from testnet_helpers import Net, running_testnet, wait_for

INCARNATION_MAX = 2**63 - 1
STEP_TIMEOUT_S = 30.0
# How long a node is watched for traffic it must not send: covers several probe rounds
# (a node probes each of 4 other members about every 4 s with the default 1 s interval).
QUIET_WINDOW_S = 12.0
# After the proof that a node handled a ping-req, how long a dial it must not make may take to show.
DIAL_GRACE_S = 2.0


class Session:
    """A TLS connection to one node with the attacker's node certificate, speaking raw frames."""

    def __init__(self, ident: identity.Identity, address: Address, claimed: Address) -> None:
        self._ident = ident
        self._address = address
        self._claimed = claimed  # the listen address the attacker's hello announces
        self._stream: trio.SSLStream | None = None
        self._decoder = wire.FrameDecoder()
        self._stream_ids = itertools.count(1, 2)
        self._seqs = itertools.count(1)

    async def __aenter__(self) -> "Session":
        tcp = await trio.open_tcp_stream(self._address.host, self._address.port)
        self._stream = trio.SSLStream(tcp, self._ident.client_context(), server_hostname=None)
        await self._stream.do_handshake()
        hello = wire.Hello(wire.PROTOCOL_VERSION, self._ident.cluster_id, Role.NODE.value,
                           self._claimed.host, self._claimed.port)
        await self._send(Frame(FrameKind.HELLO, 0, wire.Hello.TYPE, wire.encode_message(hello)))
        frame = await self.next_frame()
        assert frame is not None and frame.kind is FrameKind.HELLO
        return self

    async def __aexit__(self, *exc) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await trio.aclose_forcefully(self._stream)

    async def _send(self, frame: Frame) -> None:
        await self._stream.send_all(wire.encode_frame(frame))

    async def next_frame(self) -> Frame | None:
        while (frame := self._decoder.next_frame()) is None:
            data = await self._stream.receive_some(65536)
            if not data:
                return None
            self._decoder.feed(data)
        return frame

    async def oneway(self, msg: wire.Message) -> None:
        await self._send(Frame(FrameKind.ONEWAY, 0, msg.TYPE, wire.encode_message(msg)))

    async def request(self, msg: wire.Message) -> wire.Message | ErrorCode:
        stream_id = next(self._stream_ids)
        await self._send(Frame(FrameKind.REQUEST, stream_id, msg.TYPE, wire.encode_message(msg)))
        while True:
            frame = await self.next_frame()
            assert frame is not None, "the node closed the connection"
            if frame.stream_id != stream_id:
                continue
            if frame.kind is FrameKind.ERROR:
                return wire.decode_error(frame.payload)[0]
            return wire.decode_message(frame.msg_type, frame.payload)

    async def wait_for_ack(self, seq: int) -> list[wire.Message]:
        """Read one-way messages until the Ack of ``seq``; returns what came before it."""
        before = []
        while True:
            frame = await self.next_frame()
            assert frame is not None, "the node closed the connection"
            if frame.kind is not FrameKind.ONEWAY:
                continue
            msg = wire.decode_message(frame.msg_type, frame.payload)
            if isinstance(msg, mm.Ack) and msg.seq == seq:
                return before
            before.append(msg)

    async def processed(self, node_id: str) -> None:
        """Return once the node has handled everything sent before: it acks a ping sent after."""
        seq = next(self._seqs)
        await self.oneway(mm.Ping(seq, node_id, ()))
        await self.wait_for_ack(seq)


# Anti-entropy every 2 s rather than 30 s, so that name sync with the rogue member happens soon.
OVERRIDES = {"replication": {"anti_entropy_interval_s": 2.0}}


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    with running_testnet(tmp_path_factory.mktemp("trust") / "net", nodes=5, overrides=OVERRIDES) as net:
        wait_for(lambda: all(_states(net, name) == {"alive"} and len(_members(net, name)) == 5 for name in net.names),
                 timeout_s=60.0, what="every node to see 5 live members")
        yield net


@pytest.fixture
def attacker(network, tmp_path):
    """A node key of the cluster's CA, certified for an address of its own.

    A fresh one per test: a node keeps one connection per node id, and a new session
    must not race the node's teardown of the last one (answers would go to the old).
    """
    ca = identity.load_ca(network.directory / testnet.CA_DIR)
    claims = NodeClaims(Address("127.0.0.1", 1), "", 2**30)
    return identity.create_identity(tmp_path / "attacker", ca, Role.NODE, claims=claims)


def _members(net: Net, name: str) -> dict[str, dict]:
    return {m["node_id"]: m for m in net.json("members", node=name)}


def _states(net: Net, name: str) -> set[str]:
    return {m["state"] for m in _members(net, name).values()}


def _addresses(net: Net) -> dict[str, Address]:
    return {name: parse_address(net.address(name)) for name in net.names}


def _run(async_fn, *args):
    return trio.run(lambda: _with_deadline(async_fn, *args))


async def _with_deadline(async_fn, *args):
    with trio.fail_after(STEP_TIMEOUT_S + QUIET_WINDOW_S):
        return await async_fn(*args)


# The rogue of the name-sync attack claims what the test network's nodes have, so that it
# replicates a fair share of the keys: with a tenth of theirs it shared none of the 20 test
# names in about a third of runs (small files are stored inline now, so no chunk keys either).
ROGUE_CAPACITY_BYTES = 10 * 2**30


def _meta(address: Address, capacity_bytes: int = 10 * 2**30) -> mm.MemberMeta:
    return mm.MemberMeta(address.host, address.port, "", capacity_bytes, wire.PROTOCOL_VERSION)


# -- attack 1: forged membership ------------------------------------------------------------


def test_a_forged_left_at_the_largest_incarnation_evicts_nobody(network, attacker):
    addresses, ids = _addresses(network), {n: network.node_id(n) for n in network.names}
    victim = "node4"
    forged = (
        mm.MemberFact(ids[victim], INCARNATION_MAX, mm.MemberState.LEFT, "", None),
        mm.MemberFact(ids[victim], INCARNATION_MAX, mm.MemberState.LEFT, "", _meta(addresses[victim])),
    )

    async def attack():
        for name in network.names:
            if name == victim:
                continue
            async with Session(attacker, addresses[name], Address("127.0.0.1", 1)) as session:
                await session.oneway(mm.Gossip(forged))
                await session.processed(ids[name])

    _run(attack)
    for name in network.names:
        assert _members(network, name)[ids[victim]]["state"] == "alive", f"{name} dropped {victim}"


def test_telling_each_node_all_the_others_left_splits_nothing(network, attacker, tmp_path):
    addresses, ids = _addresses(network), {n: network.node_id(n) for n in network.names}

    async def attack():
        for name in network.names:
            others = tuple(
                mm.MemberFact(ids[o], INCARNATION_MAX, mm.MemberState.LEFT, "", _meta(addresses[o]))
                for o in network.names if o != name
            )
            async with Session(attacker, addresses[name], Address("127.0.0.1", 1)) as session:
                await session.oneway(mm.Gossip(others))
                await session.processed(ids[name])

    _run(attack)
    for name in network.names:
        assert _states(network, name) == {"alive"} and len(_members(network, name)) == 5, name
    data = os.urandom(50_000)
    network.cli("put", "-", "--name", "after-the-split.bin", stdin=data, node="node1")
    out = tmp_path / "out.bin"
    network.cli("get", "after-the-split.bin", "-o", str(out), node="node3")
    assert out.read_bytes() == data


# -- attack 2: fake members and claims --------------------------------------------------------


def test_invented_members_with_huge_capacity_are_not_accepted(network, attacker):
    addresses = _addresses(network)
    invented = tuple(
        mm.MemberFact(hashlib.sha256(secrets.token_bytes(16)).hexdigest(), 1, mm.MemberState.ALIVE, "",
                      _meta(Address("127.0.0.1", 20_000 + i), capacity_bytes=2**63 - 1))
        for i in range(40)
    )
    target = network.node_id("node2")

    async def attack() -> set[str]:
        async with Session(attacker, addresses["node2"], Address("127.0.0.1", 1)) as session:
            await session.oneway(mm.Gossip(invented))
            await session.oneway(mm.PushPull(True, invented))
            await session.processed(target)
            # Asked of node2 itself (the CLI would fail over to another node if node2 stalled).
            reply = await session.request(nm.MembersRequest())
            return {m.node_id for m in reply.members}

    members = _run(attack)
    assert not {f.node_id for f in invented} & members
    assert len(members) == 5


def test_a_hello_with_another_nodes_address_does_not_draw_its_pings(network, attacker):
    addresses = _addresses(network)
    impersonated = network.node_id("node2")

    async def attack() -> list[wire.Message]:
        received = []
        async with Session(attacker, addresses["node1"], addresses["node2"]) as session:
            with trio.move_on_after(QUIET_WINDOW_S):
                while True:
                    frame = await session.next_frame()
                    assert frame is not None, "the node closed the connection"
                    if frame.kind is FrameKind.ONEWAY:
                        received.append(wire.decode_message(frame.msg_type, frame.payload))
        return received

    received = _run(attack)
    meant_for_node2 = [m for m in received if isinstance(m, mm.MEMBERSHIP_MESSAGES)]
    assert not meant_for_node2, f"node1 sent node2's traffic to the impostor: {meant_for_node2[:3]}"
    assert _members(network, "node1")[impersonated]["state"] == "alive"


def test_a_ping_req_does_not_make_a_node_dial_an_address_of_the_attackers_choice(network, attacker):
    addresses, node3 = _addresses(network), network.node_id("node3")
    dialled: list[str] = []

    async def attack():
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]

        async def count(stream):
            dialled.append("connected")
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, count, listeners)
            async with Session(attacker, addresses["node1"], Address("127.0.0.1", 1)) as session:
                # A member's id at the attacker's address, and an id nobody has.
                await session.oneway(mm.PingReq(101, node3, "127.0.0.1", port, 1.0, ()))
                await session.oneway(mm.PingReq(102, "ab" * 32, "127.0.0.1", port, 1.0, ()))
                # An honest ping-req after them: its forwarded ack proves they were handled.
                await session.oneway(mm.PingReq(103, node3, addresses["node3"].host, addresses["node3"].port, 5.0, ()))
                await session.wait_for_ack(103)
            await trio.sleep(DIAL_GRACE_S)  # a dial already started would arrive within this
            nursery.cancel_scope.cancel()

    _run(attack)
    assert not dialled, "node1 dialled the address a ping-req named"


# -- attack 4: a far-future version pins a name -------------------------------------------------


def _far_future_tombstone(name: str, writer: str) -> bytes:
    return NameEntry(name, Timestamp(WALL_MS_MAX, 0), writer, None).encode()


@pytest.mark.parametrize("via", ["put", "hint"])
def test_a_far_future_tombstone_is_refused(network, attacker, tmp_path, via):
    addresses = _addresses(network)
    name = f"pinned-by-{via}.bin"
    hint_for = network.node_id("node5") if via == "hint" else ""
    entry = _far_future_tombstone(name, attacker.node_id)
    answers = {}

    async def attack():
        for node in network.names:
            async with Session(attacker, addresses[node], Address("127.0.0.1", 1)) as session:
                answers[node] = await session.request(dm.PutName(entry, hint_for))

    _run(attack)
    assert all(answer == ErrorCode.BAD_REQUEST for answer in answers.values()), answers
    data = os.urandom(20_000)
    network.cli("put", "-", "--name", name, stdin=data, node="node2")
    out = tmp_path / "out.bin"
    network.cli("get", name, "-o", str(out), node="node4")
    assert out.read_bytes() == data


class RogueMember:
    """A member joined honestly with a stolen node key, whose name sync offers a far-future tombstone.

    It runs a real endpoint and a signing membership core in a trio loop of its own (a thread),
    answers chunk sync with "nothing differs", name sync with one name at version 2^48-1, and a
    read of that name with the tombstone; anything else it refuses.
    """

    def __init__(self, ident: identity.Identity, listen: Address, seeds: tuple[Address, ...], name: str) -> None:
        self.ident, self.listen, self.seeds, self.name = ident, listen, seeds, name
        self.entry = _far_future_tombstone(name, ident.node_id)
        self.asked: set[str] = set()  # nodes that read the name from us in name sync
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="rogue-member", daemon=True)

    async def handle_request(self, request: net.IncomingRequest):
        msg = request.msg
        if isinstance(msg, dm.SyncChunks):
            return dm.SyncChunksReply(())
        if isinstance(msg, dm.SyncNames):
            # As an honest peer answers: the name's bucket differs, and here is what it holds.
            return dm.SyncNamesReply((bucket_of(name_key(self.name)),),
                                     (dm.NameSummary(self.name, WALL_MS_MAX, 0, self.ident.node_id, True),))
        if isinstance(msg, dm.GetName) and msg.name == self.name:
            self.asked.add(request.peer.node_id)
            return dm.GetNameReply(self.entry)
        raise net.RemoteError(ErrorCode.UNAVAILABLE, "not serving that")

    def handle_oneway(self, conn: net.Connection, msg: wire.Message) -> None:
        if mm.is_membership_message(msg) and conn.peer_address is not None:
            self.membership.deliver(conn.peer_address, msg, conn.peer.node_id)

    def __enter__(self) -> "RogueMember":
        self._thread.start()
        assert self._ready.wait(STEP_TIMEOUT_S), "the rogue member did not start"
        assert self.failure is None, self.failure
        return self

    def __exit__(self, *exc) -> None:
        if self._token is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(STEP_TIMEOUT_S)

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to the test
            self.failure = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        cert_der = self.ident.cert.public_bytes(Encoding.DER)
        async with trio.open_nursery() as nursery:
            endpoint = net.Endpoint(self.ident, self.listen, self)
            await nursery.start(endpoint.run)
            self.membership = MembershipService(
                Membership(
                    node_id=self.ident.node_id, address=self.listen, zone="", capacity_bytes=ROGUE_CAPACITY_BYTES,
                    protocol_version=wire.PROTOCOL_VERSION,
                    incarnation_initial=incarnation_from_wall_clock(SystemClock()), config=MembershipConfig(),
                    rng=random.Random(1), now_s=trio.current_time(),
                    signer=RecordSigner(self.ident.signing_key(), cert_der), verifier=RecordVerifier(self.ident.ca_cert),
                ),
                EndpointGossip(endpoint, on_sent=lambda msg: None),
            )
            await nursery.start(self.membership.run, self.seeds)
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_far_future_tombstone_in_name_sync_is_not_stored(network, attacker, tmp_path):
    addresses = _addresses(network)
    name = "pinned-by-sync.bin"
    # Data every node shares with whoever joins: anti-entropy syncs with peers that share keys.
    for i in range(20):
        network.cli("put", "-", "--name", f"shared-{i}.bin", stdin=os.urandom(1000), node=network.names[i % 5])
    ca = identity.load_ca(network.directory / testnet.CA_DIR)
    listen = Address("127.0.0.1", _free_port())
    rogue_ident = identity.create_identity(tmp_path / "rogue", ca, Role.NODE, claims=NodeClaims(listen, "", ROGUE_CAPACITY_BYTES))
    with RogueMember(rogue_ident, listen, (addresses["node1"], addresses["node2"]), name) as rogue:
        wait_for(lambda: rogue.asked or rogue.failure, timeout_s=120.0,
                 what="a node to read the rogue's name in name sync")
        assert rogue.failure is None, rogue.failure
        asked = sorted(rogue.asked)

    async def stored_entries() -> dict[str, object]:
        # A node stores what it read right after reading it; allow that moment before looking.
        await trio.sleep(DIAL_GRACE_S)
        found = {}
        for name_of_node, node_id in ((n, network.node_id(n)) for n in network.names):
            if node_id not in asked:
                continue
            async with Session(attacker, addresses[name_of_node], Address("127.0.0.1", 1)) as session:
                found[name_of_node] = await session.request(dm.GetName(name))
        return found

    found = _run(stored_entries)
    assert found and all(reply == dm.GetNameReply(None) for reply in found.values()), found
