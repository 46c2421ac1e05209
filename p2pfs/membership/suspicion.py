"""Lifeguard suspicion timers: start high, shrink with independent confirmations.

A suspicion about a member starts with the ceiling timeout. Each further member
that independently suspects it (a suspect message with a new accuser) is a
confirmation, and the timeout falls logarithmically towards the floor, reached
at ``k`` confirmations (Lifeguard, Dadgar et al., arXiv:1707.00788, section
IV-B; hashicorp/memberlist ``suspicion.go``). A lone accuser with a bad view of
the network therefore waits long, while a member that many find dead is
declared so quickly.

Pure: the caller passes times; nothing here reads a clock.
"""

from __future__ import annotations

import math


def remaining_suspicion_time_s(
    n: int, k: int, elapsed_s: float, timeout_s_min: float, timeout_s_max: float
) -> float:
    """Seconds left on a suspicion after ``n`` of ``k`` expected confirmations (memberlist).

    ``timeout = max(min, max - (max - min) * log(n + 1) / log(k + 1))``,
    rounded down to whole milliseconds as memberlist does, minus the time
    already elapsed. May be negative: the suspicion is overdue.
    """
    frac = math.log(n + 1.0) / math.log(k + 1.0)
    raw_s = timeout_s_max - frac * (timeout_s_max - timeout_s_min)
    timeout_s = math.floor(1000.0 * raw_s) / 1000.0
    if timeout_s < timeout_s_min:
        timeout_s = timeout_s_min
    return timeout_s - elapsed_s


class Suspicion:
    """One member's suspicion timer (mutable: confirmations arrive over time).

    The accuser who started it is counted up front, so its own suspicion
    gossiped back to us is not a confirmation (memberlist does the same).
    """

    __slots__ = ("start_s", "accuser_id", "k", "timeout_s_min", "timeout_s_max", "_accusers", "_confirmations")

    def __init__(
        self, *, start_s: float, accuser_id: str, k: int, timeout_s_min: float, timeout_s_max: float
    ) -> None:
        assert timeout_s_min <= timeout_s_max
        assert k >= 0
        self.start_s = start_s
        self.accuser_id = accuser_id  # the first accuser, named when we tell the suspect
        self.k = k
        self.timeout_s_min = timeout_s_min
        # With nobody expected to confirm, waiting for confirmations is pointless.
        self.timeout_s_max = timeout_s_max if k >= 1 else timeout_s_min
        self._accusers = {accuser_id}
        self._confirmations = 0

    @property
    def confirmations(self) -> int:
        return self._confirmations

    def confirm(self, accuser_id: str) -> bool:
        """Count an independent suspicion. True if it was new (the caller re-gossips it)."""
        if self._confirmations >= self.k or accuser_id in self._accusers:
            return False
        self._accusers.add(accuser_id)
        self._confirmations += 1
        return True

    def deadline_s(self) -> float:
        """When the member is to be declared dead, in the caller's clock."""
        if self.k < 1:
            return self.start_s + self.timeout_s_min
        return self.start_s + remaining_suspicion_time_s(
            self._confirmations, self.k, 0.0, self.timeout_s_min, self.timeout_s_max
        )
