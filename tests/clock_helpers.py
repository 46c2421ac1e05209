"""A clock a test moves by hand (``p2pfs.clock.Clock``'s two readings from one ``now_s``)."""

from __future__ import annotations


class StepClock:
    """Monotonic and wall time both at ``now_s``, which the test sets."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def monotonic_s(self) -> float:
        return self.now_s

    def wall_ms(self) -> int:
        return int(self.now_s * 1000)
