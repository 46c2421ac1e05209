"""Background jobs over a node's whole store in bounded batches (issue 16, data per node).

Each test builds a store of a few thousand entries directly (chunk files and one
SQLite transaction, as scripts/bench_pernode.py does at a million), shrinks the
batch bounds to a hundred or so, and checks that the batched answer equals the
whole-list one and that no batch passed its bound.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sqlite3
import types
from collections import defaultdict

import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

from p2pfs import net, wire
from p2pfs.replication import antientropy, fsck, gc
from p2pfs.replication import messages as dm
from p2pfs.replication.antientropy import AntiEntropy
from p2pfs.replication.background import RepairPacer
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.errors import ReplicaDown, ReplicaRefused
from p2pfs.replication.fsck import Fsck
from p2pfs.replication.gc import GarbageCollector, ReferenceFilter
from p2pfs.replication.handoff import Pusher
from p2pfs.replication.healing import BucketDigester, bucket_digests, bucket_of, by_bucket, name_item, shared_keys
from p2pfs.replication.hints import HintStore
from p2pfs.replication.local import LocalReplica, LocalStore
from p2pfs.replication.placement import name_key
from p2pfs.replication.scrub import SCRUB_CHUNKS_PER_ROUND, PassCursor, Scrubber
from p2pfs.ring import Ring, RingMember
from p2pfs.storage import CHUNK_SIZE_BYTES_MIN, ChunkRef, ChunkStore, Manifest, NameEntry, NameIndex, Timestamp
from p2pfs.storage import chunk_id_of
from p2pfs.storage.names import NAMES_FILE_NAME

NODES = ["a" * 64, "b" * 64, "c" * 64]
NOW_MS = 1_700_000_000_000
BATCH = 100


@dataclasses.dataclass
class ManualClock:
    now_ms: int = NOW_MS

    def monotonic_s(self) -> float:
        return self.now_ms / 1000

    def wall_ms(self) -> int:
        return self.now_ms


async def inline(fn, *args):
    return fn(*args)


def write_chunks(root, blobs) -> list[bytes]:
    """Chunk files in the store's layout, without fsync (what a put leaves, minus durability)."""
    ids = []
    for data in blobs:
        hex_id = chunk_id_of(data).hex()
        fanout = root / "chunks" / hex_id[:2]
        fanout.mkdir(parents=True, exist_ok=True)
        (fanout / hex_id[2:]).write_bytes(data)
        os.utime(fanout / hex_id[2:], ns=(NOW_MS * 1_000_000, NOW_MS * 1_000_000))
        ids.append(bytes.fromhex(hex_id))
    return ids


def write_names(path, entries) -> None:
    """Rows in one transaction, into an index NameIndex created (its schema)."""
    NameIndex(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT OR REPLACE INTO names (name, wall_ms, logical, writer, manifest, client) VALUES (?, ?, ?, ?, ?, '')",
        [(e.name.encode(), e.version.wall_ms, e.version.logical, e.writer,
          None if e.manifest is None else e.manifest.encode()) for e in entries])
    conn.execute("COMMIT")
    conn.close()


def files(count: int, rng: random.Random) -> tuple[list[NameEntry], list[bytes]]:
    """``count`` names of two chunks each (a minimum-size chunk and a tail), and the chunk bytes."""
    entries, blobs = [], []
    for i in range(count):
        head, tail = rng.randbytes(CHUNK_SIZE_BYTES_MIN), rng.randbytes(16)
        blobs += [head, tail]
        manifest = Manifest(
            (ChunkRef(chunk_id_of(head), len(head)), ChunkRef(chunk_id_of(tail), len(tail))),
            len(head) + len(tail), chunk_id_of(head + tail), NOW_MS, CHUNK_SIZE_BYTES_MIN)
        entries.append(NameEntry(f"dir/f{i:05d}", Timestamp(NOW_MS - 10_000, i), NODES[0], manifest))
    return entries, blobs


def open_local(root) -> LocalStore:
    clock = ManualClock()
    return LocalStore(ChunkStore(root, 1 << 40, clock=clock), NameIndex(root / NAMES_FILE_NAME),
                      HintStore(root / "hints.sqlite"), clock)


class CountingOffload:
    """Runs inline and records the size of every batch read from the chunk store or the name index."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def __call__(self, fn, *args):
        result = fn(*args)
        if (fn is next and result is not None) or getattr(fn, "__name__", "") == "ids_after":
            self.batches.append(len(result))  # ChunkStore.iter_id_batches (gc), ids_after (a walk)
        elif getattr(fn, "__name__", "") == "summaries_after":
            self.batches.append(len(result[0]))
        return result


# -- the store's own iteration ----------------------------------------------------------


def test_chunk_pages_and_batches_are_the_sorted_store_within_their_bound(tmp_path):
    ids = write_chunks(tmp_path, [os.urandom(8) for _ in range(2000)])
    store = ChunkStore(tmp_path, 1 << 30, clock=ManualClock())
    assert sorted(store.iter_ids()) == sorted(ids)
    batches = list(store.iter_id_batches(BATCH))
    assert max(map(len, batches)) <= BATCH
    assert [i for batch in batches for i in batch] == sorted(ids)
    paged, after = [], b""
    while page := store.ids_after(after, BATCH):
        assert len(page) <= BATCH
        paged += page
        after = page[-1]
    assert paged == sorted(ids)
    assert store.ids_after(sorted(ids)[1234], 5) == sorted(ids)[1235:1240]
    assert store.ids_after(sorted(ids)[-1], 5) == []


def test_name_summaries_page_by_key_and_equal_the_whole_list(tmp_path):
    entries, _ = files(2500, random.Random(1))
    write_names(tmp_path / NAMES_FILE_NAME, entries)
    index = NameIndex(tmp_path / NAMES_FILE_NAME)
    paged, after, pages = [], b"", 0
    while True:
        rows, after = index.summaries_after(after, BATCH)
        assert len(rows) <= BATCH
        paged += rows
        pages += 1
        if not after:
            break
    assert paged == sorted(index.summaries(), key=lambda row: row[0].encode())
    assert pages == 2500 // BATCH + 1


def test_running_digests_equal_the_digests_of_whole_sorted_lists():
    rng = random.Random(2)
    items = {peer: sorted({rng.randbytes(rng.randrange(1, 40)) for _ in range(2000)}) for peer in "pq"}
    digester = BucketDigester()
    for peer, peer_items in items.items():
        for item in peer_items:
            digester.add(peer, bucket_of(item), item)
    for peer, peer_items in items.items():
        assert digester.digests(peer) == bucket_digests(by_bucket(peer_items))
    with pytest.raises(AssertionError):
        digester.add("p", bucket_of(items["p"][0]), items["p"][0])  # out of order


# -- anti-entropy ---------------------------------------------------------------------------


class Node:
    """One node's stores and anti-entropy, with peers reached by direct calls."""

    def __init__(self, root, node_id: str, ring: Ring, offload) -> None:
        self.node_id = node_id
        self.local = open_local(root)
        self.replica = LocalReplica(node_id, self.local, offload)
        view = types.SimpleNamespace(node_id=node_id, leaving=set(), ring=lambda: ring,
                                     alive=lambda: set(NODES), everyone=lambda r: sorted(NODES))
        self.peers: dict[str, Node] = {}
        self.request_deadline_s = math.inf  # what RemoteReplica gives a request (replica_timeout_s)
        replicas = types.SimpleNamespace(local=self.replica, remote=lambda peer: Remote(self, self.peers[peer]))
        replicas_call = _ReplicasCall(self, replicas)
        config = ReplicationConfig()
        pacer = RepairPacer(1 << 40, ManualClock())
        self.anti_entropy = AntiEntropy(config=config, view=view, replicas=replicas_call, local=self.local,
                                        pusher=Pusher(self.local, pacer, offload), pacer=pacer, offload=offload,
                                        snapshot_dir=root / "antientropy")
        self.gc = GarbageCollector(config=dataclasses.replace(config, chunk_gc_grace_s=0.0), view=view,
                                   replicas=replicas_call, local=self.local, clock=ManualClock(NOW_MS + 1000),
                                   offload=offload)
        self.fsck = Fsck(config=config, view=view, replicas=replicas_call, offload=offload)


class _ReplicasCall:
    def __init__(self, node: Node, replicas) -> None:
        self._node, self.local, self.remote = node, replicas.local, replicas.remote

    def __call__(self, node_id: str):
        return self._node.replica if node_id == self._node.node_id else self._node.peers[node_id].replica


class Remote:
    """A peer's replica and its anti-entropy handlers, as ``RemoteReplica`` would reach them."""

    def __init__(self, asker: Node, peer: Node) -> None:
        self._asker, self._peer = asker, peer
        self.node_id = peer.node_id
        self.exchanges = 0

    async def _answer(self, handler, msg):
        request = types.SimpleNamespace(peer=types.SimpleNamespace(node_id=self._asker.node_id), msg=msg)
        try:
            with trio.fail_after(self._asker.request_deadline_s):
                return await handler(request)
        except trio.TooSlowError:
            raise ReplicaDown(f"no answer within {self._asker.request_deadline_s} s") from None
        except net.RemoteError as exc:  # an error the handler answered with
            raise ReplicaRefused(exc.code, exc.text) from exc

    async def sync_chunks(self, digests):
        reply = await self._answer(self._peer.anti_entropy.on_sync_chunks, dm.SyncChunks(digests))
        return [(b.bucket, [b.ids[i : i + 32] for i in range(0, len(b.ids), 32)]) for b in reply.buckets]

    async def sync_names(self, digests):
        reply = await self._answer(self._peer.anti_entropy.on_sync_names, dm.SyncNames(digests))
        return list(reply.differing), {s.name: (Timestamp(s.wall_ms, s.logical), s.writer) for s in reply.names}

    def __getattr__(self, name):
        return getattr(self._peer.replica, name)


def ring3() -> Ring:
    return Ring([RingMember(n) for n in NODES])


def cluster(tmp_path, entries, blobs, offload=inline) -> dict[str, Node]:
    ring = ring3()
    nodes = {}
    for node_id in NODES:
        root = tmp_path / node_id[:1]
        write_chunks(root, blobs)
        write_names(root / NAMES_FILE_NAME, entries)
        nodes[node_id] = Node(root, node_id, ring, offload)
    for node in nodes.values():
        node.peers = nodes
    return nodes


def test_a_walk_digests_the_store_in_bounded_batches_as_the_whole_list_does(tmp_path, monkeypatch):
    monkeypatch.setattr(antientropy, "SCAN_BATCH_IDS", BATCH)
    monkeypatch.setattr(antientropy, "SCAN_BATCH_NAMES", BATCH)
    entries, blobs = files(300, random.Random(3))
    offload = CountingOffload()
    node = cluster(tmp_path, entries, blobs, offload)[NODES[0]]
    ring = ring3()
    walk = trio.run(node.anti_entropy._walk_chunks, ring, set(NODES))
    by_peer, not_ours = shared_keys(ring, 3, NODES[0], node.local.chunks.iter_ids())
    for peer in NODES[1:]:
        assert walk.digester.digests(peer) == bucket_digests(by_bucket(by_peer[peer]))
    assert walk.held == len(blobs) and not not_ours and walk.not_ours == []
    assert offload.batches and max(offload.batches) <= BATCH  # never more than a batch at once
    names = trio.run(node.anti_entropy._walk_names, ring, set(NODES))
    rows = {name_key(r[0]): r for r in node.local.names.summaries()}
    by_peer, _ = shared_keys(ring, 3, NODES[0], rows)
    for peer in NODES[1:]:
        whole = defaultdict(list)
        for key in by_peer[peer]:
            whole[bucket_of(key)].append(name_item(*rows[key]))
        assert names.digester.digests(peer) == bucket_digests(whole)


def test_a_node_that_lost_a_tenth_of_its_chunks_and_names_is_whole_after_one_round(tmp_path, monkeypatch):
    # Answers carry 100 ids and 25 names, so one round takes many exchanges (one each per
    # answer before the exchange loop, which left the rest to later rounds).
    monkeypatch.setattr(antientropy, "IDS_PER_MESSAGE_MAX", BATCH)
    monkeypatch.setattr(antientropy, "NAMES_PER_MESSAGE_MAX", BATCH // 4)
    monkeypatch.setattr(antientropy, "SCAN_BATCH_IDS", BATCH)
    monkeypatch.setattr(antientropy, "SCAN_BATCH_NAMES", BATCH)
    entries, blobs = files(300, random.Random(4))
    nodes = cluster(tmp_path, entries, blobs)
    victim = nodes[NODES[2]]
    all_ids = sorted(victim.local.chunks.iter_ids())
    lost = random.Random(5).sample(all_ids, len(all_ids) // 10)
    for chunk_id in lost:
        victim.local.chunks.delete(chunk_id)
    for entry in entries[::10]:
        victim.local.names.remove_if(entry.name, entry.version, entry.writer)
    assert len(victim.local.names.summaries()) == 270
    trio.run(victim.anti_entropy.round)
    assert sorted(victim.local.chunks.iter_ids()) == all_ids
    assert len(victim.local.names.summaries()) == 300
    assert victim.anti_entropy.received_chunks == len(lost)
    assert victim.anti_entropy.queued_chunks == 0  # every pull taken off the repair queue
    assert victim.anti_entropy.under_replicated_keys >= len(lost) + 30
    trio.run(victim.anti_entropy.round)
    assert victim.anti_entropy.received_chunks == len(lost)  # nothing more to move
    assert victim.anti_entropy.under_replicated_keys == 0


# The heal-under-deadline bug: a peer walked its whole store to answer each sync request, and
# at two million chunks the walk outran the request deadline, so a node that lost chunks never
# healed. On the mock clock each worker-thread call costs STORE_CALL_S, so a walk costs in
# proportion to the store: ~0.7 s here, against a request deadline of 0.5 s.
STORE_CALL_S = 0.05
REQUEST_DEADLINE_S = 0.5


async def costly_offload(fn, *args):
    await trio.sleep(STORE_CALL_S)
    return fn(*args)


def test_a_node_heals_although_a_walk_of_a_peers_store_outlasts_a_request(tmp_path, monkeypatch):
    monkeypatch.setattr(antientropy, "SCAN_BATCH_IDS", BATCH)
    monkeypatch.setattr(antientropy, "SCAN_BATCH_NAMES", BATCH)
    entries, blobs = files(300, random.Random(11))
    nodes = cluster(tmp_path, entries, blobs, costly_offload)
    for node in nodes.values():
        node.request_deadline_s = REQUEST_DEADLINE_S
    peer, other, victim = (nodes[n] for n in NODES)
    all_ids = sorted(victim.local.chunks.iter_ids())
    lost = random.Random(12).sample(all_ids, len(all_ids) // 10)

    async def main() -> None:
        await peer.anti_entropy.round()  # the peers' own rounds: what they answer from
        await other.anti_entropy.round()
        started_s = trio.current_time()
        await peer.anti_entropy._walk_chunks(ring3(), None)
        assert trio.current_time() - started_s > REQUEST_DEADLINE_S  # the premise: a walk outlasts a request
        for chunk_id in lost:
            victim.local.chunks.delete(chunk_id)
        for entry in entries[::10]:
            victim.local.names.remove_if(entry.name, entry.version, entry.writer)
        await victim.anti_entropy.round()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sorted(victim.local.chunks.iter_ids()) == all_ids
    assert len(victim.local.names.summaries()) == 300
    assert victim.anti_entropy.received_chunks == len(lost)  # each pulled once, from one peer
    assert victim.anti_entropy.queued_chunks == 0


# A round's deadline (10 intervals, 600 s at least) cut every round of a node holding two
# million chunks on a loaded machine, and each round began again with a fresh walk, so the
# node never healed. Here a walk alone outlasts a round (ROUND_DEADLINE_S): a walk cut short
# goes on in the next round, and exchanges cut short go on from the same walks.
ROUND_DEADLINE_S = 0.6


def test_a_node_heals_although_its_walk_and_its_exchanges_each_outlast_a_round(tmp_path, monkeypatch):
    monkeypatch.setattr(antientropy, "SCAN_BATCH_IDS", BATCH)
    monkeypatch.setattr(antientropy, "SCAN_BATCH_NAMES", BATCH)
    entries, blobs = files(300, random.Random(13))
    nodes = cluster(tmp_path, entries, blobs, costly_offload)
    peer, other, victim = (nodes[n] for n in NODES)
    all_ids = sorted(victim.local.chunks.iter_ids())
    lost = random.Random(14).sample(all_ids, len(all_ids) // 10)
    rounds = []

    async def main() -> None:
        await peer.anti_entropy.round()
        await other.anti_entropy.round()
        started_s = trio.current_time()
        await victim.anti_entropy._walk_chunks(ring3(), None)
        assert trio.current_time() - started_s > ROUND_DEADLINE_S  # the premise: a walk outlasts a round
        for chunk_id in lost:
            victim.local.chunks.delete(chunk_id)
        for _ in range(100):
            with trio.move_on_after(ROUND_DEADLINE_S) as scope:
                await victim.anti_entropy.round()
            rounds.append(scope.cancelled_caught)
            if sorted(victim.local.chunks.iter_ids()) == all_ids:
                return

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sorted(victim.local.chunks.iter_ids()) == all_ids
    assert rounds.count(True) >= 2  # healed across rounds that were cut
    assert victim.anti_entropy.received_chunks == len(lost)
    assert victim.anti_entropy.queued_chunks == 0


# A restarted node's first round came before membership converged: its ring held only itself,
# and its walk (kept on the ring it began with, across rounds when cut) found no peer, so the
# heal waited for a whole walk for nothing. Here the first round is cut by its deadline while
# the ring is the node's alone, the peers then come into its ring, and the next round must heal.
def test_a_node_whose_first_ring_holds_only_itself_heals_once_its_peers_come(tmp_path, monkeypatch):
    monkeypatch.setattr(antientropy, "SCAN_BATCH_IDS", BATCH)
    monkeypatch.setattr(antientropy, "SCAN_BATCH_NAMES", BATCH)
    entries, blobs = files(300, random.Random(15))
    nodes = cluster(tmp_path, entries, blobs, costly_offload)
    peer, other, victim = (nodes[n] for n in NODES)
    all_ids = sorted(victim.local.chunks.iter_ids())
    lost = random.Random(16).sample(all_ids, len(all_ids) // 10)
    rings = {"now": Ring([RingMember(victim.node_id)])}
    victim.anti_entropy._view.ring = lambda: rings["now"]

    async def main() -> None:
        await peer.anti_entropy.round()  # the peers' own rounds: what they answer from
        await other.anti_entropy.round()
        for chunk_id in lost:
            victim.local.chunks.delete(chunk_id)
        with trio.move_on_after(ROUND_DEADLINE_S):
            await victim.anti_entropy.round()
        assert victim.anti_entropy.chunks_held == len(all_ids) - len(lost)  # a round's figures all the same
        assert victim.anti_entropy.under_replicated_keys == 0
        rings["now"] = ring3()  # membership converged
        await victim.anti_entropy.round()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sorted(victim.local.chunks.iter_ids()) == all_ids
    assert victim.anti_entropy.received_chunks == len(lost)
    assert victim.anti_entropy.queued_chunks == 0


def test_a_cut_walk_goes_on_only_on_a_ring_that_places_keys_as_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(antientropy, "SCAN_BATCH_IDS", BATCH)
    entries, blobs = files(300, random.Random(17))
    node = cluster(tmp_path, entries, blobs, costly_offload)[NODES[0]]
    two = Ring([RingMember(n) for n in NODES[:2]])

    async def main():
        with trio.move_on_after(STORE_CALL_S * 3) as scope:
            await node.anti_entropy._walk_chunks(two, None)
        assert scope.cancelled_caught  # the premise: the walk on the ring of two was cut
        cut = node.anti_entropy._walks[antientropy.CHUNKS]
        # Another ring of the same members places keys alike: the walk goes on where it stopped.
        assert await node.anti_entropy._walk_chunks(Ring([RingMember(n) for n in NODES[:2]]), None) is cut
        with trio.move_on_after(STORE_CALL_S * 3):
            await node.anti_entropy._walk_chunks(two, None)
        cut = node.anti_entropy._walks[antientropy.CHUNKS]
        walk = await node.anti_entropy._walk_chunks(ring3(), None)
        assert walk is not cut
        return walk

    walk = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    by_peer, _ = shared_keys(ring3(), 3, NODES[0], node.local.chunks.iter_ids())
    assert walk.held == len(blobs)  # walked afresh on the ring of three
    for peer in NODES[1:]:
        assert walk.digester.digests(peer) == bucket_digests(by_bucket(by_peer[peer]))


# Each peer asked a node that had not finished its first walk waited out its 10 s request
# deadline (the walk took minutes at three million keys); the node now answers "not ready".
def test_a_sync_request_before_the_first_walk_ends_is_answered_not_ready_within_its_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(antientropy, "SCAN_BATCH_IDS", BATCH)
    monkeypatch.setattr(antientropy, "FIRST_WALK_WAIT_S", STORE_CALL_S * 3)
    entries, blobs = files(300, random.Random(19))
    nodes = cluster(tmp_path, entries, blobs, costly_offload)
    asker, peer = nodes[NODES[0]], nodes[NODES[1]]
    asker.request_deadline_s = REQUEST_DEADLINE_S
    remote = Remote(asker, peer)

    async def main():
        started_s = trio.current_time()
        with pytest.raises(ReplicaRefused) as refused:
            await remote.sync_chunks(())
        assert refused.value.code == wire.ErrorCode.UNAVAILABLE
        assert trio.current_time() - started_s < REQUEST_DEADLINE_S  # answered, not timed out
        for _ in range(100):  # each request's wait walks on from where the last one stopped
            try:
                return await remote.sync_chunks(())
            except ReplicaRefused:
                continue

    answer = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert answer and {c for _, ids in answer for c in ids} <= set(peer.local.chunks.iter_ids())


# -- garbage collection --------------------------------------------------------------------


def test_the_reference_filter_never_forgets_and_rarely_confuses():
    rng = random.Random(6)
    held = [rng.randbytes(32) for _ in range(5000)]
    other = [rng.randbytes(32) for _ in range(5000)]
    refs = ReferenceFilter(1 << 16, b"salt")  # 13 bits per id
    for chunk_id in held:
        refs.add(chunk_id)
    assert all(chunk_id in refs for chunk_id in held)
    false_positives = sum(chunk_id in refs for chunk_id in other)
    assert false_positives < 5000 * 0.01  # (1 - e^(-4/13))^4 = 0.5%
    resalted = ReferenceFilter(1 << 16, b"pepper")
    for chunk_id in held:
        resalted.add(chunk_id)
    assert all(chunk_id in resalted for chunk_id in held)
    # Another salt confuses other ids: what one round keeps by mistake, the next collects.
    assert {c for c in other if c in refs} != {c for c in other if c in resalted}


def test_gc_keeps_every_referenced_chunk_and_removes_the_rest_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "GC_BATCH_IDS", BATCH)
    monkeypatch.setattr(gc, "REFERENCE_FILTER_BITS", 1 << 15)  # ~16 bits per reference here
    entries, blobs = files(300, random.Random(7))
    garbage = [os.urandom(20) for _ in range(200)]
    offload = CountingOffload()
    nodes = cluster(tmp_path, entries, blobs + garbage, offload)
    node = nodes[NODES[0]]
    removed, _ = trio.run(node.gc.round)
    held = set(node.local.chunks.iter_ids())
    referenced = {ref.chunk_id for e in entries for ref in e.manifest.chunks}
    assert referenced <= held  # never a referenced chunk
    kept_garbage = held - referenced  # false positives of this round's filter
    assert removed == 200 - len(kept_garbage)
    assert len(kept_garbage) <= 3
    assert max(offload.batches) <= BATCH  # the store is judged a batch at a time


# -- fsck ---------------------------------------------------------------------------------


def test_fsck_merges_sorted_pages_and_answers_as_with_whole_lists(tmp_path, monkeypatch):
    entries, blobs = files(200, random.Random(8))
    nodes = cluster(tmp_path, entries, blobs)
    rng = random.Random(9)
    b, c = nodes[NODES[1]], nodes[NODES[2]]
    ids = sorted(b.local.chunks.iter_ids())
    for chunk_id in rng.sample(ids, 20):
        b.local.chunks.delete(chunk_id)
    for chunk_id in rng.sample(ids, 15):
        c.local.chunks.delete(chunk_id)
    for entry in entries[::25]:
        c.local.names.remove_if(entry.name, entry.version, entry.writer)
    whole = trio.run(nodes[NODES[0]].fsck.run)
    monkeypatch.setattr(fsck, "FSCK_NAME_PAGE", 7)
    monkeypatch.setattr(fsck, "FSCK_CHUNK_PAGE_IDS", 50)
    monkeypatch.setattr(fsck, "FSCK_REF_BATCH", 33)
    paged = trio.run(nodes[NODES[0]].fsck.run)
    assert paged == whole
    assert whole.names_checked == 200 and whole.chunks_checked == 400
    assert whole.names_under_replicated == 8
    lost_somewhere = set(ids) - set(b.local.chunks.iter_ids()) | set(ids) - set(c.local.chunks.iter_ids())
    assert whole.chunks_under_replicated == len(lost_somewhere)
    assert whole.chunks_missing == 0 and whole.nodes_unreachable == ()


# -- the scrub's pass ---------------------------------------------------------------------


@given(ids=st.sets(st.binary(min_size=2, max_size=2), max_size=60), start=st.binary(min_size=2, max_size=2),
       limit=st.integers(1, 9))
def test_a_scrub_pass_is_every_id_once_from_its_start_round_in_bounded_pages(ids, start, limit):
    held = sorted(ids)

    def ids_after(after: bytes, count: int) -> list[bytes]:
        return [i for i in held if i > after][:count]

    cursor, walked = PassCursor(start), []
    while not cursor.done:
        page = cursor.next_page(ids_after, limit)
        assert len(page) <= limit
        walked += page
    assert walked == [i for i in held if i > start] + [i for i in held if i <= start]


def test_a_scrub_pass_verifies_every_chunk_once_holding_a_round_of_ids(tmp_path):
    ids = write_chunks(tmp_path, [os.urandom(8) for _ in range(3 * SCRUB_CHUNKS_PER_ROUND + 5)])
    local = open_local(tmp_path)
    verified: list[bytes] = []

    async def no_repair(chunk_id: bytes) -> bool:
        raise AssertionError("every chunk is good")

    async def main() -> None:
        scrubber = Scrubber(config=ReplicationConfig(scrub_bytes_per_s=1 << 30), local=local, repair=no_repair,
                            rng=random.Random(7), offload=inline)
        scrub_one = scrubber.scrub_one

        async def recording(chunk_id: bytes) -> bool:
            verified.append(chunk_id)
            return await scrub_one(chunk_id)

        scrubber.scrub_one = recording
        rounds = 0
        while True:
            before = len(verified)
            await scrubber.round()
            rounds += 1
            assert len(verified) - before <= SCRUB_CHUNKS_PER_ROUND
            if rounds == 1:
                assert scrubber.pass_chunks == len(ids)
            if scrubber.pass_remaining_chunks == 0:
                break
        assert rounds == 4 and sorted(verified) == sorted(ids) and scrubber.verified_chunks == len(ids)

    trio.run(main)
