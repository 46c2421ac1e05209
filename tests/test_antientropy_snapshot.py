"""Anti-entropy answers from its last walk: the pure pieces, the snapshot files, and a hostile list.

The protocol (p2pfs/replication/antientropy.py, keysnapshot.py): a walk keeps each peer's
digests and writes the keys this node replicates to one file per bucket; a request is
answered from those, each bucket listed to a peer once per walk
(``healing.buckets_to_answer``); the asker moves only keys of the buckets named that both
replicate (``healing.placed_on_both``).
"""

from __future__ import annotations

import random

import pytest
import trio

from p2pfs.replication import messages as dm
from p2pfs.replication.antientropy import CHUNKS, ShortKeys
from p2pfs.replication.healing import BUCKET_SHIFT, bucket_of, buckets_to_answer, placed_on_both
from p2pfs.replication.keysnapshot import KEY_BYTES_MAX, SnapshotError, SnapshotWriter, parse_keys
from p2pfs.ring import Ring, RingMember, key_hash
from p2pfs.storage import NameIndex
from p2pfs.storage.names import NAMES_FILE_NAME
from test_data_scale import NODES, Remote, cluster, files, ring3, write_names

D1, D2, D3 = b"1" * 16, b"2" * 16, b"3" * 16


@pytest.mark.parametrize("ours, theirs, answered, keys_max, expected", [
    ({}, {}, set(), 10, []),  # nothing held: nothing differs
    ({1: (D1, 4)}, {1: (D1, 4)}, set(), 10, []),  # equal
    ({1: (D1, 4), 2: (D2, 4)}, {1: (D3, 4)}, set(), 10, [1, 2]),  # different, and absent there
    ({}, {5: (D1, 7)}, set(), 10, [5]),  # absent here: listed, empty
    ({1: (D1, 4), 2: (D2, 4)}, {}, {1}, 10, [2]),  # listed to this peer since the walk
    ({1: (D1, 6), 2: (D2, 6), 3: (D3, 1)}, {}, set(), 10, [1]),  # the next would not fit
    ({1: (D1, 11), 2: (D2, 6)}, {}, set(), 10, [2]),  # too big for any answer: the rest goes on
    ({1: (D1, 10)}, {}, set(), 10, [1]),  # exactly an answer's worth
])
def test_the_buckets_an_answer_lists(ours, theirs, answered, keys_max, expected):
    assert buckets_to_answer(ours, theirs, answered, keys_max) == expected


@pytest.mark.parametrize("ours, keys_wanted, expected", [
    ({1: (D1, 4), 2: (D2, 4), 3: (D3, 4)}, 8, [1, 2]),  # as many as fit in what an answer aims at
    ({1: (D1, 9), 2: (D2, 1)}, 8, [1]),  # the first goes whatever its size, up to keys_max
    ({1: (D1, 11), 2: (D2, 9), 3: (D3, 1)}, 8, [2]),  # over keys_max: never; then the first that fits
    ({1: (D1, 2), 2: (D2, 2)}, 100, [1, 2]),  # keys_max still bounds an answer
])
def test_an_answer_lists_what_it_aims_at_and_at_least_one_bucket(ours, keys_wanted, expected):
    assert buckets_to_answer(ours, {}, set(), 10, keys_wanted) == expected


def test_only_keys_of_the_named_bucket_that_both_replicate_count():
    ring = Ring([RingMember(n) for n in ("a" * 64, "b" * 64, "c" * 64, "d" * 64)])
    me, peer = "a" * 64, "b" * 64
    rng = random.Random(1)
    keys = [rng.randbytes(32) for _ in range(4000)]
    bucket = bucket_of(keys[0])
    kept = placed_on_both(ring, 3, me, peer, bucket, keys)
    expected = [k for k in keys if bucket_of(k) == bucket and {me, peer} <= set(ring.preference_list(k, 3))]
    assert kept == expected
    assert kept and len(kept) < sum(1 for k in keys if bucket_of(k) == bucket)  # some are d's and c's alone
    assert all(key_hash(k) >> BUCKET_SHIFT == bucket for k in kept)


def test_a_snapshot_gives_back_each_buckets_keys_in_order(tmp_path):
    rng = random.Random(2)
    keys = sorted({rng.randbytes(rng.randrange(1, 60)) for _ in range(5000)} | {b"n" * KEY_BYTES_MAX})
    writer = SnapshotWriter(tmp_path / "s")
    for key in keys:
        writer.add(bucket_of(key), key)
    writer.finish()
    for bucket in range(256):
        data = (tmp_path / "s" / f"{bucket:02x}").read_bytes() if (tmp_path / "s" / f"{bucket:02x}").exists() else b""
        assert parse_keys(data) == [k for k in keys if bucket_of(k) == bucket]
    again = SnapshotWriter(tmp_path / "s")  # a new walk in the same place starts empty
    again.finish()
    assert list((tmp_path / "s").iterdir()) == []


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x05abc", b"\x00\x00", (KEY_BYTES_MAX + 1).to_bytes(2, "big") + b"x"])
def test_a_snapshot_file_cut_short_or_damaged_does_not_parse(data):
    with pytest.raises(SnapshotError):
        parse_keys(data)


def test_summaries_of_gives_the_versions_held_now_in_name_order(tmp_path):
    entries, _ = files(1200, random.Random(3))
    write_names(tmp_path / NAMES_FILE_NAME, entries)
    index = NameIndex(tmp_path / NAMES_FILE_NAME)
    asked = [e.name.encode() for e in random.Random(4).sample(entries, 700)] + [b"dir/none"]
    rows = index.summaries_of(asked)
    whole = {row[0]: row for row in index.summaries()}
    assert rows == sorted((whole[name.decode()] for name in asked if name != b"dir/none"),
                          key=lambda row: row[0].encode())


def test_a_bucket_is_listed_to_a_peer_once_per_walk_and_again_after_the_next(tmp_path):
    entries, blobs = files(200, random.Random(5))
    nodes = cluster(tmp_path, entries, blobs)
    peer, victim = nodes[NODES[0]], nodes[NODES[2]]
    lost = random.Random(6).sample(sorted(victim.local.chunks.iter_ids()), 40)
    for chunk_id in lost:
        victim.local.chunks.delete(chunk_id)
    request = Remote(victim, peer)

    async def main():
        await peer.anti_entropy._walk_chunks(ring3(), None)
        victim_walk = await victim.anti_entropy._walk_chunks(ring3(), None)
        digests = tuple(dm.BucketDigest(b, d, n) for b, (d, n) in sorted(victim_walk.digester.digests(peer.node_id).items()))
        first = await request.sync_chunks(digests)
        second = await request.sync_chunks(digests)
        await peer.anti_entropy._walk_chunks(ring3(), None)
        third = await request.sync_chunks(digests)
        return first, second, third

    first, second, third = trio.run(main)
    differing = sorted({bucket_of(c) for c in lost})
    assert [b for b, _ in first] == differing  # 40 lost chunks: every bucket they are in, in one answer
    assert second == []  # each listed once per walk
    assert third == first  # the peer walked again, and lists them again
    listed = {c for _, ids in first for c in ids}
    assert set(lost) <= listed
    assert all(bucket_of(c) == b for b, ids in first for c in ids)


class Hostile(Remote):
    """Answers with the ids of one bucket under another bucket's number, and ids of no one."""

    def __init__(self, asker, peer, lies) -> None:
        super().__init__(asker, peer)
        self._lies = lies
        self.fetched: list[bytes] = []

    async def sync_chunks(self, digests):
        return self._lies

    async def fetch_chunk(self, chunk_id):
        self.fetched.append(chunk_id)
        return await self._peer.replica.fetch_chunk(chunk_id)


def test_ids_a_peer_lists_outside_the_bucket_it_names_or_outside_what_both_hold_are_not_fetched(tmp_path):
    entries, blobs = files(200, random.Random(7))
    nodes = cluster(tmp_path, entries, blobs)
    peer, victim = nodes[NODES[0]], nodes[NODES[2]]
    ids = sorted(victim.local.chunks.iter_ids())
    lost = ids[:30]
    for chunk_id in lost:
        victim.local.chunks.delete(chunk_id)
    stranger = b"\x07" * 32  # in no store
    named = bucket_of(lost[0])
    inside = [c for c in lost if bucket_of(c) == named]
    outside = [c for c in lost if bucket_of(c) != named]
    assert inside and outside
    hostile = Hostile(victim, peer, [(named, inside + outside + [stranger])] * 3)
    victim.anti_entropy._replicas.remote = lambda node_id: hostile

    async def main():
        walk = await victim.anti_entropy._walk_chunks(ring3(), None)
        snapshot = victim.anti_entropy._snapshots[CHUNKS]
        await victim.anti_entropy._sync_chunks(peer.node_id, ring3(), snapshot,
                                               walk.digester.digests(peer.node_id), ShortKeys())

    trio.run(main)
    assert sorted(hostile.fetched) == sorted(inside)  # the same list three times: worked once
    held = set(victim.local.chunks.iter_ids())
    assert set(inside) <= held and not set(outside) & held and stranger not in held


def test_the_under_replicated_estimate_counts_each_key_once_in_bounded_memory():
    # A heal of a tenth of two million chunks finds 200,000 keys short; a set of them grew the
    # healing node's memory with its data (~95 bytes a key, up to 6 MiB at its old cap).
    import tracemalloc

    rng = random.Random(7)
    keys = [rng.randbytes(32) for _ in range(100_000)]
    tracemalloc.start()
    try:
        short = ShortKeys()
        for key in keys + keys[::3]:  # some keys short with two peers: counted once
            short.add(key)
        held_bytes = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held_bytes < 1 << 20  # ~0.5 MiB: the exact part and a 128 KiB bitmap
    assert abs(short.total() - len(keys)) <= len(keys) // 100
    small = ShortKeys()
    for key in keys[:1000] + keys[:10]:
        small.add(key)
    small.count(5)
    assert small.total() == 1005  # exact while the keys fit
