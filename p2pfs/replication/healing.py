"""Pure parts of self-healing: buckets, digests, who should hold what, pacing.

Anti-entropy compares, for each pair of replicas, compact digests of what both
should hold, bucket by bucket, and exchanges lists only for buckets that differ
(a one-level Merkle tree: Dynamo section 4.7 uses a full tree per range; with
``BUCKETS`` leaves a round costs one small message per peer when nothing
differs, and one bucket's ids when something does).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Iterable, Iterator

from p2pfs.ring import HASH_BITS, Ring, key_hash
from p2pfs.storage import Timestamp

# Leaves of the digest tree. A differing bucket costs its id list (~1/BUCKETS of
# what the pair shares); 256 keeps the digest message near 10 KiB.
BUCKETS = 256
BUCKET_SHIFT = HASH_BITS - 8  # a key's bucket: the top 8 bits of its ring position
DIGEST_BYTES = 16


def bucket_of(key: bytes) -> int:
    return key_hash(key) >> BUCKET_SHIFT


def digest_of(items: Iterable[bytes]) -> bytes:
    """Order-independent digest of a bucket's items (hashed in sorted order)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for item in sorted(items):
        h.update(len(item).to_bytes(4, "big"))
        h.update(item)
    return h.digest()


def bucket_digests(items_by_bucket: dict[int, list[bytes]]) -> dict[int, tuple[bytes, int]]:
    return {b: (digest_of(items), len(items)) for b, items in items_by_bucket.items() if items}


def name_item(name: str, version: Timestamp, writer: str, tombstone: bool) -> bytes:
    """What a name's replicas must agree on: the name and which version they hold."""
    return b"%s\x00%d\x00%d\x00%s\x00%d" % (
        name.encode("utf-8"), version.wall_ms, version.logical, writer.encode(), tombstone
    )


def shared_keys(
    ring: Ring, rf: int, me: str, keys: Iterable[bytes]
) -> tuple[dict[str, list[bytes]], list[bytes]]:
    """Split held keys into, per peer, the keys we both replicate, and keys that are not ours."""
    by_peer: dict[str, list[bytes]] = defaultdict(list)
    not_ours: list[bytes] = []
    for key in keys:
        preferred = ring.preference_list(key, rf)
        if me not in preferred:
            not_ours.append(key)
            continue
        for peer in preferred:
            if peer != me:
                by_peer[peer].append(key)
    return by_peer, not_ours


def by_bucket(keys: Iterable[bytes], item_of=lambda key: key) -> dict[int, list[bytes]]:
    grouped: dict[int, list[bytes]] = defaultdict(list)
    for key in keys:
        grouped[bucket_of(key)].append(item_of(key))
    return grouped


def differing_buckets(
    ours: dict[int, tuple[bytes, int]], theirs: dict[int, tuple[bytes, int]]
) -> list[int]:
    """Buckets where the two sides hold different sets (absent = empty)."""
    return sorted(b for b in set(ours) | set(theirs) if ours.get(b, (b"", 0))[0] != theirs.get(b, (b"", 0))[0])


def split_ids(concatenated: bytes, size: int = 32) -> Iterator[bytes]:
    if len(concatenated) % size:
        raise ValueError(f"id list of {len(concatenated)} bytes is not a multiple of {size}")
    for start in range(0, len(concatenated), size):
        yield concatenated[start : start + size]


class Pacer:
    """A token bucket in bytes, with an explicit clock: how long to wait before sending.

    Bounds the bandwidth of repair so that it never starves foreground puts and gets.
    """

    def __init__(self, rate_bytes_per_s: float, burst_bytes: float) -> None:
        assert rate_bytes_per_s > 0 and burst_bytes > 0
        self._rate = rate_bytes_per_s
        self._burst = burst_bytes
        self._tokens = burst_bytes
        self._at_s: float | None = None

    def delay_s(self, size_bytes: int, now_s: float) -> float:
        """Take ``size_bytes``; return how long the caller must wait first (0 if none)."""
        if self._at_s is not None:
            self._tokens = min(self._burst, self._tokens + (now_s - self._at_s) * self._rate)
        self._at_s = now_s
        self._tokens -= size_bytes
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


class BucketDigester:
    """``bucket_digests`` per peer, fed one item at a time in increasing order.

    ``digest_of`` hashes a bucket's items sorted; a node that walks its keys in
    order (chunk ids from the store, names from the index) feeds each item to its
    bucket's running hash as it comes, so a pass over millions of keys holds one
    hash state per (peer, bucket), not the items, and gives the digests an older
    peer computes from whole lists, byte for byte.
    """

    def __init__(self) -> None:
        # (peer, bucket) -> [running hash, item count, last item]
        self._states: dict[tuple[str, int], list] = {}

    def add(self, peer: str, bucket: int, item: bytes) -> None:
        state = self._states.get((peer, bucket))
        if state is None:
            state = self._states[(peer, bucket)] = [hashlib.blake2b(digest_size=DIGEST_BYTES), 0, b""]
        assert item > state[2], "items must come in increasing order (digest_of hashes them sorted)"
        state[0].update(len(item).to_bytes(4, "big"))
        state[0].update(item)
        state[1] += 1
        state[2] = item

    def peers(self) -> set[str]:
        return {peer for peer, _ in self._states}

    def all_digests(self) -> dict[str, dict[int, tuple[bytes, int]]]:
        """``digests`` of every peer, in one pass over the states."""
        found: dict[str, dict[int, tuple[bytes, int]]] = {}
        for (peer, bucket), state in self._states.items():
            found.setdefault(peer, {})[bucket] = (state[0].digest(), state[1])
        return found

    def digests(self, peer: str) -> dict[int, tuple[bytes, int]]:
        """What ``bucket_digests`` gives for the items fed for ``peer``."""
        return {bucket: (state[0].digest(), state[1]) for (p, bucket), state in self._states.items() if p == peer}


def buckets_to_answer(
    ours: dict[int, tuple[bytes, int]], theirs: dict[int, tuple[bytes, int]], answered: set[int], keys_max: int,
    keys_wanted: int | None = None,
) -> list[int]:
    """The buckets one SyncChunks or SyncNames answer lists, in increasing order.

    Those whose digests differ and that were not listed to this peer before from the same
    walk (``answered``: the asker has worked them since, which the walk cannot show), as many
    as fit in ``keys_wanted`` keys by our counts (``keys_max`` when not given), and the first
    of them whatever its size up to ``keys_max``: an answer's cost and memory follow what it
    lists, and the asker comes back for the rest. A bucket over ``keys_max`` on its own is
    never listed, since no answer could carry it; the buckets after it still are (an older
    node answered nothing at all then, and the rest waited behind it for good).
    """
    wanted = keys_max if keys_wanted is None else min(keys_wanted, keys_max)
    picked, total = [], 0
    for bucket in differing_buckets(ours, theirs):
        count = ours.get(bucket, (b"", 0))[1]
        if bucket in answered or count > keys_max:
            continue
        if picked and total + count > wanted:
            break
        picked.append(bucket)
        total += count
    return picked


def placed_on_both(ring: Ring, rf: int, me: str, peer: str, bucket: int, keys: Iterable[bytes]) -> list[bytes]:
    """The ``keys`` that lie in ``bucket`` and that ``ring`` places on both ``me`` and ``peer``.

    Applied to what a peer lists, so that a peer (hostile, or with another ring for a
    moment) cannot make this node fetch or push keys it does not share with it; applied
    to this node's own snapshot, to the keys it shares with that peer.
    """
    shared = []
    for key in keys:
        if key_hash(key) >> BUCKET_SHIFT != bucket:
            continue
        preferred = ring.preference_list(key, rf)
        if me in preferred and peer in preferred:
            shared.append(key)
    return shared
