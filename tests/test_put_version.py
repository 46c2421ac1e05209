"""A put writes its version without reading the name first, and still ends up newest.

The coordinator writes the new version to the name's replicas straight away; a
replica that holds a newer version (from a node whose clock runs ahead) does not
take it, and only then does the put read the name at quorum, move its clock past
what it found, and write again (``Coordinator.write_version``).
"""

from __future__ import annotations

import trio

from p2pfs.address import Address
from p2pfs.clock import SystemClock
from p2pfs.membership import Member, MemberState
from p2pfs.replication import coordinator as coordinator_module
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.coordinator import Coordinator
from p2pfs.replication.errors import ReplicaDown
from p2pfs.replication.view import RingView
from p2pfs.storage import NAMES_FILE_NAME, Manifest, NameEntry, NameIndex, Timestamp
from p2pfs.storage.hlc import MAX_DRIFT_MS

NODES = ("a" * 64, "b" * 64, "c" * 64)
OTHER_WRITER = "d" * 64
CONTENT = b"small file"


class IndexReplica:
    """A replica that is only a name index, counting what it is asked; ``down`` fails every call."""

    def __init__(self, node_id: str, names: NameIndex) -> None:
        self.node_id = node_id
        self.names = names
        self.writes = 0
        self.reads = 0
        self.down = False

    async def put_name(self, entry: NameEntry, hint_for: str = "") -> bool:
        self.writes += 1
        if self.down:
            raise ReplicaDown("down")
        return self.names.apply(entry)

    async def get_name(self, name: str) -> NameEntry | None:
        self.reads += 1
        if self.down:
            raise ReplicaDown("down")
        return self.names.get(name)


class IndexReplicas:
    def __init__(self, replicas: dict[str, IndexReplica]) -> None:
        self._replicas = replicas
        self.local = replicas[NODES[0]]

    def __call__(self, node_id: str) -> IndexReplica:
        return self._replicas[node_id]


async def _inline(fn, *args):
    return fn(*args)


def _cluster(tmp_path, config: ReplicationConfig = ReplicationConfig()) -> tuple[Coordinator, dict[str, IndexReplica]]:
    clock = SystemClock()
    members = [Member(n, Address("127.0.0.1", 7000 + i), "", 10 * 1024**3, 1, 1, MemberState.ALIVE, 0.0)
               for i, n in enumerate(NODES)]
    view = RingView(NODES[0], config, lambda: members, clock)
    replicas = {}
    for node_id in NODES:
        (tmp_path / node_id[:1]).mkdir()
        replicas[node_id] = IndexReplica(node_id, NameIndex(tmp_path / node_id[:1] / NAMES_FILE_NAME))
    # No chunk store: the file is small enough to be stored inline, in its name entry.
    coordinator = Coordinator(node_id=NODES[0], config=config, view=view, replicas=IndexReplicas(replicas),
                              local=None, clock=clock, offload=_inline)
    return coordinator, replicas


def _put(coordinator: Coordinator, name: str) -> NameEntry:
    async def pieces():
        yield CONTENT

    async def main() -> NameEntry:
        async with trio.open_nursery() as nursery:
            await nursery.start(coordinator.repairs.run)
            entry = await coordinator.put(name, pieces(), len(CONTENT))
            nursery.cancel_scope.cancel()
        return entry

    return trio.run(main)


def _other_version(wall_ms: int) -> NameEntry:
    manifest = Manifest((), 0, bytes(32), wall_ms, 1 << 20)
    return NameEntry("f", Timestamp(wall_ms, 0), OTHER_WRITER, manifest)


def test_a_new_name_is_written_without_a_read(tmp_path):
    coordinator, replicas = _cluster(tmp_path)
    entry = _put(coordinator, "f")
    assert [(r.writes, r.reads) for r in replicas.values()] == [(1, 0)] * 3
    assert all(r.names.get("f") == entry for r in replicas.values())


def test_a_newer_version_from_a_clock_ahead_is_passed_after_one_read(tmp_path):
    coordinator, replicas = _cluster(tmp_path)
    ahead = _other_version(SystemClock().wall_ms() + MAX_DRIFT_MS // 2)
    for replica in replicas.values():
        assert replica.names.apply(ahead)
    entry = _put(coordinator, "f")
    assert entry.supersedes(ahead)
    assert all(r.names.get("f") == entry for r in replicas.values())
    assert [r.writes for r in replicas.values()] == [2] * 3  # refused once, then taken
    assert sum(r.reads for r in replicas.values()) >= 2  # the read at quorum between the writes


def test_a_version_it_cannot_pass_costs_a_bounded_number_of_writes(tmp_path):
    """A version further ahead than the clocks may drift is never observed (the HLC refuses
    it), so every write is refused: the put stops after VERSION_WRITES_MAX of them."""
    coordinator, replicas = _cluster(tmp_path)
    future = _other_version(SystemClock().wall_ms() + 10 * MAX_DRIFT_MS)
    for replica in replicas.values():
        assert replica.names.apply(future)
    _put(coordinator, "f")
    assert [r.writes for r in replicas.values()] == [coordinator_module.VERSION_WRITES_MAX] * 3
    assert all(r.names.get("f") == future for r in replicas.values())


def test_a_write_heard_by_r_replicas_needs_no_read(tmp_path):
    coordinator, replicas = _cluster(tmp_path)  # w = r = 2 of rf = 3
    replicas[NODES[2]].down = True
    _put(coordinator, "f")
    assert sum(r.reads for r in replicas.values()) == 0


def test_a_write_heard_by_fewer_than_r_replicas_reads_as_a_put_did_before(tmp_path):
    """With r = 3, two replicas answering a write (and taking it) are fewer than a read would
    have heard: the put reads the name too, as it did before every write."""
    coordinator, replicas = _cluster(tmp_path, ReplicationConfig(w=1, r=3))
    replicas[NODES[1]].down = True
    entry = _put(coordinator, "f")
    assert [r.writes for r in replicas.values()] == [1, 1, 1]
    # The read asks the two that answered (the one that failed is skipped while it backs off).
    assert [r.reads for r in replicas.values()] == [1, 0, 1]
    assert replicas[NODES[0]].names.get("f") == entry
