"""Gossip membership and failure detection: SWIM with Lifeguard, as a pure core and a trio driver.

* ``state.Membership`` — the protocol core (pure; ``handle``/``tick`` with explicit ``now_s``).
* ``driver.MembershipService`` — runs a core under trio over a ``GossipTransport``.
* ``config.MembershipConfig`` — every timing, memberlist's LAN defaults, ``detection_bound_s``.
* ``messages`` — wire messages (type codes 20-39) and ``is_membership_message`` for dispatch.
"""

from .config import MembershipConfig
from .driver import GossipTransport, MembershipService, incarnation_from_wall_clock
from .messages import MEMBERSHIP_MESSAGES, MemberState, is_membership_message
from .state import Member, Membership, Send

__all__ = [
    "MEMBERSHIP_MESSAGES",
    "GossipTransport",
    "Member",
    "MemberState",
    "Membership",
    "MembershipConfig",
    "MembershipService",
    "Send",
    "incarnation_from_wall_clock",
    "is_membership_message",
]
