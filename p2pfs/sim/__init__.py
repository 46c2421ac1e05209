"""Deterministic simulation: a seeded fake network on trio's MockClock (see ``network``)."""

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
