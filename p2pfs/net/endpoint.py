"""A node's endpoint: the TLS listener and the pool of connections by node id; and a client's connection.

The listener is open to anyone who can reach the port, so what an
unauthenticated peer can hold is bounded (``config.py`` gives the numbers and
why): the handshake deadline runs from the accept, queueing for a handshake
slot included; one source address holds at most ``HANDSHAKES_CONCURRENT_MAX``
connections that have not authenticated, and no more than
``UNAUTHENTICATED_PER_ADDRESS_MAX`` once every handshake slot is taken (see
``_make_room``); and at ``INBOUND_CONNECTIONS_MAX`` a new connection sheds an
unauthenticated one, then an idle authenticated one, before it is refused. What
a flood makes happen per connection is logged once per
``LOG_COLLAPSE_INTERVAL_S`` with a count.

Two nodes that dial each other at once end up with two connections; both ends
keep the one dialled by the lower node id (``keeps_pooled``) and the other
one's dialler closes it, so no pair holds a spare until its idle timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import random
from typing import AsyncIterable, AsyncIterator, Callable

import trio

from p2pfs import wire
from p2pfs.address import Address
from p2pfs.identity import Identity, PeerIdentity
from p2pfs.observe import Collapsed
from p2pfs.wire import Role

from .config import (
    HANDSHAKES_CONCURRENT_MAX,
    HEAP_TRIM_CHECK_INTERVAL_S,
    INBOUND_CONNECTIONS_MAX,
    INCOMING_REQUESTS_PER_PEER_MAX,
    LOG_COLLAPSE_INTERVAL_S,
    UNAUTHENTICATED_PER_ADDRESS_MAX,
    NetConfig,
)
from .budget import NodeLimits
from .connection import Connection
from .errors import ConnectError, HandshakeError, NetError, RequestTimeout
from .handshake import dial, handshake
from .heap import give_back_free_heap
from .streams import Handlers
from .tls import TLSStream
from .trust import TrustStore

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True, eq=False)
class _Unauthenticated:
    """An accepted connection still in its handshake; ``scope`` carries its deadline and ends it if shed."""

    host: str
    scope: trio.CancelScope
    shed: bool = False


class Endpoint:
    """A node's network presence: the TLS listener and a pool of connections by node id.

    Connections are symmetric: one accepted from a node is reused to send it
    requests, so two nodes share one connection (``_pool``). A failed dial puts the
    address into exponential back-off with jitter; ``connect`` fails fast
    during it instead of hammering a dead peer.
    """

    def __init__(
        self,
        identity: Identity,
        listen: Address,
        handlers: Handlers,
        *,
        config: NetConfig = NetConfig(),
        bind_host: str | None = None,
        rng: random.Random | None = None,
        advertise: Address | None = None,
    ) -> None:
        # What this node presents and trusts; reloadable (``trust``), read on every accept and dial.
        self.trust = TrustStore(identity)
        self.listen = listen
        # What the hello tells peers to dial: ``[node] advertise`` when the node binds a
        # wildcard or sits behind NAT, else the listen address.
        self.advertise = advertise
        self.config = config
        self._handlers = handlers
        self._bind_host = bind_host
        self._rng = rng or random.Random()
        self._by_node: dict[str, Connection] = {}
        # Connections this node dialled and still runs, pooled or not (a spare that was busy
        # when it lost to another, ``_pool``): which end dialled decides which of two is kept.
        self._dialled: dict[Connection, None] = {}
        self._node_at: dict[Address, str] = {}
        self._dialling: dict[Address, trio.Event] = {}
        self._backoff: dict[Address, tuple[float, float]] = {}  # address -> (retry_at, delay_s)
        self._inbound_count = 0
        self._handshakes = trio.Semaphore(HANDSHAKES_CONCURRENT_MAX)
        # One memory budget and one count of requests per peer for all this node's connections.
        self.limits = NodeLimits(config.memory_budget_bytes, INCOMING_REQUESTS_PER_PEER_MAX)
        # Connections in their handshake, oldest first (dicts keep insertion order): all of
        # them, and by source host. Authenticated inbound connections, to shed an idle one.
        self._unauthenticated: dict[_Unauthenticated, None] = {}
        self._unauthenticated_by_host: dict[str, dict[_Unauthenticated, None]] = {}
        self._authenticated_inbound: dict[Connection, None] = {}
        self._log_refused = Collapsed(log, logging.WARNING, LOG_COLLAPSE_INTERVAL_S)
        self._log_shed = Collapsed(log, logging.INFO, LOG_COLLAPSE_INTERVAL_S)
        self._log_timed_out = Collapsed(log, logging.INFO, LOG_COLLAPSE_INTERVAL_S)
        self._log_rejected = Collapsed(log, logging.INFO, LOG_COLLAPSE_INTERVAL_S)
        # Handshakes that failed, by reason (the node's metrics): "auth" (a certificate or
        # identity refused, either way), "protocol" (an inbound peer not speaking TLS or our
        # hello), "timeout" (an inbound peer silent past handshake_timeout_s).
        self.handshake_failures: dict[str, int] = {"auth": 0, "protocol": 0, "timeout": 0}
        self._nursery: trio.Nursery | None = None
        self.bound_port: int | None = None

    @property
    def identity(self) -> Identity:
        return self.trust.identity

    def reconfigure(self, config: NetConfig) -> None:
        """New net settings (a reload): the memory budget changes at once; timeouts and
        back-off apply to the handshakes and connections made from now on (a connection
        keeps the settings it was made with)."""
        self.config = config
        self.limits.memory.resize(config.memory_budget_bytes)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled. Raises OSError (e.g. EADDRINUSE) before ``started``."""
        listeners = await trio.open_tcp_listeners(self.listen.port, host=self.listen.host)
        self.bound_port = listeners[0].socket.getsockname()[1]
        if self.listen.port == 0:  # an ephemeral port (tests): tell peers the real one
            self.listen = Address(self.listen.host, self.bound_port)
        self.advertise = self.advertise or self.listen
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener)
            nursery.start_soon(self._give_back_free_heap)
            task_status.started()

    async def _give_back_free_heap(self) -> None:
        """After a burst of buffered input has passed, give the heap's free memory back to the
        system (``heap.py``; ``MemoryBudget.heap_trim_due`` says when)."""
        memory = self.limits.memory
        while True:  # until the endpoint is cancelled
            await trio.sleep(HEAP_TRIM_CHECK_INTERVAL_S)
            now_s = trio.current_time()
            if memory.heap_trim_due(now_s):
                started_s = trio.current_time()
                given_back = give_back_free_heap()
                memory.heap_trimmed(now_s)
                log.debug("gave the heap's free memory back after a burst of input (%s) in %.3f s",
                          given_back, trio.current_time() - started_s)

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        async with listener:
            while True:
                try:
                    tcp = await listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.warning("accept failed (%s); pausing 100 ms", exc)
                        await trio.sleep(0.1)  # resource exhaustion: let connections close
                        continue
                    raise
                now_s = trio.current_time()
                host = _remote_host(tcp)
                if not self._make_room(host, now_s):
                    self._log_refused.log(
                        now_s, "refusing a connection from %s: %d inbound connections open, all "
                        "authenticated and busy", host, self._inbound_count,
                    )
                    await trio.aclose_forcefully(tcp)
                    continue
                attempt = _Unauthenticated(host, trio.CancelScope(deadline=now_s + self.config.handshake_timeout_s))
                self._unauthenticated[attempt] = None
                self._unauthenticated_by_host.setdefault(host, {})[attempt] = None
                self._inbound_count += 1
                self._nursery.start_soon(self._serve_inbound, tcp, attempt)

    def _make_room(self, host: str, now_s: float) -> bool:
        """Shed what must go for a new connection from ``host``; False if it must be refused instead.

        Half-open connections by source address: the per-address limit is there so that one
        host cannot hold every handshake slot while other peers wait out their deadlines, so it
        applies when they would wait, not before. An address may use every free slot
        (``HANDSHAKES_CONCURRENT_MAX``, at which its oldest attempt goes, so that its newest
        never queues behind its own); once all slots are taken, a newcomer from any address
        sheds the oldest attempt of the address holding most, if that holds
        ``UNAUTHENTICATED_PER_ADDRESS_MAX`` or more (finding it walks the addresses, only
        while every slot is taken). A fixed limit of 16 also capped honest peers that share
        an address: on a test network every member dials from 127.0.0.1, and 49 daemons
        started at once could shed each other's handshakes (as behind a NAT gateway); per
        address and port would not do, since a hostile host has many ports.
        """
        from_host = self._unauthenticated_by_host.get(host, {})
        if len(from_host) >= HANDSHAKES_CONCURRENT_MAX:
            self._shed_attempt(next(iter(from_host)), now_s, f"{HANDSHAKES_CONCURRENT_MAX} from that address")
            return True
        if len(self._unauthenticated) >= HANDSHAKES_CONCURRENT_MAX:
            crowded = max(self._unauthenticated_by_host.values(), key=len)
            if len(crowded) >= UNAUTHENTICATED_PER_ADDRESS_MAX:
                self._shed_attempt(next(iter(crowded)), now_s, f"every handshake slot taken, {len(crowded)} "
                                   "from that address")
                return True
        if self._inbound_count < INBOUND_CONNECTIONS_MAX:
            return True
        if self._unauthenticated:
            self._shed_attempt(next(iter(self._unauthenticated)), now_s, f"{INBOUND_CONNECTIONS_MAX} inbound")
            return True
        idle = next((c for c in self._authenticated_inbound if c.is_idle and not c.is_closed), None)
        if idle is not None:
            self._log_shed.log(now_s, "shed idle %r: %d inbound connections open", idle, self._inbound_count)
            self._forget_authenticated(idle)
            idle.shed(f"shed to make room: {INBOUND_CONNECTIONS_MAX} inbound connections open")
            return True
        return False

    def _shed_attempt(self, attempt: _Unauthenticated, now_s: float, why: str) -> None:
        self._log_shed.log(now_s, "shed a connection from %s still in its handshake (%s)", attempt.host, why)
        attempt.shed = True
        attempt.scope.cancel()
        self._forget_attempt(attempt)

    def _forget_attempt(self, attempt: _Unauthenticated) -> None:
        self._unauthenticated.pop(attempt, None)
        from_host = self._unauthenticated_by_host.get(attempt.host)
        if from_host is not None:
            from_host.pop(attempt, None)
            if not from_host:
                del self._unauthenticated_by_host[attempt.host]

    def _forget_authenticated(self, conn: Connection) -> None:
        self._authenticated_inbound.pop(conn, None)

    async def _serve_inbound(self, tcp: trio.SocketStream, attempt: _Unauthenticated) -> None:
        try:
            # The contexts are built once per (re)load, not per connection: reading the
            # certificate files on every accept would cost a file read and a parse.
            stream = TLSStream(tcp, self.trust.server_context, server_side=True)
            remote = _remote_name(tcp)
            try:
                with attempt.scope:  # the deadline set at the accept: queueing for a slot counts
                    async with self._handshakes:
                        peer, hello, leftover = await handshake(
                            stream, self.identity, self.advertise, self.trust.refusal
                        )
            except (ConnectError, HandshakeError) as exc:
                self.handshake_failures["auth" if isinstance(exc, HandshakeError) else "protocol"] += 1
                self._log_rejected.log(trio.current_time(), "rejected %s: %s", remote, exc)
                await trio.aclose_forcefully(stream)
                return
            finally:
                self._forget_attempt(attempt)
            if attempt.scope.cancelled_caught:
                if not attempt.shed:
                    self.handshake_failures["timeout"] += 1
                    self._log_timed_out.log(
                        trio.current_time(), "dropped %s: no handshake within %s s of the accept",
                        remote, self.config.handshake_timeout_s,
                    )
                await trio.aclose_forcefully(stream)
                return
            conn = Connection(
                stream, peer, hello, dialled=False, config=self.config,
                handlers=self._handlers, initial_bytes=leftover, limits=self.limits,
            )
            log.debug("accepted %r from %s", conn, remote)
            if peer.role is Role.NODE and conn.peer_address is not None:
                self._node_at[conn.peer_address] = peer.node_id
                self._pool(conn)
            self._authenticated_inbound[conn] = None
            try:
                await conn.run()
            finally:
                self._forget_authenticated(conn)
                if self._by_node.get(peer.node_id) is conn:
                    del self._by_node[peer.node_id]
        finally:
            self._inbound_count -= 1

    async def connect(self, address: Address, *, node_id: str | None = None) -> Connection:
        """A live connection to the node at ``address`` (and with ``node_id``, if given)."""
        assert self._nursery is not None, "Endpoint.run has not started"
        while True:
            known = node_id or self._node_at.get(address)
            if known is not None:
                conn = self._by_node.get(known)
                if conn is not None and not conn.is_closed:
                    return conn
            waiting = self._dialling.get(address)
            if waiting is None:
                break
            await waiting.wait()  # someone else is dialling this address; bounded by their timeouts
            if node_id is None and address not in self._node_at:
                raise ConnectError(f"cannot connect to {address}")
        retry_at, delay_s = self._backoff.get(address, (0.0, 0.0))
        if trio.current_time() < retry_at:
            raise ConnectError(f"{address} is unreachable (retrying in {retry_at - trio.current_time():.1f} s)")
        # The dial runs in the endpoint's nursery, not in this task: a caller with a short deadline
        # (membership gives each send 1 s) cuts only its own wait, and the dial goes on under its
        # own connect and handshake timeouts. On a loaded machine a handshake can outlast one
        # send's deadline; abandoned, every send would start it again and none would finish.
        done = self._dialling[address] = trio.Event()
        outcome: list[Connection | NetError] = []
        self._nursery.start_soon(self._dial, address, node_id, done, outcome)
        await done.wait()
        if not outcome:  # the endpoint is closing
            raise ConnectError(f"cannot connect to {address}: this node is stopping")
        if isinstance(outcome[0], NetError):
            raise outcome[0]
        return outcome[0]

    async def _dial(self, address: Address, node_id: str | None, done: trio.Event,
                    outcome: list[Connection | NetError]) -> None:
        """Dial ``address`` and pool the connection; the connection, or the refusal, goes to ``outcome``."""
        try:
            outcome.append(await self._dial_and_pool(address, node_id))
        except NetError as exc:
            outcome.append(exc)
        finally:
            del self._dialling[address]
            done.set()

    async def _dial_and_pool(self, address: Address, node_id: str | None) -> Connection:
        _, delay_s = self._backoff.get(address, (0.0, 0.0))
        try:
            conn = await dial(
                self.identity, address, config=self.config, handlers=self._handlers,
                listen=self.advertise, bind_host=self._bind_host, expected_node_id=node_id,
                ssl_context=self.trust.client_context, refuse=self.trust.refusal, limits=self.limits,
            )
        except (ConnectError, HandshakeError) as exc:
            if isinstance(exc, HandshakeError):
                self.handshake_failures["auth"] += 1
            delay_s = min(
                max(delay_s * 2, self.config.redial_backoff_s_min), self.config.redial_backoff_s_max
            )
            jitter = self._rng.uniform(0.5, 1.0)
            self._backoff[address] = (trio.current_time() + delay_s * jitter, delay_s)
            raise
        self._backoff.pop(address, None)
        self._node_at[address] = conn.peer.node_id
        self._dialled[conn] = None
        await self._nursery.start(self._run_dialled, conn)
        # The peer may have dialled us meanwhile, and its connection be the one both ends keep.
        return self._pool(conn)

    async def _run_dialled(self, conn: Connection, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await conn.run(task_status=task_status)
        finally:
            self._dialled.pop(conn, None)
            if self._by_node.get(conn.peer.node_id) is conn:
                del self._by_node[conn.peer.node_id]

    def _pool(self, conn: Connection) -> Connection:
        """Offer a new authenticated connection to a node for the pool; returns the pooled one.

        Two nodes that dial each other at once (a cluster starting, both sending their first
        gossip) each accept the other's connection too. When each end kept its own dial, each
        sent on a different connection and both stayed in use until an idle timeout closed
        one (30 s into a start-up of 49 daemons, 220 of 1,172 pairs held two). Both ends
        apply ``keeps_pooled``, so both keep the one dialled by the lower node id, whatever
        order their dials and accepts finished in; the loser's dialler closes it if nothing is
        under way on it (a busy one closes on its idle timeout: neither end opens a request on
        it again). The other end never closes the loser itself: to the dialler, which may not
        yet hold the winner, that would look like a lost connection to dial again.
        """
        node_id = conn.peer.node_id
        current = self._by_node.get(node_id)
        if current is None or current.is_closed or current is conn:
            self._by_node[node_id] = conn
            return conn
        if keeps_pooled(current_dialled=current in self._dialled, new_dialled=conn in self._dialled,
                        own_id=self.identity.node_id, peer_id=node_id):
            pooled, spare = current, conn
        else:
            pooled, spare = conn, current
        self._by_node[node_id] = pooled
        if spare in self._dialled and spare.is_idle:
            log.debug("closing %r: %r to the same node is the one both ends keep", spare, pooled)
            spare.shed("a spare: both nodes dialled at once, and both keep the other connection")
        return pooled

    async def request(
        self, address: Address, msg: wire.Message, *, timeout_s: float, node_id: str | None = None,
        body: AsyncIterable[bytes] | None = None,
    ) -> wire.Message:
        """Connect (within the same deadline) and make one request."""
        with trio.move_on_after(timeout_s) as scope:
            conn = await self.connect(address, node_id=node_id)
        if scope.cancelled_caught:
            raise RequestTimeout(f"connecting to {address} took longer than {timeout_s} s")
        return await conn.request(msg, timeout_s=timeout_s, body=body)

    async def send_oneway(self, address: Address, msg: wire.Message) -> bool:
        """Best effort: connect and send; False (logged at debug) on any network failure."""
        try:
            conn = await self.connect(address)
            await conn.send_oneway(msg)
        except NetError as exc:
            log.debug("could not send %s to %s: %s", type(msg).__name__, address, exc)
            return False
        return True

    def connections(self) -> list[Connection]:
        return [c for c in self._by_node.values() if not c.is_closed]

    def close_where(self, condemned: Callable[[PeerIdentity], bool], reason: str) -> list[PeerIdentity]:
        """Close every open connection (to nodes and clients) whose peer is ``condemned``: a revoked
        or expired certificate must not keep the access its handshake once gave. Returns the peers."""
        closed = []
        for conn in {*self._by_node.values(), *self._authenticated_inbound, *self._dialled}:
            if not conn.is_closed and condemned(conn.peer):
                conn.shed(reason)
                closed.append(conn.peer)
        return closed


def keeps_pooled(*, current_dialled: bool, new_dialled: bool, own_id: str, peer_id: str) -> bool:
    """Whether the pooled connection to ``peer_id`` stays pooled when another one to it arrives.

    Of an accepted and a dialled connection, both ends keep the one dialled by the lower node
    id: each end decides alone, from facts both share, so they agree without a message. Of
    two of the same kind, or to this node itself (a seed list that names it), the old rule
    stands: a new dial replaces (this node dialled again for a reason), a new accept does not.
    """
    if current_dialled == new_dialled or own_id == peer_id:
        return not new_dialled
    keep_dialled = own_id < peer_id  # then this node's dial is the lower id's
    return current_dialled == keep_dialled


def _remote_host(tcp: trio.SocketStream) -> str:
    """The source address a connection counts against (its port is the peer's to choose)."""
    try:
        return str(tcp.socket.getpeername()[0])
    except OSError:
        return "<unknown>"


def _remote_name(tcp: trio.SocketStream) -> str:
    try:
        host, port = tcp.socket.getpeername()[:2]
    except OSError:
        return "<unknown>"
    return f"{host}:{port}"


@contextlib.asynccontextmanager
async def client_connection(
    identity: Identity, address: Address, *, config: NetConfig = NetConfig()
) -> AsyncIterator[Connection]:
    """A connection from the CLI (or any client) to one node, closed on exit.

    A client whose identity directory holds a CRL (a copy of the CA's crl.pem)
    refuses a revoked node too, as nodes do.
    """
    trust = TrustStore(identity)
    conn = await dial(identity, address, config=config, ssl_context=trust.client_context, refuse=trust.refusal)
    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        try:
            yield conn
        finally:
            await conn.aclose()
            nursery.cancel_scope.cancel()
