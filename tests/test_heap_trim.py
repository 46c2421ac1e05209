"""When the node gives its free heap back (``MemoryBudget.heap_trim_due``): after a high use has
fallen back low and stayed there, at most once per interval, never during ordinary transfers."""

from __future__ import annotations

import trio

from p2pfs.net.budget import MemoryBudget
from p2pfs.net.config import HEAP_TRIM_INTERVAL_S, HEAP_TRIM_SETTLE_S

MIB = 1024 * 1024
BUDGET_BYTES = 64 * MIB


async def _burst(budget: MemoryBudget, size_bytes: int) -> None:
    await budget.take(size_bytes)
    budget.give_back(size_bytes)


def test_a_burst_is_trimmed_once_it_has_settled():
    budget = MemoryBudget(BUDGET_BYTES)
    trio.run(_burst, budget, BUDGET_BYTES // 2)
    assert not budget.heap_trim_due(100.0)  # low only from now
    assert not budget.heap_trim_due(100.0 + HEAP_TRIM_SETTLE_S / 2)
    assert budget.heap_trim_due(100.0 + HEAP_TRIM_SETTLE_S)
    budget.heap_trimmed(100.0 + HEAP_TRIM_SETTLE_S)
    # Nothing new rose: no second trim, however long it stays low.
    assert not budget.heap_trim_due(100.0 + 10 * HEAP_TRIM_INTERVAL_S)


def test_ordinary_transfers_keep_their_buffers():
    budget = MemoryBudget(BUDGET_BYTES)
    for _ in range(100):
        trio.run(_burst, budget, BUDGET_BYTES // 2 - 1)
    for now_s in (0.0, 100.0, 1000.0):
        assert not budget.heap_trim_due(now_s)


def test_no_trim_while_the_use_is_still_high_and_at_most_one_per_interval():
    budget = MemoryBudget(BUDGET_BYTES)

    async def main() -> None:
        await budget.take(BUDGET_BYTES // 2)
        assert not budget.heap_trim_due(0.0)
        assert not budget.heap_trim_due(HEAP_TRIM_SETTLE_S * 10)  # still held: nothing to give back
        budget.give_back(BUDGET_BYTES // 2)
        assert not budget.heap_trim_due(50.0)
        assert budget.heap_trim_due(50.0 + HEAP_TRIM_SETTLE_S)
        budget.heap_trimmed(50.0 + HEAP_TRIM_SETTLE_S)
        await _burst(budget, BUDGET_BYTES)  # another burst at once
        assert not budget.heap_trim_due(52.0 + HEAP_TRIM_SETTLE_S)
        assert not budget.heap_trim_due(50.0 + HEAP_TRIM_SETTLE_S + HEAP_TRIM_INTERVAL_S / 2)
        assert budget.heap_trim_due(50.0 + HEAP_TRIM_SETTLE_S + HEAP_TRIM_INTERVAL_S)

    trio.run(main)

