"""Membership timings: one frozen dataclass, memberlist's LAN defaults as the anchor.

Every field says what it does, its unit, its default and why, and what moving
it costs. The defaults are hashicorp/memberlist's ``DefaultLANConfig`` unless a
comment says otherwise; the derived quantities (suspicion timeouts, retransmit
limit, push-pull scaling, the detection bound) are methods here so that the
core, the tests and the docs compute them the same way.

Fields carry a ``doc`` in their metadata (the same key ``p2pfs.config.doc``
uses), so a node configuration file can render them as a ``[membership]``
section.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# memberlist's pushPullScaleThreshold: clusters up to this size push-pull at
# the configured interval. Larger ones stretch it in proportion to their size
# (``push_pull_interval_s_for``), since each full-state exchange carries the
# whole member list: the bytes per node per second then stay what a cluster of
# this size spends, whatever the size.
PUSH_PULL_SCALE_THRESHOLD_MEMBERS = 32


def _doc(text: str, default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"doc": text})


@dataclasses.dataclass(frozen=True, slots=True)
class MembershipConfig:
    """SWIM + Lifeguard parameters. All durations in seconds.

    Presets (e.g. for tests or WAN) should override only a few fields with
    ``dataclasses.replace``.
    """

    probe_interval_s: float = _doc(
        "Seconds between failure-detection probes; each period a node probes one member "
        "(round-robin over a shuffled list). Detection time scales with it; lowering it "
        "raises probe traffic (one ping + one ack per node per period). Default 1 s (memberlist LAN).",
        1.0,
    )
    probe_timeout_s: float = _doc(
        "Seconds to wait for a direct ack before asking indirect_checks other members to probe. "
        "Should be above the 99th-percentile round trip; the rest of the probe interval is left "
        "for the indirect path. Default 0.5 s (memberlist LAN).",
        0.5,
    )
    indirect_checks: int = _doc(
        "Members asked to probe indirectly (SWIM's k) after a direct probe times out. More "
        "means fewer false suspicions under loss, at k extra ping-req/ping/ack triples per "
        "failed probe. Default 3 (memberlist LAN).",
        3,
    )
    suspicion_mult: int = _doc(
        "Suspicion timeout floor = suspicion_mult * max(1, log10(n)) * probe_interval_s. The "
        "log10(n) factor gives gossip time to reach everyone (and the suspect time to refute) "
        "in bigger clusters. Default 3 (memberlist LAN: 4): with memberlist's 4 a death took "
        "the floor (5.2 s at 20 members) plus the 1-3 s until the first failed probe, which "
        "missed a 6.1 s median at 20 processes; 3 takes 1.3 s off and, with the two "
        "confirmations kept (suspicion_confirmations), showed no false death under 10% loss "
        "(docs/BENCHMARKS.md, failure detection).",
        3,
    )
    suspicion_confirmations: int = _doc(
        "Lifeguard's k: independent suspicions (from other accusers) that bring a suspicion's "
        "timeout from its ceiling down to its floor. Fewer means a quicker death when few "
        "members probe the victim, and a lone pair of wrong accusers (loss, a slow node) "
        "killing a live member sooner. memberlist derives it as SuspicionMult - 2; kept "
        "apart here so the floor can move without losing confirmations. Default 2 (memberlist LAN).",
        2,
    )
    suspicion_max_timeout_mult: int = _doc(
        "Suspicion timeout ceiling, as a multiple of the floor. A suspicion starts at the "
        "ceiling and shrinks towards the floor as independent confirmations arrive (Lifeguard, "
        "arXiv:1707.00788 section IV-B). Higher means fewer false deaths when a lone member's "
        "view is wrong, but slower detection when nobody confirms. Default 6 (memberlist LAN).",
        6,
    )
    retransmit_mult: int = _doc(
        "Each update is piggybacked retransmit_mult * ceil(log10(n + 1)) times (SWIM's "
        "lambda * log n). Higher makes dissemination more robust to loss, at more bytes per "
        "message. Default 4 (memberlist LAN).",
        4,
    )
    gossip_interval_s: float = _doc(
        "Seconds between gossip rounds, in which pending updates go to gossip_fanout random "
        "members in piggyback-only messages (nothing is sent when nothing is pending). This "
        "speeds dissemination from one update per probe to fanout per 200 ms. Default 0.2 s "
        "(memberlist LAN).",
        0.2,
    )
    gossip_fanout: int = _doc(
        "Members sent each gossip round. Dissemination takes about log(n)/log(fanout) rounds; "
        "more fanout means more messages per round. Default 3 (memberlist LAN GossipNodes).",
        3,
    )
    push_pull_interval_s: float = _doc(
        "Seconds between full-state exchanges with one random live member (anti-entropy: "
        "heals whatever gossip missed). Scaled up in proportion to the cluster above "
        "PUSH_PULL_SCALE_THRESHOLD_MEMBERS members because each exchange carries the whole "
        "member list (push_pull_interval_s_for). Default 30 s (memberlist LAN).",
        30.0,
    )
    reconnect_interval_s: float = _doc(
        "Seconds between chances of a full-state exchange with one random dead (not yet "
        "reaped) member, taken with probability dead / live (serf's reconnect): each dead "
        "member is tried by about one member per interval, whatever the cluster's size. A "
        "member declared dead by mistake, or cut off by a partition, learns it and refutes; "
        "without this, both sides of a healed partition would ignore each other for good. "
        "Default 30 s (serf's reconnect_interval).",
        30.0,
    )
    join_retry_interval_s: float = _doc(
        "While no seed has answered (or every other member is gone), seeds are contacted again "
        "this often. Default 1 s: a node started before its seed joins within a second of the "
        "seed coming up, for one message per seed per second.",
        1.0,
    )
    awareness_max: int = _doc(
        "Lifeguard local health: the awareness score stays in [0, awareness_max) and the probe "
        "interval and timeout are multiplied by (score + 1), so an overloaded node probes up to "
        "awareness_max times slower instead of accusing healthy members. Default 8 "
        "(memberlist AwarenessMaxMultiplier).",
        8,
    )
    dead_reap_s: float = _doc(
        "Seconds a dead member is kept (listed by members(), reconnect attempts, refutable) "
        "before it is forgotten. Must cover the data layer's grace period for dead nodes and "
        "the longest partition that should heal by itself. Default 24 h (serf's reconnect_timeout).",
        24 * 3600.0,
    )
    left_reap_s: float = _doc(
        "Seconds a member that left gracefully is kept as a tombstone, so that stale gossip "
        "cannot bring it back. Default 24 h (serf's tombstone_timeout).",
        24 * 3600.0,
    )
    send_timeout_s: float = _doc(
        "Per-send deadline in the driver: a send still not done after this many seconds is "
        "dropped, like a lost datagram. Default 1 s (one probe interval: a later ack is useless).",
        1.0,
    )

    def __post_init__(self) -> None:
        if not 0 < self.probe_timeout_s < self.probe_interval_s:
            raise ValueError("need 0 < probe_timeout_s < probe_interval_s")
        if self.indirect_checks < 0 or self.gossip_fanout < 1:
            raise ValueError("indirect_checks must be >= 0 and gossip_fanout >= 1")
        if self.suspicion_mult < 1 or self.suspicion_max_timeout_mult < 1:
            raise ValueError("suspicion multipliers must be >= 1")
        if self.suspicion_confirmations < 0:
            raise ValueError("suspicion_confirmations must be >= 0")
        if self.retransmit_mult < 1 or self.awareness_max < 1:
            raise ValueError("retransmit_mult and awareness_max must be >= 1")
        for name in (
            "gossip_interval_s", "push_pull_interval_s", "reconnect_interval_s",
            "join_retry_interval_s", "dead_reap_s", "left_reap_s", "send_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")

    # Derived quantities -----------------------------------------------------

    def suspicion_timeout_s_min(self, n: int) -> float:
        """Floor of the suspicion timeout with ``n`` live members (memberlist ``suspicionTimeout``).

        ``suspicion_mult * max(1, log10(n)) * probe_interval_s``; memberlist
        rounds the node scale to milliseconds, and so do we.
        """
        node_scale = max(1.0, math.log10(max(1, n)))
        return self.suspicion_mult * math.floor(node_scale * 1000) / 1000 * self.probe_interval_s

    def suspicion_timeout_s_max(self, n: int) -> float:
        """Ceiling (and starting value) of the suspicion timeout with ``n`` live members."""
        return self.suspicion_max_timeout_mult * self.suspicion_timeout_s_min(n)

    def suspicion_confirmations_expected(self, n: int) -> int:
        """Lifeguard's k: independent confirmations that bring the timeout down to its floor.

        ``suspicion_confirmations`` (memberlist: ``SuspicionMult - 2``), or 0
        when fewer than that many other members could confirm (then the
        timeout is the floor at once).
        """
        k = self.suspicion_confirmations
        return k if n - 2 >= k else 0

    def retransmit_limit(self, n: int) -> int:
        """Times an update is piggybacked: ``retransmit_mult * ceil(log10(n + 1))`` (memberlist)."""
        return self.retransmit_mult * math.ceil(math.log10(n + 1))

    def push_pull_interval_s_for(self, n: int) -> float:
        """Seconds between full-state exchanges with ``n`` live members: the interval times
        ``max(1, n / PUSH_PULL_SCALE_THRESHOLD_MEMBERS)``.

        Each exchange carries all n members both ways, so a node spends
        ``2 n fact_bytes / interval`` on them: with the interval in proportion
        to n, that is ``2 x 32 x fact_bytes / 30 s`` at any size (about 210 B/s
        with unsigned 100-byte facts). memberlist stretches the interval by
        ``log2(n / 32) + 1`` only, which leaves the cost growing as n / log n
        (1,077 B/s at 1,000 members here, about 6.7 KiB/s at 10,000).

        What the longer interval costs: only repair of what gossip missed
        waits for it. Joins and refutations spread by gossip
        (``retransmit_limit`` copies each, so a node misses one with odds
        near ``e^-retransmits``), a joiner gets the whole list from its seed
        at once, and a healed partition is found by the reconnect exchanges
        (``reconnect_interval_s``, not scaled) and then gossiped. A member a
        node did miss is learned at that node's next exchange either way:
        about interval / 2 on average (47 s at 100 members, 8 min at 1,000,
        78 min at 10,000).
        """
        if n <= PUSH_PULL_SCALE_THRESHOLD_MEMBERS:
            return self.push_pull_interval_s
        return self.push_pull_interval_s * n / PUSH_PULL_SCALE_THRESHOLD_MEMBERS

    def detection_bound_s(self, n: int) -> float:
        """Worst-case seconds from a crash to the member being dead at every live member.

        The bound holds without relying on gossip at all, which is why it is
        loose: each live member reaches the crashed one in its own round-robin
        probe order within ``2(n-1) - 1`` probe periods (the list of the n-1
        others is reshuffled after each pass, so the crashed member may be
        first in one pass and last in the next: SWIM, Das et al. 2002,
        section 4.3), that probe fails by the end of its period, and the
        suspicion it starts expires after at most the ceiling timeout
        (confirmations and gossip only make any of this earlier)::

            detection_bound_s(n) = 2 (n - 1) * probe_interval_s + suspicion_timeout_s_max(n)

        Assumes the detecting members are healthy (awareness score 0; a node
        with score s probes (s+1) times slower) and membership is otherwise
        stable. Typical detection is far faster: the first member to probe the
        crashed one does so after about e/(e-1) ~ 1.6 periods on average, and
        confirmations from other probers bring the timeout to its floor.
        """
        assert n >= 1
        return 2 * (n - 1) * self.probe_interval_s + self.suspicion_timeout_s_max(n)
