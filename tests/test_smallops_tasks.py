"""A name read's tasks, and the stand-ins found only when a target fails (issue 14, small files).

The coordinator asks its own replica and waits for the hedge in the read's nursery body (one
task per peer asked, none for itself or the hedge), and works out the preference list once,
leaving the stand-ins to be found when one is needed (``coordinator._plan``). The answers must
stay those of ``placement.write_plan`` and of the reads before.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2pfs import net
from p2pfs.address import Address
from p2pfs.clock import SystemClock
from p2pfs.membership import Member
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.coordinator import NAME_READ_HEDGE_S, Coordinator, _plan
from p2pfs.replication.placement import Target, name_key, write_plan
from p2pfs.replication.quorum import ReadQuorum, WriteQuorum
from p2pfs.replication.view import RingView
from p2pfs.storage import NameEntry, Timestamp
from p2pfs.wire import FrameKind, Role

from test_smallops_reads import FakeCluster, _members
from wire_helpers import Echo

WAIT_S = 10.0


def _cluster(entry: NameEntry, nodes: list[str]) -> FakeCluster:
    """Every node's name replica holding ``entry``; some may be made down or slow."""
    cluster = FakeCluster()
    cluster.entries = {node: entry for node in nodes}
    return cluster


class SpawnCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


def _entry(name: str) -> NameEntry:
    return NameEntry(name, Timestamp(100, 0), "e" * 64, None)


async def _read(config: ReplicationConfig, me: str, members: list[Member], cluster: FakeCluster,
                name: str, counter: SpawnCounter | None = None) -> tuple[NameEntry | None, float]:
    """The entry read and the seconds the read took; ``counter`` counts the read's spawns alone."""
    view = RingView(me, config, lambda: members, SystemClock())
    coordinator = Coordinator(node_id=me, config=config, view=view, replicas=cluster, local=None,
                              clock=SystemClock(), offload=None)
    view.ring()  # built before the count starts
    start_s = trio.current_time()
    if counter is not None:
        trio.lowlevel.add_instrument(counter)
    with trio.fail_after(WAIT_S):
        entry = await coordinator.read_name(name)
    if counter is not None:
        trio.lowlevel.remove_instrument(counter)
    return entry, trio.current_time() - start_s


def _run(fn, *args):
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_read_whose_replicas_agree_spawns_one_task_for_the_one_peer_asked():
    nodes, members = _members(3)
    cluster = _cluster(_entry("a"), nodes)
    counter = SpawnCounter()
    entry, elapsed_s = _run(_read, ReplicationConfig(rf=3, w=2, r=2), nodes[0], members, cluster, "a", counter)
    assert entry == _entry("a")
    assert len(cluster.asked) == 2 and nodes[0] in cluster.asked
    assert counter.spawned == 1  # 3 before: this node's read and the hedge had a task each
    assert elapsed_s < NAME_READ_HEDGE_S  # no wait for the hedge once the read is done


def test_this_node_failing_lets_its_slow_replacement_run_beside_the_hedge():
    """rf=5, r=3: this node fails, the replica asked in its place never answers; the hedge still
    asks the last one at NAME_READ_HEDGE_S (the body must not wait for the replacement)."""
    config = ReplicationConfig(rf=5, w=3, r=3)
    nodes, members = _members(5)
    me = nodes[0]
    cluster = _cluster(_entry("a"), nodes)
    cluster.down.add(me)

    async def replacement() -> str:
        view = RingView(me, config, lambda: members, SystemClock())
        preferred = view.ring().preference_list(name_key("a"), config.rf)
        return [n for n in preferred if n != me][2]  # the first held back: asked when this node fails

    cluster.slow.add(trio.run(replacement))
    entry, elapsed_s = _run(_read, config, me, members, cluster, "a")
    assert entry == _entry("a")
    assert NAME_READ_HEDGE_S <= elapsed_s < NAME_READ_HEDGE_S * 2
    assert sorted(cluster.asked) == sorted(nodes)


def _ring(count: int):
    nodes, members = _members(count)

    async def build():
        return RingView(nodes[0], ReplicationConfig(rf=3, w=2, r=2), lambda: members, SystemClock()).ring()

    return nodes, trio.run(build)


@pytest.mark.parametrize("down", [0, 1, 2])
def test_the_plan_is_write_plans_with_the_stand_ins_found_when_needed(down):
    nodes, ring = _ring(7)
    for i in range(50):
        key = name_key(f"f{i}")
        preferred = ring.preference_list(key, 3)
        unavailable = set(preferred[:down]) | {nodes[-1]}  # and one node outside most plans
        plan_preferred, targets, spare = _plan(ring, key, 3, unavailable)
        want_targets, want_spare = write_plan(ring, key, 3, unavailable)
        assert plan_preferred == preferred
        assert targets == want_targets
        assert list(spare() if callable(spare) else spare) == want_spare
        assert callable(spare) == unavailable.isdisjoint(preferred)


def test_stand_ins_are_found_once_and_only_when_a_target_fails():
    calls = []

    def find():
        calls.append(1)
        return ["s0", "s1"]

    write = WriteQuorum("w", [Target("p0"), Target("p1")], find, 2)
    write.on_answer(Target("p0"))
    write.on_answer(Target("p1"))
    assert calls == [] and write.check() == 2

    write = WriteQuorum("w", [Target("p0"), Target("p1")], find, 2)
    assert write.on_failure(Target("p0"), "down").retry == Target("s0", hint_for="p0")
    assert write.on_failure(Target("s0", hint_for="p0"), "down").retry == Target("s1", hint_for="p0")
    assert calls == [1]

    read = ReadQuorum("r", ["p0", "p1"], [Target("p0"), Target("p1")], find, 2)
    read.on_answer(Target("p0"), _entry("a"))
    read.on_answer(Target("p1"), _entry("a"))
    assert read.done and calls == [1]
    read = ReadQuorum("r", ["p0", "p1"], [Target("p0"), Target("p1")], find, 2)
    assert read.on_failure(Target("p1"), "down").retry == Target("s0", hint_for="p1")
    assert calls == [1, 1]


async def _write(config: ReplicationConfig, me: str, members: list[Member], cluster: FakeCluster,
                 entry: NameEntry, counter: SpawnCounter) -> int:
    view = RingView(me, config, lambda: members, SystemClock())
    coordinator = Coordinator(node_id=me, config=config, view=view, replicas=cluster, local=None,
                              clock=SystemClock(), offload=None)
    view.ring()  # built before the count starts
    trio.lowlevel.add_instrument(counter)
    with trio.fail_after(WAIT_S):
        acks = await coordinator.write_name(entry)
    trio.lowlevel.remove_instrument(counter)
    return acks


def test_a_name_write_spawns_a_task_per_peer_and_none_for_this_node():
    nodes, members = _members(3)
    cluster = _cluster(_entry("old"), nodes)
    counter = SpawnCounter()
    new = NameEntry("a", Timestamp(200, 0), "e" * 64, None)
    assert _run(_write, ReplicationConfig(rf=3, w=2, r=2), nodes[0], members, cluster, new, counter) == 3
    assert all(cluster.entries[node] == new for node in nodes)
    assert counter.spawned == 2  # 3 before: this node's write had a task of its own


class EchoHandlers:
    async def handle_request(self, request: net.IncomingRequest):
        return request.msg

    def handle_oneway(self, conn, msg) -> None:
        pass


class StepsOf(trio.abc.Instrument):
    """How often one task is run: each time it yields to the scheduler and is resumed."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_a_small_request_on_a_free_connection_takes_the_send_lock_without_a_scheduler_trip(
        nursery, make_identity):
    """``Connection._send_frame`` takes a free send lock at once: a request and its answer cost
    the caller one scheduler trip fewer (``Lock.acquire`` yields even when the lock is free)."""
    server = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), EchoHandlers(),
                          config=net.NetConfig(handshake_timeout_s=5.0))
    await nursery.start(server.run)
    async with net.client_connection(make_identity(Role.CLIENT), Address("127.0.0.1", server.bound_port)) as conn:
        assert await conn.request(Echo(b"warm"), timeout_s=WAIT_S) == Echo(b"warm")
        counted = []
        for _ in range(5):  # the fewest of a few: a socket that is not writable at once adds a wait
            steps = StepsOf(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(steps)
            assert await conn.request(Echo(b"x" * 4096), timeout_s=WAIT_S) == Echo(b"x" * 4096)
            trio.lowlevel.remove_instrument(steps)
            counted.append(steps.steps)
    assert min(counted) <= 4, counted  # 5 before: the lock's yield, the socket lock's, the socket
    # write's, TLS's closing checkpoint, and the answer's arrival


async def test_a_cancelled_caller_sends_nothing(nursery, make_identity):
    """The free lock's shortcut keeps the lock's cancellation point: a caller cancelled before
    sending raises Cancelled and does not send its request, and the connection stays usable."""
    server = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), EchoHandlers(),
                          config=net.NetConfig(handshake_timeout_s=5.0))
    await nursery.start(server.run)
    async with net.client_connection(make_identity(Role.CLIENT), Address("127.0.0.1", server.bound_port)) as conn:
        sent = []
        send_all = conn._stream.send_all

        async def recording_send_all(*parts):
            sent.append(parts)
            await send_all(*parts)

        conn._stream.send_all = recording_send_all
        with trio.CancelScope() as scope:
            scope.cancel()
            await conn.request(Echo(b"never"), timeout_s=WAIT_S)
        assert scope.cancelled_caught
        # Only the CANCEL that ends any abandoned request (the peer ignores one for a stream it never saw).
        assert [bytes(parts[0])[4] for parts in sent] == [FrameKind.CANCEL]
        assert await conn.request(Echo(b"after"), timeout_s=WAIT_S) == Echo(b"after")
