"""Running a seeded simulation scenario from a test."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from p2pfs.sim.network import SEED_ENV, run_simulation


def run_scenario(scenario: Callable[[Any, int], Awaitable[None]], root, seed: int) -> None:
    """``scenario(root, seed)`` in a simulation seeded with ``seed``; on failure, say how to replay it."""
    try:
        run_simulation(scenario, root, seed, seed=seed)
    except BaseException:
        print(f"simulation seed {seed} (replay: {SEED_ENV}={seed})")
        raise
