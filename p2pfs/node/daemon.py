"""The daemon: one nursery holding every service of a node.

``Node.run`` opens the listener (failing early and clearly if the address is
taken), starts membership, and serves requests.

Stopping a node is not decommissioning it (Cassandra's and HDFS's choice): SIGTERM
or SIGINT stops it within seconds without leaving the cluster, so that a service
manager's stop, a reboot or an upgrade moves no data; the others see it dead, hint
what it misses, and it rejoins with its data when started again, as long as it is
back within ``[replication] dead_grace_s``. ``p2pfs leave`` is the decommission: the
node hands its data to the next owners, announces its departure and exits.
SIGHUP reloads the config file (what can change without a restart; see
``Node.reload``).

The node's clock is ``SystemClock``, its wall time offset by
``P2PFS_WALL_CLOCK_OFFSET_MS`` milliseconds if that is set (an integer, either
sign), and by the milliseconds written in the file named by
``P2PFS_WALL_CLOCK_OFFSET_FILE`` (re-read while the node runs): how a test
skews one daemon's wall clock (versions, incarnations, hint expiry, GC grace)
without touching the host's. Monotonic time is never skewed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import Awaitable, Callable

import trio
from cryptography.hazmat.primitives import serialization

from p2pfs import __version__, net, observe, wire
from p2pfs.access import Operation
from p2pfs.net.access import authorize
from p2pfs.node.admin import sdnotify
from p2pfs.node.admin.reload import Reloaded, reload_config
from p2pfs.node.admin.server import AdminService
from p2pfs.claims import claims_of
from p2pfs.clock import SystemClock
from p2pfs.errors import AuthError, BadInput, ConfigError, LocalStorageError, P2pfsError
from p2pfs.identity import Identity, IdentityError
from p2pfs.ids import short_id
from p2pfs.membership import (
    MEMBERSHIP_MESSAGES,
    Membership,
    MembershipService,
    MemberState,
    incarnation_from_wall_clock,
)
from p2pfs.membership.records import RecordSigner, RecordVerifier
from p2pfs.node import messages as m
from p2pfs.node.config import NodeConfig
from p2pfs.node.limits import Throttle
from p2pfs.node.trust import TrustService
from p2pfs.replication.memory import keep_freed_buffers
from p2pfs.replication.messages import CHAIN_WIRE_VERSION
from p2pfs.replication.service import DataService
from p2pfs.wire import Role

log = logging.getLogger(__name__)

# Time a graceful leave may take before the daemon exits regardless.
LEAVE_TIMEOUT_S = 10.0
# Environment variables: milliseconds added to this daemon's wall clock, and a file
# holding more (changed while it runs); for clock-skew tests.
WALL_CLOCK_OFFSET_ENV = "P2PFS_WALL_CLOCK_OFFSET_MS"
WALL_CLOCK_OFFSET_FILE_ENV = "P2PFS_WALL_CLOCK_OFFSET_FILE"


def wall_clock_offset_ms(environ: dict[str, str] | None = None) -> int:
    """The wall-clock offset asked for in the environment (0 if none); ConfigError if not an integer."""
    raw = (os.environ if environ is None else environ).get(WALL_CLOCK_OFFSET_ENV, "").strip()
    if not raw:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{WALL_CLOCK_OFFSET_ENV} must be an integer number of milliseconds, got {raw!r}") from None

Route = Callable[[net.IncomingRequest], Awaitable[wire.Message | net.Reply]]


class EndpointGossip:
    """Membership's transport over the node's mutual-TLS endpoint: best-effort one-way sends."""

    def __init__(self, endpoint: net.Endpoint, on_sent: Callable[[wire.Message], None],
                 on_sending: Callable[[wire.Message], None] = lambda msg: None) -> None:
        self._endpoint = endpoint
        self._on_sending = on_sending  # p2pfs.node.admin hook: probe round trips
        self._on_sent = on_sent  # p2pfs.node.admin hook: gossip bytes

    async def send(self, to, msg: wire.Message, to_id: str | None = None) -> None:
        # Before the send: the ack may be handled before this task resumes.
        self._on_sending(msg)
        if to_id is None:  # a seed, known by its address alone
            if await self._endpoint.send_oneway(to, msg):
                self._on_sent(msg)
            return
        # By node id: never to another node that claims the same address in its hello.
        try:
            conn = await self._endpoint.connect(to, node_id=to_id)
            await conn.send_oneway(msg)
        except net.NetError as exc:
            log.debug("could not send %s to %s at %s: %s", type(msg).__name__, short_id(to_id), to, exc)
            return
        self._on_sent(msg)


class Node:
    """A running node: transport, membership, and the request routes of each room."""

    def __init__(self, cfg: NodeConfig, ident: Identity) -> None:
        if ident.role is not Role.NODE:
            raise AuthError(f"{ident.directory} holds a client identity, not a node's")
        self.cfg = cfg
        offset_file = os.environ.get(WALL_CLOCK_OFFSET_FILE_ENV)
        self.clock = SystemClock(wall_offset_ms=wall_clock_offset_ms(),
                                 offset_file=Path(offset_file) if offset_file else None)
        self.identity = ident
        self.node_id = ident.node_id
        # What the CA certified this node may announce (p2pfs.claims): peers refuse more.
        overstep = claims_of(ident.cert).refusal(cfg.node.advertise_address, cfg.node.zone, cfg.node.capacity_bytes)
        if overstep is not None:
            raise ConfigError(f"the configuration oversteps this node's certificate: {overstep}")
        self.records = RecordVerifier(ident.ca_cert)
        self.records.trust(ident.ca_certs or [ident.ca_cert])  # all trusted CAs: both during a CA rotation
        cert_der = ident.cert.public_bytes(serialization.Encoding.DER)
        self.records.add_certificate(cert_der)
        self.started_at_s = time.monotonic()
        self.endpoint = net.Endpoint(
            ident,
            cfg.node.listen,
            self,
            config=cfg.net,
            bind_host=cfg.node.listen.host if cfg.node.bind_outgoing else None,
            advertise=cfg.node.advertise,
        )
        self.membership = MembershipService(
            Membership(
                node_id=self.node_id,
                address=cfg.node.advertise_address,
                zone=cfg.node.zone,
                capacity_bytes=cfg.node.capacity_bytes,
                # With the placement version this node runs: the data layer places by the oldest
                # one any member advertises (replication.view).
                # The wire version it advertises says which messages it knows (chunk chains: 3);
                # its connections' hello still checks wire.PROTOCOL_VERSION, as older nodes do.
                protocol_version=wire.advertised_version(CHAIN_WIRE_VERSION, cfg.replication.placement_version),
                # A restarted node keeps its id (the hash of its key), so its
                # incarnation must outrank anything said about its last life:
                # start from the wall clock.
                incarnation_initial=incarnation_from_wall_clock(self.clock),
                config=cfg.membership,
                rng=random.Random(),
                now_s=trio.current_time(),
                # Our records about ourselves signed with our key; everyone's checked (issue 12).
                signer=RecordSigner(ident.signing_key(), cert_der),
                verifier=self.records,
            ),
            EndpointGossip(self.endpoint, on_sending=lambda msg: self.admin.gossip_sending(msg),
                           on_sent=lambda msg: self.admin.count_gossip("sent", msg)),
        )
        self.data = DataService(
            node_id=self.node_id,
            data_dir=cfg.data_dir,
            capacity_bytes=cfg.node.capacity_bytes,
            config=cfg.replication,
            endpoint=self.endpoint,
            members=self.membership.members,
            clock=self.clock,
        )
        # Clients' file bodies through this node share one budget ([replication] client_bytes_per_s).
        self.client_limit = Throttle(cfg.replication.client_bytes_per_s)
        self.admin = AdminService(self)
        self.trust = TrustService(self.endpoint, self.membership, self.clock)  # CRLs, reloads, expiry
        self.leave_requested = trio.Event()
        self._routes: dict[type, Route] = {
            m.StatusRequest: self._status,
            m.MembersRequest: self._members,
            m.LeaveRequest: self._leave_request,
            **self.data.routes(),
            **self.trust.routes(),
        }

    # -- running ------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(self.data.run)
            except LocalStorageError as exc:
                raise LocalStorageError(f"cannot open the data dir {self.cfg.data_dir}: {exc}") from None
            try:
                await nursery.start(self.endpoint.run)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise BadInput(
                        f"address {self.cfg.node.listen} is already in use "
                        "(is another daemon running? change [node] listen)"
                    ) from None
                raise P2pfsError(f"cannot listen on {self.cfg.node.listen}: {exc.strerror}") from None
            await nursery.start(self.membership.run, self.cfg.node.seeds)
            await nursery.start(self.trust.run)
            await nursery.start(self.admin.run)  # p2pfs.node.admin: metrics, health, status page
            log.info("node %s listening on %s, advertised as %s", short_id(self.node_id),
                     self.cfg.node.listen, self.cfg.node.advertise_address)
            task_status.started()

    async def leave(self) -> None:
        """Hand every chunk and name to its next owners, then announce the departure.

        The hand-off is bounded by ``leave_handoff_timeout_s``; past it the node
        leaves anyway and anti-entropy re-replicates whatever was not handed over.
        """
        log.info("leaving the cluster")
        timeout_s = self.cfg.replication.leave_handoff_timeout_s
        with trio.move_on_after(timeout_s) as scope:
            complete = await self.data.hand_off_everything()
        if scope.cancelled_caught:
            log.warning("hand-off took longer than %s s; leaving anyway", timeout_s)
        elif not complete:
            log.warning("hand-off incomplete; anti-entropy will re-replicate the rest")
        await self.membership.leave(timeout_s=LEAVE_TIMEOUT_S)

    def reload(self) -> Reloaded:
        """SIGHUP or the admin listener: re-read the config file and the identity, and apply what
        can change at run time (log level and format, the bandwidth caps; certificate, key,
        trusted CAs and CRL)."""
        outcome = reload_config(self.cfg)
        self.cfg = outcome.config
        self.client_limit.set_rate(self.cfg.replication.client_bytes_per_s)
        self.endpoint.reconfigure(self.cfg.net)
        if self.data.repair_pacer is not None:
            self.data.repair_pacer.set_rate(self.cfg.replication.repair_bytes_per_s)
        with contextlib.suppress(IdentityError):  # logged; the running identity stays
            self.trust.reload()  # p2pfs.node.trust
        self.identity = self.endpoint.identity
        self.records.trust(self.identity.ca_certs or [self.identity.ca_cert])
        return outcome

    # -- requests -----------------------------------------------------------

    async def handle_request(self, request: net.IncomingRequest) -> wire.Message | net.Reply:
        route = self._routes.get(type(request.msg))
        if route is None:
            raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, f"{type(request.msg).__name__} is not served here")
        # p2pfs.node.admin hook: count and time every request by operation and outcome.
        started_s = trio.current_time()
        client = request.peer.role is Role.CLIENT
        if client:
            request = self.client_limit.paced_request(request)
        request = self.admin.counted_request(request)
        try:
            if client:  # a small file in the request itself: charged as its body would be
                await self.client_limit.take_in_message(request.msg)
            answer = await route(request)
        except net.RemoteError as exc:
            self.admin.record_request(request, exc.code.name.lower(), started_s)
            raise
        except Exception:
            self.admin.record_request(request, "error", started_s)
            raise
        if client and isinstance(answer, net.Reply):
            answer = self.client_limit.paced_reply(answer)
        elif client:  # a small file in the answer itself (cm.SmallFile)
            await self.client_limit.take_in_message(answer)
        return self.admin.record_answer(request, answer, started_s)

    def handle_oneway(self, conn: net.Connection, msg: wire.Message) -> None:
        if isinstance(msg, MEMBERSHIP_MESSAGES) and conn.peer_address is not None:
            self.admin.count_gossip("received", msg)  # p2pfs.node.admin hook: gossip bytes
            self.membership.deliver(conn.peer_address, msg, conn.peer.node_id)
        else:
            log.debug("ignored one-way %s from %s", type(msg).__name__, conn.peer.short_id)

    async def _status(self, request: net.IncomingRequest) -> m.StatusReply:
        authorize(request, Operation.STATUS)
        counts = {state: 0 for state in MemberState}
        for member in self.membership.members():
            counts[member.state] += 1
        return m.StatusReply(
            node_id=self.node_id,
            host=self.cfg.node.advertise_address.host,
            port=self.cfg.node.advertise_address.port,
            version=__version__,
            uptime_s=time.monotonic() - self.started_at_s,
            zone=self.cfg.node.zone,
            capacity_bytes=self.cfg.node.capacity_bytes,
            used_bytes=self.data.store.used_bytes,
            members_alive=counts[MemberState.ALIVE],
            members_suspect=counts[MemberState.SUSPECT],
            members_dead=counts[MemberState.DEAD],
            members_left=counts[MemberState.LEFT],
            **self.trust.status_facts(),
        )

    async def _leave_request(self, request: net.IncomingRequest) -> m.LeaveReply:
        authorize(request, Operation.LEAVE)
        log.info("leave requested by client %s", request.peer.short_id)
        self.leave_requested.set()
        return m.LeaveReply(True)

    async def _members(self, request: net.IncomingRequest) -> m.MembersReply:
        authorize(request, Operation.MEMBERS)
        return m.MembersReply(
            tuple(
                m.MemberInfo(
                    node_id=member.node_id,
                    host=member.address.host,
                    port=member.address.port,
                    state=member.state.name.lower(),
                    incarnation=member.incarnation,
                    zone=member.zone,
                    capacity_bytes=member.capacity_bytes,
                    protocol_version=member.protocol_version,
                )
                for member in sorted(self.membership.members(), key=lambda mb: mb.node_id)
            )
        )


# Stop without leaving: the node's data stays its own and it rejoins when started again.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Re-read the config file and apply what can change at run time.
RELOAD_SIGNAL = signal.SIGHUP


async def _tell_collapsed_access_log() -> None:
    """The counts of a client's collapsed access-log lines (``observe.AccessLogCollapsed``), told
    within an interval of the end of its flood rather than with its next request."""
    while True:  # until the daemon stops
        await trio.sleep(observe.ACCESS_LOG_INTERVAL_S)
        observe.tell_collapsed_access_log()


async def serve(cfg: NodeConfig, ident: Identity) -> None:
    """Run a node until SIGTERM or SIGINT (stop, stay a member) or a client's leave request
    (hand off, leave the cluster, exit). SIGHUP reloads the config."""
    leave = False
    keep_freed_buffers()  # chunk-sized buffers reused, not faulted in afresh (p2pfs.replication.memory)
    with trio.open_signal_receiver(*STOP_SIGNALS, RELOAD_SIGNAL) as signals:
        async with trio.open_nursery() as nursery:
            node = Node(cfg, ident)
            await nursery.start(node.run)
            nursery.start_soon(sdnotify.run, node)  # p2pfs.node.admin: READY and watchdog for systemd
            nursery.start_soon(_tell_collapsed_access_log)
            async with trio.open_nursery() as waiting:

                async def on_signal() -> None:
                    async for signum in signals:
                        if signum == RELOAD_SIGNAL:
                            node.reload()
                            continue
                        log.info("received %s: stopping (still a member; `p2pfs leave` decommissions)",
                                 signal.Signals(signum).name)
                        break
                    waiting.cancel_scope.cancel()

                async def on_request() -> None:
                    nonlocal leave
                    await node.leave_requested.wait()
                    leave = True
                    waiting.cancel_scope.cancel()

                waiting.start_soon(on_signal)
                waiting.start_soon(on_request)
            sdnotify.notify("STOPPING=1\nSTATUS=" + ("leaving the cluster" if leave else "stopping"))
            if leave:
                with trio.move_on_after(cfg.replication.leave_handoff_timeout_s + LEAVE_TIMEOUT_S + 1.0):
                    await node.leave()
            nursery.cancel_scope.cancel()
    log.info("stopped")
