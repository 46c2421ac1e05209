"""One loop for every background job: rounds at an interval, each bounded, none fatal.

Anti-entropy, hint delivery, scrub and garbage collection each provide one
round; ``run_rounds`` runs it forever. Each round has a deadline (a round stuck
behind a slow peer is cut, and the next one starts from a fresh view), and a
round that fails with a p2pfs error (a peer down or talking nonsense, a disk
refusing) is logged and followed by the next one. Anything else is a bug and
stops the node, as an assert would.
"""

from __future__ import annotations

import logging
import random
from typing import Awaitable, Callable

import trio

from p2pfs import errors
from p2pfs.clock import Clock
from p2pfs.replication.healing import Pacer

log = logging.getLogger(__name__)

# A round may take this many intervals before it is cut, and never less than
# ROUND_DEADLINE_S_MIN: long enough for a round that moves data after a join
# (pacing bounds its speed), short enough that a round stuck on one peer does
# not hold up the rest for long.
ROUND_DEADLINE_INTERVALS = 10
ROUND_DEADLINE_S_MIN = 600.0
# Seconds of the repair rate that may go out at once (see RepairPacer).
REPAIR_BURST_S = 1.0
# Rounds start at a uniformly random fraction of the interval within this much
# either way, so that nodes started together do not repair in lockstep.
ROUND_JITTER_FRACTION = 0.25


def round_deadline_s(interval_s: float) -> float:
    return max(ROUND_DEADLINE_S_MIN, ROUND_DEADLINE_INTERVALS * interval_s)


async def run_rounds(
    name: str,
    round_fn: Callable[[], Awaitable[object]],
    *,
    interval_s: float,
    deadline_s: float,
    rng: random.Random,
    jitter_fraction: float,
) -> None:
    """Forever: wait about ``interval_s``, then run one round within ``deadline_s``."""
    assert 0 <= jitter_fraction < 1
    while True:
        await trio.sleep(interval_s * rng.uniform(1 - jitter_fraction, 1 + jitter_fraction))
        with trio.move_on_after(deadline_s) as scope:
            try:
                await round_fn()
            except* errors.P2pfsError as group:
                log.warning("%s round failed: %s", name, "; ".join(str(e) for e in _leaves(group)))
        if scope.cancelled_caught:
            log.warning("%s round cut at its deadline of %.0f s", name, deadline_s)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


class RepairPacer:
    """The one bandwidth budget of repair traffic (``healing.Pacer``), on the data layer's clock."""

    def __init__(self, rate_bytes_per_s: float, clock: Clock) -> None:
        self._clock = clock
        self.set_rate(rate_bytes_per_s)

    def set_rate(self, rate_bytes_per_s: float) -> None:
        """Change the budget (a config reload): transfers from now on are paced at the new rate."""
        self.rate_bytes_per_s = rate_bytes_per_s
        # A burst of one second at the rate (64 MiB by default): a round's first chunks go out
        # without waiting, and a cap an operator lowers is a cap from the first second on (a
        # floor of several MiB would let a slow link's repair run unpaced for that long).
        self._pacer = Pacer(rate_bytes_per_s, rate_bytes_per_s * REPAIR_BURST_S)

    async def pace(self, size_bytes: int) -> None:
        delay_s = self._pacer.delay_s(size_bytes, self._clock.monotonic_s())
        if delay_s > 0:
            await trio.sleep(delay_s)
