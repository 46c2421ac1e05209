"""Trio driver for the membership core: keeps time, moves messages, reports changes.

``MembershipService`` owns one ``Membership`` core. Time is
``trio.current_time()``, so a ``trio.testing.MockClock`` drives a whole
simulated cluster; the timer task sleeps in a cancel scope whose deadline is
the core's ``next_deadline_s`` and is pulled earlier when an incoming message
creates an earlier deadline.

Sends never block the core: they go into a bounded memory channel
(``SEND_QUEUE_MESSAGES_MAX``; when full, a send is dropped and counted, as a
datagram would be) drained by ``SEND_CONCURRENCY_MAX`` worker tasks, each send
under ``config.send_timeout_s``. A slow or dead peer therefore holds up at
most one worker for one send deadline, never the probes to everyone else.
"""

from __future__ import annotations

import logging
from typing import Protocol, Sequence

import trio

from p2pfs import wire
from p2pfs.address import Address
from p2pfs.clock import Clock

from .state import Member, Membership, Send

log = logging.getLogger(__name__)

# Messages waiting to be sent. A node sends a few messages per gossip round
# (fanout + probe traffic + replies); 1024 absorbs bursts such as answering
# many joins at once, and beyond it gossip is lossy by design.
SEND_QUEUE_MESSAGES_MAX = 1024
# Sends in progress at once; one slow peer occupies one of them.
SEND_CONCURRENCY_MAX = 8


def incarnation_from_wall_clock(clock: Clock) -> int:
    """An ``incarnation_initial`` that grows across restarts: ``clock``'s wall time in whole seconds.

    Restarting within the same second, or after the previous life refuted
    suspicions many times, can start below the old incarnation; the core then
    refutes the stale facts as soon as it hears them. A persisted counter is
    the stricter alternative.
    """
    return clock.wall_ms() // 1000


class GossipTransport(Protocol):
    async def send(self, to: Address, msg: wire.Message, to_id: str | None) -> None:
        """Send one-way, best effort, bounded in time by the transport itself.

        ``to_id`` (None for a seed) is the node the message is for: deliver
        it to that node only, whoever else claims ``to``. Must not raise for
        network faults (log and drop instead).
        """
        ...


class MembershipService:
    """Runs a ``Membership`` core under trio. Lives in the caller's nursery via ``run``.

    There is no clock parameter: ``now_s`` is always ``trio.current_time()``,
    because the timer's cancel-scope deadlines are in trio's clock (and so a
    MockClock drives everything). Build the core with
    ``now_s=trio.current_time()`` and ``incarnation_initial=incarnation_from_wall_clock()``
    (or a persisted counter).
    """

    def __init__(self, core: Membership, transport: GossipTransport) -> None:
        self.core = core
        self._transport = transport
        self._send_in, self._send_out = trio.open_memory_channel[Send](SEND_QUEUE_MESSAGES_MAX)
        self._timer_scope: trio.CancelScope | None = None
        self._running = False
        self._changed = trio.Event()
        self._version_seen = core.version
        self._sends_in_flight = 0
        self._leaving = False
        self._progress = trio.Event()  # set on each tick and finished send while leaving
        self.sends_dropped = 0    # send queue full
        self.sends_timed_out = 0  # abandoned at config.send_timeout_s
        self._tag = core.node_id[:12]
        self._excluded: frozenset[str] = frozenset()  # revoked nodes (see exclude)

    async def run(self, seeds: Sequence[Address], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Join through ``seeds`` and run until cancelled. Ready as soon as the join is sent;
        the core keeps contacting the seeds until one answers."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(SEND_CONCURRENCY_MAX):
                    nursery.start_soon(self._send_worker)
                self._running = True
                self._queue(self.core.join(seeds, trio.current_time()))
                log.info("%s: membership running at %s, seeds %s", self._tag, self.core.address,
                         ", ".join(map(str, seeds)) or "none")
                task_status.started()
                await self._timer_loop()
        finally:
            self._running = False

    def deliver(self, sender: Address, msg: wire.Message, sender_id: str | None = None) -> None:
        """Feed an incoming membership message from node ``sender_id`` at ``sender`` to the core. Never blocks."""
        if not self._running:
            return
        self._queue(self.core.handle(sender, msg, trio.current_time(), sender_id=sender_id))
        scope = self._timer_scope
        if scope is not None:
            deadline_s = self.core.next_deadline_s()
            if deadline_s < scope.deadline:
                scope.deadline = deadline_s
        self._notify()

    async def leave(self, timeout_s: float) -> None:
        """Announce that we leave and give gossip up to ``timeout_s`` to spread it.

        Returns once the LEFT fact has been piggybacked its full retransmit
        count and the sends are out, or when ``timeout_s`` passes.
        """
        self._leaving = True
        self._queue(self.core.leave(trio.current_time()))
        scope = self._timer_scope
        if scope is not None:
            scope.deadline = min(scope.deadline, self.core.next_deadline_s())
        with trio.move_on_after(timeout_s):
            while self._leave_unfinished():
                await self._progress.wait()
        log.info("%s: left", self._tag)

    def _leave_unfinished(self) -> bool:
        core = self.core
        gossip_pending = core.pending_broadcasts > 0 and core.live_count > 0  # nobody left to tell: done
        return gossip_pending or self._sends_in_flight > 0 or self._send_out.statistics().current_buffer_used > 0

    def members(self) -> list[Member]:
        return [m for m in self.core.members() if m.node_id not in self._excluded]

    def exclude(self, node_ids: frozenset[str]) -> None:
        """Leave these nodes (their keys revoked) out of ``members()``, whatever gossip says of them.

        The core still knows them (and probes them, in vain: their connections are refused),
        but the ring, placement and status no longer count them.
        """
        self._excluded = frozenset(node_ids)

    async def wait_changed(self, version_seen: int) -> int:
        """Wait until ``members()`` differs from version ``version_seen``; return the new version."""
        while self.core.version == version_seen:
            await self._changed.wait()
        return self.core.version

    # ------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        while True:  # runs until the caller cancels us
            with trio.CancelScope(deadline=self.core.next_deadline_s()) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            self._queue(self.core.tick(trio.current_time()))
            self._notify()

    def _queue(self, sends: list[Send]) -> None:
        for send in sends:
            try:
                self._send_in.send_nowait(send)
            except trio.WouldBlock:
                self.sends_dropped += 1
                log.debug("%s: send queue full, dropped %s to %s", self._tag, type(send.msg).__name__, send.to)

    def _notify(self) -> None:
        if self.core.version != self._version_seen:
            self._version_seen = self.core.version
            self._changed.set()
            self._changed = trio.Event()
        if self._leaving:
            self._progress.set()
            self._progress = trio.Event()

    async def _send_worker(self) -> None:
        async for send in self._send_out:
            self._sends_in_flight += 1
            try:
                with trio.move_on_after(self.core.config.send_timeout_s) as scope:
                    await self._transport.send(send.to, send.msg, send.to_id)
                if scope.cancelled_caught:
                    self.sends_timed_out += 1
                    log.debug("%s: send of %s to %s timed out", self._tag, type(send.msg).__name__, send.to)
            finally:
                self._sends_in_flight -= 1
            if self._leaving:
                self._progress.set()
                self._progress = trio.Event()
