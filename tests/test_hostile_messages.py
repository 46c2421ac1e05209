"""A live node keeps serving whatever its peers send it or answer it.

A node runs in-process but for real: its own trio loop in a thread, real TLS on
127.0.0.1, real disk. Next to it runs a hostile peer: a real endpoint with a node
certificate from the same CA, which joins membership honestly (so the node counts
it as a live replica and syncs with it).

* Hostile requests: each example sends the node one message of every data, node
  and membership type, with random and boundary fields, often ones no honest
  message may carry (written as raw msgpack, past the message classes' checks);
  data and node requests from a node certificate, client ones from a client
  certificate. The node must close the connection or answer with a typed error,
  never with a handler's failure (INTERNAL).
* Hostile answers: the peer answers each of the node's own requests (anti-entropy
  digests, chunk fetches, name reads, writes, listings) as an example says: the
  declared answer with such fields, an answer of another type, or an error. Each
  example waits until the node has asked for anti-entropy (a malformed answer to
  that used to kill the node), and the node's puts and gets meet these answers too.
* Accusations: told that the peer is suspect or dead, the node holds it alive again once
  the peer refutes, as any live member does. A dropped connection can cost a probe, and
  the answers test waits for the node to sync with the peer.

After each example the node must still serve: its task is running, and a status
request and a put/get round trip through a client connection succeed.

The node's loop runs in a thread because an example is synchronous (hypothesis
drives it) while the node lives across examples: restarting it for each one would
cost more than the example. Shrinking is off: once a node has died every example
fails alike, so a shrunk example would say nothing; the failure carries the
values that killed it and the node's own exception instead.
"""

from __future__ import annotations

import io
import itertools
import random
import socket
import threading

import hypothesis
import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from p2pfs import identity, net, wire
from p2pfs.address import Address
from p2pfs.config import NodeSettings
from p2pfs.clock import SystemClock
from p2pfs.membership import MemberState, MembershipConfig, MembershipService, incarnation_from_wall_clock
from p2pfs.membership import messages as mm
from p2pfs.membership.state import Membership
from p2pfs.membership.records import RecordSigner, RecordVerifier
from p2pfs.node import messages as nm
from p2pfs.node.admin.config import AdminConfig
from p2pfs.node.config import NodeConfig
from p2pfs.node.daemon import EndpointGossip, Node
from p2pfs.replication import messages as dm
from p2pfs.replication.config import ReplicationConfig
from p2pfs.wire import ErrorCode, Frame, FrameKind, Role

from hostile_strategies import NODE_REQUESTS, Answer, RawMessage, Sent, answer_plans, messages_of_every_type

# Longest any one step of an example may take (a request answered, a round of
# anti-entropy seen, a put and a get) before the node counts as no longer serving.
STEP_TIMEOUT_S = 20.0
# Examples per run, so that each test stays within about 20 s on a busy 2-core
# machine: an example of answers costs about one anti-entropy round
# (ANTI_ENTROPY_INTERVAL_S) and two round trips; one of requests sends ~45
# messages, many of which cost a new TLS connection, and a round trip.
ANSWER_EXAMPLES = 25
REQUEST_EXAMPLES = 12
# How long a failed step waits for a dying node's loop to end, to report its death.
NODE_EXIT_S = 3.0
ANTI_ENTROPY_INTERVAL_S = 0.2
# Both members try a dead one again this often (the default is 30 s, past STEP_TIMEOUT_S).
# A drawn answer may make the node drop its connection to the peer and lose a probe or its
# ack; in a cluster of two a suspicion expires after 3 s, so under load the peer may be
# declared dead while alive. It refutes at the next full-state exchange (the product's
# guarantee), and an example must not wait longer than that for it.
RECONNECT_INTERVAL_S = 1.0
MEMBERSHIP = MembershipConfig(reconnect_interval_s=RECONNECT_INTERVAL_S)
FILE_BYTES = 3 * 4096 + 17  # a few chunks of the smallest size, and a partial one
CHUNK_SIZE_BYTES = 4096

# -- the hostile peer ----------------------------------------------------------------


class HostilePeer:
    """A member that answers every request of the node as ``plan`` says."""

    def __init__(self) -> None:
        self.plan: dict[type, Answer] = {}
        self.served: dict[type, int] = {req: 0 for req in NODE_REQUESTS}
        self.membership: MembershipService | None = None

    async def handle_request(self, request: net.IncomingRequest):
        kind = type(request.msg)
        if kind in self.served:
            self.served[kind] += 1
        answer = self.plan.get(kind)
        if answer is None:
            raise net.RemoteError(ErrorCode.UNAVAILABLE, "not now")
        return answer.message()

    def handle_oneway(self, conn: net.Connection, msg: wire.Message) -> None:
        if mm.is_membership_message(msg) and conn.peer_address is not None:
            self.membership.deliver(conn.peer_address, msg)


# -- raw sessions to the node ----------------------------------------------------------


class RawSession:
    """A TLS connection that writes frames as given and reads answers by stream id."""

    def __init__(self, ident: identity.Identity, address: Address, listen_port: int) -> None:
        self._ident = ident
        self._address = address
        self._listen_port = listen_port
        self._stream: trio.SSLStream | None = None
        self._decoder = wire.FrameDecoder()
        self._stream_ids = itertools.count(1, 2)

    async def _open(self) -> trio.SSLStream:
        tcp = await trio.open_tcp_stream(self._address.host, self._address.port)
        stream = trio.SSLStream(tcp, self._ident.client_context(), server_hostname=None)
        await stream.do_handshake()
        hello = wire.Hello(wire.PROTOCOL_VERSION, self._ident.cluster_id, self._ident.role.value,
                           "127.0.0.1" if self._listen_port else "", self._listen_port)
        await stream.send_all(wire.encode_frame(Frame(FrameKind.HELLO, 0, wire.Hello.TYPE, wire.encode_message(hello))))
        self._decoder = wire.FrameDecoder()
        frame = await self._next_frame(stream)
        assert frame is not None and frame.kind is FrameKind.HELLO, "the node did not say hello"
        return stream

    async def _next_frame(self, stream: trio.SSLStream) -> Frame | None:
        """The next frame, or None once the node closed the connection."""
        while (frame := self._decoder.next_frame()) is None:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            self._decoder.feed(data)
        return frame

    async def send(self, message: Sent) -> str:
        """Send one message; for a request, wait for its answer. Returns what happened."""
        if self._stream is None:
            self._stream = await self._open()
        stream = self._stream
        stream_id = next(self._stream_ids) if message.kind is FrameKind.REQUEST else 0
        payload = wire.encode_message(RawMessage(message.type_code, message.fields))
        try:
            await stream.send_all(wire.encode_frame(Frame(message.kind, stream_id, message.type_code, payload)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.close()
            return "closed"
        if message.kind is not FrameKind.REQUEST:
            return "sent"
        while True:
            frame = await self._next_frame(stream)
            if frame is None:
                await self.close()  # a protocol violation: the node hung up, as it should
                return "closed"
            if frame.stream_id == stream_id and frame.kind in (
                FrameKind.RESPONSE, FrameKind.RESPONSE_STREAM, FrameKind.ERROR
            ):
                if frame.kind is FrameKind.ERROR:
                    code, text = wire.decode_error(frame.payload)
                    assert code is not ErrorCode.INTERNAL, f"a handler failed on {message!r}: {text}"
                    return code.name
                # The node may stream a body; this session does not read it (the node's
                # sender waits for credit, then gives up, as with any stalled client).
                return "answered"

    async def close(self) -> None:
        if self._stream is not None:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await trio.aclose_forcefully(self._stream)
            self._stream = None


# -- the harness: a node and its hostile peer in a trio loop of their own ------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Harness:
    def __init__(self, tmp_path, make_identity) -> None:
        self.victim_ident = make_identity(Role.NODE)
        self.hostile_ident = make_identity(Role.NODE)
        self.attacker_ident = make_identity(Role.NODE)
        self.client_ident = make_identity(Role.CLIENT)
        self.data_dir = tmp_path / "victim"
        # Bound and never listening: connections to it are refused at once. Phantom
        # members and ping-req targets live here.
        self._closed = socket.socket()
        self._closed.bind(("127.0.0.1", 0))
        self.closed_port = self._closed.getsockname()[1]
        self.address = Address("127.0.0.1", _free_port())
        self.hostile = HostilePeer()
        self.failure: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._files = itertools.count()
        self._thread = threading.Thread(target=self._main, name="hostile-harness", daemon=True)

    # -- from the test's thread

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(STEP_TIMEOUT_S * 2), "the node did not start"
        self.check_alive()

    def stop(self) -> None:
        if self._token is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(STEP_TIMEOUT_S)
        self._closed.close()

    def check_alive(self) -> None:
        if self.failure is not None or not self._thread.is_alive():
            raise AssertionError(f"the node died: {self.failure!r}") from self.failure

    def run(self, async_fn, *args):
        """Run ``async_fn`` in the node's loop; fail if the node died meanwhile."""
        self.check_alive()
        try:
            return trio.from_thread.run(async_fn, *args, trio_token=self._token)
        except BaseException:
            # If the node is dying, this step may fail first (a refused connection, a
            # cancelled request): give its loop a moment to end and say why.
            self._thread.join(NODE_EXIT_S)
            self.check_alive()
            raise

    # -- in the node's thread

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # the node's own failure: reported to the test
            self.failure = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            hostile_endpoint = net.Endpoint(self.hostile_ident, Address("127.0.0.1", 0), self.hostile)
            await nursery.start(hostile_endpoint.run)
            hostile_address = hostile_endpoint.listen
            hostile_cert_der = self.hostile_ident.cert.public_bytes(Encoding.DER)
            # As a node's (daemon.Node), its verifier knows its own certificate: an accusation
            # carries the accused member's own record, and a member that cannot check its own
            # record refuses the accusation and never refutes it (it stayed dead for good).
            hostile_records = RecordVerifier(self.hostile_ident.ca_cert)
            hostile_records.add_certificate(hostile_cert_der)
            self.hostile_signer = RecordSigner(self.hostile_ident.signing_key(), hostile_cert_der)
            self.hostile.membership = MembershipService(
                Membership(
                    node_id=self.hostile_ident.node_id, address=hostile_address, zone="", capacity_bytes=10**12,
                    protocol_version=wire.PROTOCOL_VERSION, incarnation_initial=incarnation_from_wall_clock(SystemClock()),
                    config=MEMBERSHIP, rng=random.Random(1), now_s=trio.current_time(),
                    # It joins honestly: its records are signed, as the node requires.
                    signer=self.hostile_signer, verifier=hostile_records,
                ),
                EndpointGossip(hostile_endpoint, on_sent=lambda msg: None),
            )
            await nursery.start(self.hostile.membership.run, ())
            self.node = Node(
                NodeConfig(
                    node=NodeSettings(listen=self.address, seeds=(hostile_address,), data_dir=self.data_dir),
                    # w = r = 1: the node's own copy makes a put and a get succeed whatever
                    # its peers answer, so a failed round trip means the node failed.
                    replication=ReplicationConfig(
                        w=1, r=1, chunk_size_bytes=CHUNK_SIZE_BYTES, replica_timeout_s=2.0,
                        anti_entropy_interval_s=ANTI_ENTROPY_INTERVAL_S, gc_interval_s=1.0,
                        hint_delivery_interval_s=0.5,
                    ),
                    membership=MEMBERSHIP,
                    net=net.NetConfig(handshake_timeout_s=2.0, stream_idle_timeout_s=2.0),
                    admin=AdminConfig(),
                ),
                self.victim_ident,
            )
            await nursery.start(self.node.run)
            with trio.fail_after(STEP_TIMEOUT_S):
                while not any(m.node_id == self.hostile_ident.node_id for m in self.node.membership.members()):
                    await trio.sleep(0.05)
            await self.round_trip()  # the node now holds chunks it shares with the hostile peer
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    async def send_all(self, messages: list[Sent]) -> list[str]:
        sessions = {
            Role.NODE: RawSession(self.attacker_ident, self.address, self.closed_port),
            Role.CLIENT: RawSession(self.client_ident, self.address, 0),
        }
        outcomes = []
        try:
            for message in messages:
                with trio.fail_after(STEP_TIMEOUT_S):
                    outcomes.append(await sessions[message.role].send(message))
        finally:
            for session in sessions.values():
                await session.close()
        return outcomes

    async def answer_with(self, plan: dict[type, Answer]) -> None:
        self.hostile.plan = plan

    async def anti_entropy_seen(self) -> None:
        """Wait until the node has asked the hostile peer for chunk digests' answer.

        (Names follow in the same exchange only if that answer was a good one.)
        """
        start = self.hostile.served[dm.SyncChunks]
        with trio.fail_after(STEP_TIMEOUT_S):
            while self.hostile.served[dm.SyncChunks] == start:
                await trio.sleep(0.02)

    async def accuse_hostile_peer(self, state: MemberState) -> None:
        """Tell the node that the hostile peer is ``state`` (SUSPECT or DEAD) at the incarnation it
        holds, and wait until the peer has refuted: the node holds it ALIVE at a later incarnation.

        The accusation carries the peer's own record, as the node's own accusations do
        (``MemberView.accusation``), so the node believes it as it would a lost probe's.
        """
        hostile_id = self.hostile_ident.node_id
        accused = self.node.membership.core.member(hostile_id)
        assert accused is not None and accused.state is MemberState.ALIVE
        address = self.hostile.membership.core.address
        meta = mm.MemberMeta(address.host, address.port, "", 10**12, wire.PROTOCOL_VERSION)
        record = self.hostile_signer.sign(accused.incarnation, MemberState.ALIVE, meta)
        accusation = mm.MemberFact(hostile_id, accused.incarnation, state, self.attacker_ident.node_id, meta, record)
        self.node.membership.deliver(Address("127.0.0.1", self.closed_port), mm.Gossip((accusation,)),
                                     self.attacker_ident.node_id)
        assert self.node.membership.core.member(hostile_id).state is state, "the node did not believe it"

        def refuted() -> bool:
            member = self.node.membership.core.member(hostile_id)
            return member.state is MemberState.ALIVE and member.incarnation > accused.incarnation

        with trio.move_on_after(STEP_TIMEOUT_S):
            while not refuted():
                await trio.sleep(0.05)  # poll the node's view; the deadline bounds the wait
        member = self.node.membership.core.member(hostile_id)
        assert refuted(), (f"accused {state.name} at incarnation {accused.incarnation}, the hostile peer did not "
                           f"refute within {STEP_TIMEOUT_S} s: the node holds it {member.state.name} at "
                           f"{member.incarnation}")

    async def round_trip(self) -> None:
        """Status, then a put and a get of a fresh file through a client connection."""
        data = bytes(itertools.islice(itertools.cycle(b"hostile peers "), FILE_BYTES))
        name = f"probe/{next(self._files)}"

        async def body():
            yield data

        with trio.fail_after(STEP_TIMEOUT_S):
            async with net.client_connection(self.client_ident, self.address) as conn:
                status = await conn.request(nm.StatusRequest(), timeout_s=STEP_TIMEOUT_S)
                assert status.node_id == self.victim_ident.node_id
                put = await conn.request(dm.PutFile(name, len(data)), timeout_s=STEP_TIMEOUT_S, body=body())
                assert put.size_bytes == len(data)
                received = io.BytesIO()
                async with conn.open_request(dm.GetFile(name), timeout_s=STEP_TIMEOUT_S) as response:
                    async for piece in response.body:
                        received.write(piece)
                assert received.getvalue() == data


@pytest.fixture
def harness(tmp_path, make_identity):
    h = Harness(tmp_path, make_identity)
    h.start()
    yield h
    h.stop()


def run_examples(harness: Harness, examples: int, strategy: st.SearchStrategy, one_example, explicit=()) -> None:
    """Run ``one_example`` on ``explicit`` values, then on drawn ones.

    A node's death fails with the values that caused it.
    """

    @settings(
        max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(drawn=strategy)
    def example(drawn):
        try:
            one_example(drawn)
        except BaseException:
            if harness.failure is not None:
                raise AssertionError(f"the node died on {drawn}") from harness.failure
            raise

    for value in explicit:
        example = hypothesis.example(drawn=value)(example)
    example()
    harness.check_alive()


def test_node_serves_through_hostile_requests(harness):
    """Requests and membership messages with random and boundary fields: none may hurt the node."""

    def one_example(messages: list[Sent]) -> None:
        harness.run(harness.send_all, messages)
        harness.run(harness.round_trip)

    run_examples(harness, REQUEST_EXAMPLES, messages_of_every_type(harness.closed_port), one_example)


@pytest.mark.parametrize("state", [MemberState.SUSPECT, MemberState.DEAD])
def test_the_hostile_peer_refutes_when_the_node_accuses_it(harness, state):
    """The hostile peer is a live member: suspected (say, a probe lost with a dropped connection)
    or declared dead by the node, it refutes, and the node holds it alive again (within
    RECONNECT_INTERVAL_S when dead). The answers test waits for the node to sync with it."""
    harness.run(harness.accuse_hostile_peer, state)
    harness.run(harness.round_trip)


def test_node_serves_through_hostile_answers(harness):
    """A member answers the node's own requests (anti-entropy first) with malformed messages."""

    def one_example(plan: dict[type, Answer]) -> None:
        harness.run(harness.answer_with, plan)
        harness.run(harness.anti_entropy_seen)
        harness.run(harness.round_trip)  # its writes and reads meet the hostile answers too
        # With a peer that refuses everything, the node's own copy must serve.
        harness.run(harness.answer_with, {})
        harness.run(harness.round_trip)

    # First the answer that used to end the daemon: ids that do not split into
    # 32-byte chunk ids (ValueError out of split_ids, past the healer's filter).
    refuse = {req: Answer("error", int(ErrorCode.UNAVAILABLE), []) for req in NODE_REQUESTS}
    torn_ids = refuse | {dm.SyncChunks: Answer("raw", dm.SyncChunksReply.TYPE, [[[0, b"\x01" * 33]]])}
    run_examples(harness, ANSWER_EXAMPLES, answer_plans(), one_example, explicit=[torn_ids])
