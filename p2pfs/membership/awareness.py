"""Lifeguard local health awareness: a node that fails its own probes slows down.

When a node's probes go unanswered it is often the node itself that is slow
(CPU starved, GC pause, saturated link), not its targets. Lifeguard
(arXiv:1707.00788, section IV-A) keeps a score in ``[0, max)``: +1 for a failed
probe (or per missing nack from the indirect probers), +1 when the node has to
refute a suspicion of itself, -1 for a successful probe. Probe interval and
timeout are multiplied by ``score + 1``, so an unhealthy node accuses others
less often and gives them longer to answer. hashicorp/memberlist ``awareness.go``.
"""

from __future__ import annotations


class Awareness:
    __slots__ = ("_score", "_score_max")

    def __init__(self, awareness_max: int) -> None:
        assert awareness_max >= 1
        self._score = 0
        self._score_max = awareness_max - 1

    @property
    def score(self) -> int:
        return self._score

    def apply_delta(self, delta: int) -> None:
        self._score = min(self._score_max, max(0, self._score + delta))

    def scale_timeout_s(self, timeout_s: float) -> float:
        """``timeout_s * (score + 1)``."""
        return timeout_s * (self._score + 1)
