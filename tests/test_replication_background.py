"""The background loop and the read-repair bound, on trio's MockClock."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from p2pfs import errors
from p2pfs.replication.background import run_rounds
from p2pfs.replication.coordinator import Repairs


def _run(async_fn) -> None:
    trio.run(async_fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_read_repairs_are_bounded_when_spawned_not_when_they_run():
    async def main() -> None:
        repairs = Repairs(limit=2)
        release = trio.Event()
        started = 0

        async def repair() -> None:
            nonlocal started
            started += 1
            await release.wait()

        async with trio.open_nursery() as nursery:
            await nursery.start(repairs.run)
            # A burst of reads spawns repairs faster than they start running.
            accepted = [repairs.spawn(repair) for _ in range(5)]
            assert accepted == [True, True, False, False, False]
            await trio.testing.wait_all_tasks_blocked()
            assert started == 2 and repairs.running == 2
            release.set()
            await trio.testing.wait_all_tasks_blocked()
            assert repairs.running == 0
            assert repairs.spawn(repair)  # room again
            nursery.cancel_scope.cancel()

    _run(main)


def test_a_failed_round_is_logged_and_the_next_one_runs(caplog):
    async def main() -> None:
        outcomes = iter([errors.PeerFault("garbage from a peer"), None, errors.Unavailable("down"), None])
        ran = 0

        async def round_fn() -> None:
            nonlocal ran
            ran += 1
            outcome = next(outcomes)
            if outcome is not None:
                raise outcome

        with trio.move_on_after(4.5):
            await run_rounds("test", round_fn, interval_s=1.0, deadline_s=10.0, rng=random.Random(1),
                             jitter_fraction=0.0)
        assert ran == 4

    _run(main)
    assert "garbage from a peer" in caplog.text and "down" in caplog.text


def test_a_failure_inside_a_nursery_of_the_round_is_survived_too():
    async def main() -> None:
        ran = 0

        async def round_fn() -> None:
            nonlocal ran
            ran += 1

            async def fail() -> None:
                raise errors.PeerFault("bad reply")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fail)

        with trio.move_on_after(2.5):
            await run_rounds("test", round_fn, interval_s=1.0, deadline_s=10.0, rng=random.Random(1),
                             jitter_fraction=0.0)
        assert ran == 2

    _run(main)


def test_a_stuck_round_is_cut_at_its_deadline():
    async def main() -> None:
        starts: list[float] = []

        async def round_fn() -> None:
            starts.append(trio.current_time())
            await trio.sleep_forever()

        with trio.move_on_after(30.0):
            await run_rounds("test", round_fn, interval_s=1.0, deadline_s=5.0, rng=random.Random(1),
                             jitter_fraction=0.0)
        assert starts == [1.0, 7.0, 13.0, 19.0, 25.0]

    _run(main)


def test_a_bug_is_not_swallowed():
    async def main() -> None:
        async def round_fn() -> None:
            raise KeyError("a bug")

        await run_rounds("test", round_fn, interval_s=1.0, deadline_s=10.0, rng=random.Random(1),
                         jitter_fraction=0.0)

    with pytest.raises(KeyError):
        _run(main)
