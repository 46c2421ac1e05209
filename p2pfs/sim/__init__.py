"""Deterministic simulation on trio's MockClock: every harness lives here, none in the rooms it drives.

* ``network`` — the seeded fake network and ``run_simulation`` (a seed replays a run).
* ``membership`` — many ``MembershipService``s on that network.
* ``data`` — nodes running the real data layer, and the simulated endpoint (streamed bodies too).
* ``cluster`` — the whole-cluster simulation under faults, checked by the chaos checker.
"""

from .network import (
    SEED_ENV,
    LinkFaults,
    NetworkStats,
    SimNetwork,
    SimTransport,
    run_simulation,
    sim_seed,
)

__all__ = [
    "SEED_ENV",
    "LinkFaults",
    "NetworkStats",
    "SimNetwork",
    "SimTransport",
    "run_simulation",
    "sim_seed",
]
