"""A node's trust at run time: CRLs spreading through the cluster, reloads, certificate expiry.

Revocation. An admin client hands one node a CRL (``CrlPush``). The node takes it
if a trusted CA signed it and its CRL number is higher than the one it holds from
that CA (``net.trust``), writes it beside its identity, closes every connection
whose certificate it revokes, leaves revoked nodes out of its member list, and
pushes it at once to every live member, which do the same. So a CRL reaches every
node in one round of pushes, within seconds. A node that was down then misses
it; every ``CRL_SYNC_INTERVAL_S`` each node pushes its CRLs to one random live
member, whose answer carries its own CRL if that is newer (push-pull), so the
newest CRL wins everywhere within a few rounds.

Reload. SIGHUP, or an admin's ``p2pfs reload``, re-reads the certificate, key,
trusted CAs and CRL from the identity directory; new connections use them, open
ones stay (a renewed certificate does not need a reconnect); connections of
peers now revoked are closed.

Expiry. TLS refuses an expired certificate at the handshake, and resumption is
off (``net.trust``), but a connection outlives the certificate it was made
with: every ``EXPIRY_CHECK_INTERVAL_S`` the node closes connections whose
peer's certificate has expired, and warns, from ``EXPIRY_WARNING_S`` ahead, about
its own certificate, its CAs' and each peer's.
"""

from __future__ import annotations

import logging
import random
from typing import Callable

import trio

from p2pfs import net, wire
from p2pfs.access import Operation
from p2pfs.clock import Clock
from p2pfs.identity import IdentityError, PeerIdentity
from p2pfs.ids import short_id
from p2pfs.membership import Member, MemberState, MembershipService
from p2pfs.net.access import authorize
from p2pfs.node import trust_messages as tm
from p2pfs.revocation import RevocationError
from p2pfs.wire import Role

log = logging.getLogger(__name__)

# Seconds between push-pull rounds of CRLs with one random member: a node that missed
# a push (it was down) catches up within a few rounds; one small message per round.
CRL_SYNC_INTERVAL_S = 30.0
# Deadline of one CRL push to one member: a small message; a peer that cannot take it
# in this long gets it at a later sync round.
CRL_PUSH_TIMEOUT_S = 5.0
# Members one node pushes a new CRL to at once (all of them, in any cluster we run).
CRL_PUSH_FANOUT_MAX = 256
# Seconds between expiry checks of open connections and of our own certificates: an
# expired peer keeps its connection at most this long past its certificate's end.
EXPIRY_CHECK_INTERVAL_S = 10.0
# Warn this far ahead of an expiry: 30 days leaves room for a renew by hand and its
# roll-out even over a holiday.
EXPIRY_WARNING_S = 30 * 24 * 3600.0
# Seconds between repeated warnings about one certificate: once a day is noticed,
# not noise.
EXPIRY_WARNING_REPEAT_S = 24 * 3600.0
# Certificates whose last warning time is remembered (peers come and go).
EXPIRY_WARNED_MAX = 4096


class TrustService:
    """CRLs, reloads and expiry for one node; see the module docstring."""

    def __init__(
        self,
        endpoint: net.Endpoint,
        membership: MembershipService,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._trust = endpoint.trust
        self._membership = membership
        self._clock = clock
        self._rng = rng or random.Random()
        self._nursery: trio.Nursery | None = None
        self._warned_at_s: dict[int, float] = {}  # certificate serial -> monotonic time of its last warning

    def routes(self) -> dict[type, Callable]:
        return {tm.CrlPush: self._on_crl_push, tm.ReloadRequest: self._on_reload}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.apply()  # a CRL kept from before a restart is in force from the start
            nursery.start_soon(self._sync_loop)
            nursery.start_soon(self._expiry_loop)
            task_status.started()

    # -- what a CRL or a reload changes -----------------------------------------------

    def apply(self) -> list[PeerIdentity]:
        """Close revoked peers' connections and leave revoked nodes out of membership."""
        closed = self._endpoint.close_where(self._trust.is_revoked, "certificate revoked")
        for peer in closed:
            log.warning("closed the connection of %s %s: its certificate is revoked", peer.role.value, peer.node_id)
        self._membership.exclude(self._trust.revoked_node_ids())
        return closed

    def reload(self) -> list[str]:
        """Re-read the identity directory; on failure keep everything as it was (and say why)."""
        try:
            changes = self._trust.reload()
        except IdentityError as exc:
            log.error("identity reload failed, keeping the running one: %s", exc)
            raise
        self.apply()
        for peer in self._endpoint.close_where(self._trust.is_untrusted_issuer, "its CA is no longer trusted"):
            log.warning("closed the connection of %s %s: the CA that signed its certificate is no longer trusted",
                        peer.role.value, peer.node_id)
        log.info("identity reloaded from %s: %s", self._trust.identity.directory, ", ".join(changes) or "nothing new")
        return changes

    def status_facts(self) -> dict[str, int]:
        """The trust fields of a StatusReply: expiry dates (Unix ms) and the CRL number."""
        identity = self._trust.identity
        return {
            "cert_not_valid_after_ms": int(identity.cert.not_valid_after_utc.timestamp() * 1000),
            "ca_not_valid_after_ms": int(min(ca.not_valid_after_utc.timestamp() for ca in identity.ca_certs) * 1000),
            "crl_number": self._trust.crl_number(),
        }

    # -- routes ---------------------------------------------------------------------

    async def _on_crl_push(self, request: net.IncomingRequest) -> tm.CrlPushReply:
        authorize(request, Operation.REVOCATION)
        data = request.msg.crl
        try:
            taken = self._trust.offer(data)
        except RevocationError as exc:
            log.warning("refused a CRL from %s %s: %s", request.peer.role.value, request.peer.node_id, exc)
            raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, str(exc)) from None
        if taken is not None:
            log.warning("CRL %d taken from %s %s: %d certificates revoked", taken.number,
                        request.peer.role.value, request.peer.short_id, len(taken.serials))
            self.apply()
            self._spread(taken.der(), exclude=request.peer.node_id)
        return tm.CrlPushReply(taken is not None, self._trust.crl_number(), self._trust.newer_than(data))

    async def _on_reload(self, request: net.IncomingRequest) -> tm.ReloadReply:
        authorize(request, Operation.RELOAD)
        log.info("reload requested by client %s", request.peer.node_id)
        try:
            changes = self.reload()
        except IdentityError as exc:
            raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, f"reload failed, nothing changed: {exc}") from None
        return tm.ReloadReply(tuple(change[: tm.RELOAD_CHANGE_CHARS_MAX] for change in changes[: tm.RELOAD_CHANGES_MAX]))

    # -- spreading --------------------------------------------------------------------

    def _live_peers(self) -> list[Member]:
        own = self._trust.identity.node_id
        return [m for m in self._membership.members() if m.state is MemberState.ALIVE and m.node_id != own]

    def _spread(self, crl_der: bytes, exclude: str) -> None:
        if self._nursery is None:  # a push before run() started: the sync rounds spread it
            return
        peers = [m for m in self._live_peers() if m.node_id != exclude][:CRL_PUSH_FANOUT_MAX]
        for member in peers:
            self._nursery.start_soon(self._push, member, crl_der)

    async def _push(self, member: Member, crl_der: bytes) -> None:
        """Push one CRL to one member; take its own if it answers with a newer one."""
        try:
            reply = await self._endpoint.request(
                member.address, tm.CrlPush(crl_der), timeout_s=CRL_PUSH_TIMEOUT_S, node_id=member.node_id
            )
        except (net.NetError, net.RemoteError) as exc:
            log.debug("pushing the CRL to %s failed: %s", short_id(member.node_id), exc)
            return
        if isinstance(reply, tm.CrlPushReply) and reply.newer is not None:
            try:
                taken = self._trust.offer(reply.newer)
            except RevocationError as exc:
                log.warning("node %s answered with a bad CRL: %s", member.node_id, exc)
                return
            if taken is not None:
                log.warning("CRL %d taken from node %s: %d certificates revoked", taken.number,
                            short_id(member.node_id), len(taken.serials))
                self.apply()
                self._spread(taken.der(), exclude=member.node_id)

    async def _sync_loop(self) -> None:
        while True:  # runs until the node stops
            await trio.sleep(CRL_SYNC_INTERVAL_S * self._rng.uniform(0.5, 1.5))
            peers = self._live_peers()
            if not peers:
                continue
            member = self._rng.choice(peers)
            for crl in self._trust.crls():
                await self._push(member, crl.der())

    # -- expiry ---------------------------------------------------------------------

    async def _expiry_loop(self) -> None:
        while True:  # runs until the node stops
            self.check_expiry()
            await trio.sleep(EXPIRY_CHECK_INTERVAL_S)

    def check_expiry(self) -> None:
        now_s = self._clock.wall_ms() / 1000.0
        closed = self._endpoint.close_where(
            lambda peer: 0.0 < peer.not_valid_after_s <= now_s, "certificate expired"
        )
        for peer in closed:
            log.warning("closed the connection of %s %s: its certificate expired", peer.role.value, peer.node_id)
        identity = self._trust.identity
        self._warn_if_expiring("this node's certificate", identity.cert.serial_number,
                               identity.cert.not_valid_after_utc.timestamp(), now_s)
        for ca in identity.ca_certs:
            self._warn_if_expiring("a trusted CA certificate", ca.serial_number,
                                   ca.not_valid_after_utc.timestamp(), now_s)
        for conn in self._endpoint.connections():
            peer = conn.peer
            if peer.role is Role.NODE:
                self._warn_if_expiring(f"node {peer.short_id}'s certificate", peer.serial_number,
                                       peer.not_valid_after_s, now_s)

    def _warn_if_expiring(self, what: str, serial: int, not_valid_after_s: float, now_s: float) -> None:
        left_s = not_valid_after_s - now_s
        if left_s > EXPIRY_WARNING_S:
            return
        monotonic_s = self._clock.monotonic_s()
        last_s = self._warned_at_s.get(serial)
        if last_s is not None and monotonic_s - last_s < EXPIRY_WARNING_REPEAT_S:
            return
        if len(self._warned_at_s) >= EXPIRY_WARNED_MAX:
            self._warned_at_s.clear()  # forget old warnings rather than grow: they repeat at worst
        self._warned_at_s[serial] = monotonic_s
        if left_s <= 0:
            log.warning("%s (serial %x) has expired", what, serial)
        else:
            log.warning("%s (serial %x) expires in %.1f days: renew it (docs/SECURITY.md)",
                        what, serial, left_s / 86400.0)
