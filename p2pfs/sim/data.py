"""A simulated data cluster: membership and the data service of many nodes in one process.

Each node runs the real ``MembershipService`` over the ``SimNetwork`` and the
real ``DataService`` over a ``SimEndpoint``, with its chunk store and indexes
on real disk (in a temporary directory) and disk work done inline, so that on
``MockClock`` simulated time passes only when every task waits. Requests
between nodes go straight to the target's handlers, through the network's
crashes, pauses and partitions, and through the wire codec. Streamed bodies
(a put's upload, a get's ``net.Reply``) travel piece by piece through a
bounded buffer, each piece delayed and held up by the same faults, so the
client-facing put and get run in simulation as they do over TLS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import random
from pathlib import Path
from typing import AsyncIterable, AsyncIterator, Awaitable, Callable

import trio

from p2pfs import net, wire
from p2pfs.net.config import STREAM_WINDOW_FRAMES
from p2pfs.address import Address
from p2pfs.clock import Clock, SimClock
from p2pfs.identity import PeerIdentity
from p2pfs.membership import Membership, MembershipConfig, MembershipService
from p2pfs.sim.membership import SIM_CAPACITY_BYTES, sim_address, sim_node_id
from p2pfs.replication import messages as dm
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.service import DataService
from p2pfs.sim.network import SimNetwork
from p2pfs.wire import ErrorCode, Role, advertised_version

log = logging.getLogger(__name__)


# Pieces of one streamed body buffered between sender and receiver, as net's
# STREAM_WINDOW_FRAMES bounds a real stream: a slow reader holds the sender up.
STREAM_PIECES_BUFFERED_MAX = STREAM_WINDOW_FRAMES
# Longest wait, in seconds, for the next piece of a streamed body: net's default.
STREAM_IDLE_TIMEOUT_S = net.NetConfig().stream_idle_timeout_s
# One-way delay of a request, an answer or a body piece, uniform in [min, max] seconds.
HOP_DELAY_S_MIN = 0.0005
HOP_DELAY_S_MAX = 0.002
# While a link is cut, a request or piece on it waits this long before looking again.
BLOCKED_POLL_S = 0.1
# On a lossy link (the network's drop_probability) a lost segment is sent again, as TCP
# does: after RETRANSMIT_TIMEOUT_S_MIN, doubling, at most RETRANSMITS_MAX times (then
# the message gets through; the caller's deadline decides long before that).
RETRANSMIT_TIMEOUT_S_MIN = 0.2
RETRANSMITS_MAX = 6


async def run_inline(fn: Callable, *args):
    """Disk work without a thread: on a MockClock, time must not pass while it runs."""
    return fn(*args)


def _through_codec(msg: wire.Message) -> wire.Message:
    return wire.decode_message(msg.TYPE, wire.encode_message(msg))


async def _answer(target: "DataNode", request: net.IncomingRequest) -> wire.Message | net.Reply:
    """Run the target's handler; its failures reach the caller as they would over TLS
    (``net.Connection._serve_request``): as a ``RemoteError``."""
    try:
        return await target.routes[type(request.msg)](request)
    except net.RemoteError:
        raise
    except (net.NetError, trio.TooSlowError) as exc:
        raise net.RemoteError(ErrorCode.UNAVAILABLE, str(exc) or repr(exc)) from None
    except Exception as exc:
        log.exception("handler for %s failed", type(request.msg).__name__)
        raise net.RemoteError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}") from None


@dataclasses.dataclass(frozen=True, slots=True)
class _SimConn:
    peer: PeerIdentity


class SimStream:
    """One streamed body in flight: what a handler or a caller reads, as net's ``_InStream``.

    Iterate it for the pieces; it raises ``RemoteError`` if the sender failed
    midway, ``RequestTimeout`` after ``STREAM_IDLE_TIMEOUT_S`` without a piece
    (a crashed or cut-off sender), ``ConnectionClosed`` if the sender vanished.
    """

    def __init__(self) -> None:
        # Items: data, None for the end, or the exception the reader raises.
        self._send, self._receive = trio.open_memory_channel[bytes | Exception | None](
            STREAM_PIECES_BUFFERED_MAX
        )
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                with trio.fail_after(STREAM_IDLE_TIMEOUT_S):
                    item = await self._receive.receive()
            except trio.EndOfChannel:
                raise net.ConnectionClosed("stream ended before its end marker") from None
            except trio.TooSlowError:
                raise net.RequestTimeout(f"no data on a stream for {STREAM_IDLE_TIMEOUT_S} s") from None
            if item is None:
                self.finished = True
                return
            if isinstance(item, Exception):
                self.finished = True
                raise item
            yield item

    async def drain(self) -> int:
        """Read the body to its end, discarding it; returns the byte count."""
        total = 0
        async for data in self:
            total += len(data)
        return total


class SimEndpoint:
    """What ``DataService`` and a client need of ``net.Endpoint``/``net.Connection``, over the
    simulation: ``request`` (with an optional streamed ``body``) and ``open_request`` (whose
    ``net.Response`` carries the answer's streamed body, if the handler sent one)."""

    def __init__(self, cluster: "DataCluster", address: Address, node_id: str, role: Role = Role.NODE) -> None:
        self._cluster = cluster
        self._address = address
        self._peer = PeerIdentity(node_id, role)

    async def request(self, address: Address, msg: wire.Message, *, timeout_s: float,
                      node_id: str | None = None, body: AsyncIterable[bytes] | None = None) -> wire.Message:
        """One request; an answer's streamed body is read to its end and discarded."""
        async with self.open_request(address, msg, timeout_s=timeout_s, node_id=node_id, body=body) as response:
            if response.body is not None:
                await response.body.drain()
            return response.msg

    @contextlib.asynccontextmanager
    async def open_request(self, address: Address, msg: wire.Message, *, timeout_s: float,
                           node_id: str | None = None,
                           body: AsyncIterable[bytes] | None = None) -> AsyncIterator[net.Response]:
        """Like ``request``, but yields a ``net.Response`` whose streamed body the caller reads.

        ``timeout_s`` bounds the upload and the wait for the answer's message, as in net.
        """
        network = self._cluster.network
        target = self._cluster.by_address.get(address)
        if target is None or target.crashed or network.blocked(self._address, address):
            raise net.ConnectError(f"cannot connect to {address}")
        if node_id is not None and target.node_id != node_id:
            raise net.HandshakeError(f"{address} is another node")
        scopes: list[trio.CancelScope] = []  # the carriers of this request's bodies
        try:
            try:
                with trio.fail_after(timeout_s):
                    await self._hop(self._address, address)
                    upload = None
                    if body is not None:
                        upload = SimStream()
                        scopes.append(self._carry(upload, target, self._address, address, pieces=body))
                    request = net.IncomingRequest(_SimConn(self._peer), _through_codec(msg), upload)
                    result = await _answer(target, request)
                    if scopes:
                        scopes[0].cancel()  # answered: whatever is left of the upload is not sent
                    download = None
                    if isinstance(result, net.Reply):
                        download = SimStream()
                        scopes.append(self._carry(download, target, address, self._address, writer=result.body))
                        result = result.msg
                    await self._hop(address, self._address)
                    if target.crashed:
                        await trio.sleep_forever()  # the answer is lost on the way back
            except trio.TooSlowError:
                raise net.RequestTimeout(f"no answer from {address} within {timeout_s} s") from None
            yield net.Response(_through_codec(result), download)
        finally:
            for scope in scopes:
                scope.cancel()

    async def _hop(self, src: Address, dst: Address) -> None:
        """One message's way over a link: a delay (longer for each loss on a lossy link), and
        no arrival while the link is cut (paused, crashed or partitioned): the sender's
        deadline decides."""
        rng = self._cluster.rng
        delay_s = rng.uniform(HOP_DELAY_S_MIN, HOP_DELAY_S_MAX)
        drop_probability = self._cluster.network.faults.drop_probability
        retransmit_s = RETRANSMIT_TIMEOUT_S_MIN
        for _ in range(RETRANSMITS_MAX):
            if not (drop_probability and rng.random() < drop_probability):
                break
            delay_s += retransmit_s
            retransmit_s *= 2
        await trio.sleep(delay_s)
        while self._cluster.network.blocked(src, dst):
            await trio.sleep(BLOCKED_POLL_S)

    def _carry(self, stream: SimStream, owner: "DataNode", src: Address, dst: Address, *,
               pieces: AsyncIterable[bytes] | None = None,
               writer: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]] | None = None,
               ) -> trio.CancelScope:
        """Start moving a body (from ``pieces`` or a ``net.Reply`` writer) into ``stream``,
        in a task of ``owner``, as a real connection's tasks belong to its process; returns
        the scope that stops it. If ``owner`` crashed while the request was under way (its
        handler runs in the caller's task and can still finish), nothing is carried: the
        reader learns the sender vanished, as over a connection whose process died."""
        scope = trio.CancelScope()

        async def send(data: bytes) -> None:
            await self._hop(src, dst)
            await stream._send.send(bytes(data))

        async def carry() -> None:
            with scope:
                try:
                    try:
                        if pieces is not None:
                            async for data in pieces:
                                await send(data)
                        else:
                            await writer(send)
                        end: Exception | None = None
                    except (net.RemoteError, net.NetError) as exc:
                        end = exc  # the reader sees what the sender met
                    except Exception as exc:  # as net answers a failed body: an internal error
                        log.exception("streaming a body from %s failed", src)
                        end = net.RemoteError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
                    await self._hop(src, dst)
                    await stream._send.send(end)
                finally:
                    stream._send.close()  # stopped midway (the sender crashed): the reader learns it

        if owner.crashed:  # its nursery is closed to new tasks
            stream._send.close()
        else:
            owner.nursery.start_soon(carry)
        return scope


@dataclasses.dataclass(slots=True)
class DataNode:
    index: int
    node_id: str
    address: Address
    data_dir: Path
    membership: MembershipService
    data: DataService
    scope: trio.CancelScope
    routes: dict = dataclasses.field(default_factory=dict)
    crashed: bool = False
    # The node's own tasks (its services, the bodies it streams); set once it runs.
    nursery: trio.Nursery | None = None


class DataCluster:
    """Start, crash, restart, add and remove simulated nodes that store data."""

    def __init__(self, nursery: trio.Nursery, network: SimNetwork, root: Path, rng: random.Random,
                 membership_config: MembershipConfig, replication_config: ReplicationConfig) -> None:
        self._nursery = nursery
        self.network = network
        self.root = root
        self.rng = rng
        self.membership_config = membership_config
        self.replication_config = replication_config
        self.nodes: dict[int, DataNode] = {}
        self.by_address: dict[Address, DataNode] = {}
        self.by_id: dict[str, DataNode] = {}

    async def start(self, index: int, seeds: tuple[Address, ...] = (), *, clock: Clock | None = None,
                    wire_version: int = dm.CHAIN_WIRE_VERSION) -> DataNode:
        """Start node ``index``: new, or again after a crash with its data dir as it was.

        ``clock`` is the node's data-layer clock (``DataService(clock=...)``); a ``SimClock`` by default.
        ``wire_version``: what its member record advertises (lower: it poses as an older node,
        which others send no chunk chains).
        """
        old = self.nodes.get(index)
        assert old is None or old.crashed, f"node {index} is running"
        address = sim_address(index)
        node_id = sim_node_id(index)
        core = Membership(
            node_id=node_id, address=address, zone="", capacity_bytes=SIM_CAPACITY_BYTES,
            protocol_version=advertised_version(wire_version, self.replication_config.placement_version),
            incarnation_initial=int(trio.current_time() * 1000) + 1,  # grows across restarts
            config=self.membership_config, rng=random.Random(self.rng.getrandbits(64)),
            now_s=trio.current_time(),
        )
        holder: list[MembershipService] = []
        transport = self.network.attach(address, lambda sender, msg: holder[0].deliver(sender, msg))
        membership = MembershipService(core, transport)
        holder.append(membership)
        data_dir = self.root / f"node{index}"
        node = DataNode(index, node_id, address, data_dir, membership, None, trio.CancelScope())
        node.data = DataService(
            node_id=node_id, data_dir=data_dir, capacity_bytes=SIM_CAPACITY_BYTES,
            config=self.replication_config, endpoint=SimEndpoint(self, address, node_id),
            members=membership.members, clock=SimClock() if clock is None else clock, offload=run_inline,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        node.routes = node.data.routes()
        self.nodes[index] = node
        self.by_address[address] = node
        self.by_id[node_id] = node
        await self._nursery.start(self._run, node, seeds)
        return node

    async def _run(self, node: DataNode, seeds: tuple[Address, ...], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with node.scope:
            async with trio.open_nursery() as nursery:
                node.nursery = nursery
                await nursery.start(node.data.run)
                await nursery.start(node.membership.run, seeds)
                task_status.started()

    def crash(self, node: DataNode) -> None:
        node.crashed = True
        node.scope.cancel()
        self.network.crash(node.address)

    async def leave(self, node: DataNode) -> None:
        """A graceful leave: hand off, announce, stop (as SIGTERM does in the daemon)."""
        with trio.move_on_after(self.replication_config.leave_handoff_timeout_s):
            await node.data.hand_off_everything()
        await node.membership.leave(timeout_s=5.0)
        self.crash(node)

    def client(self, name: str) -> SimEndpoint:
        """A client's way into the cluster (``open_request``/``request``, as over TLS), from
        an address of its own that no partition cuts off."""
        client_id = hashlib.sha256(f"sim-client-{name}".encode()).hexdigest()
        return SimEndpoint(self, Address(f"{name}.client.sim", 0), client_id, Role.CLIENT)

    def running(self) -> list[DataNode]:
        return [n for n in self.nodes.values() if not n.crashed]
