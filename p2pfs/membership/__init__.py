"""Gossip membership and failure detection: SWIM with Lifeguard, as a pure core and a trio driver.

* ``state.Membership`` — the protocol core (pure; ``handle``/``tick`` with explicit ``now_s``).
* ``driver.MembershipService`` — runs a core under trio over a ``GossipTransport``.
* ``config.MembershipConfig`` — every timing, memberlist's LAN defaults, ``detection_bound_s``.
* ``messages`` — wire messages (type codes 20-39) and ``is_membership_message`` for dispatch.

The driver's and the core's names are loaded on first use (PEP 562 ``__getattr__``), so that
importing the pure core does not import trio, and reading the messages loads neither.
"""

import importlib

from .config import MembershipConfig
from .messages import MEMBERSHIP_MESSAGES, MemberState, is_membership_message

# Names loaded from their module on first use: the trio driver's, and the core's (so that
# a reader of the messages alone, such as the CLI, loads neither).
_HOMES = {
    "GossipTransport": "driver",
    "MembershipService": "driver",
    "incarnation_from_wall_clock": "driver",
    "Member": "state",
    "Membership": "state",
    "Send": "state",
}

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
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
