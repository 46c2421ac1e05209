"""Gossip membership and failure detection: SWIM with Lifeguard, as a pure core and a trio driver.

* ``state.Membership`` — the protocol core (pure; ``handle``/``tick`` with explicit ``now_s``).
* ``driver.MembershipService`` — runs a core under trio over a ``GossipTransport``.
* ``config.MembershipConfig`` — every timing, memberlist's LAN defaults, ``detection_bound_s``.
* ``messages`` — wire messages (type codes 20-39) and ``is_membership_message`` for dispatch.

The driver's names are loaded on first use (PEP 562 ``__getattr__``), so that importing the
pure core (``Member``, ``MemberState``, ``Membership``) does not import trio.
"""

from .config import MembershipConfig
from .messages import MEMBERSHIP_MESSAGES, MemberState, is_membership_message
from .state import Member, Membership, Send

# Names that live in the trio driver: imported from it only when asked for.
_DRIVER_NAMES = frozenset({"GossipTransport", "MembershipService", "incarnation_from_wall_clock"})

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


def __getattr__(name: str):
    if name in _DRIVER_NAMES:
        from . import driver

        return getattr(driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
