"""What a walk keeps of the keys placed elsewhere (hand-off's work) is their names, not whole rows.

After a ring change a walk can find up to ``NOT_OURS_KEYS_PER_ROUND_MAX`` (65,536) names
placed elsewhere; it kept each as a decoded row (name, version, writer, tombstone), about
three times the name's memory, and the round then copied the names out of them.
"""

from __future__ import annotations

import random
import tracemalloc

import trio

from p2pfs.ring import Ring, RingMember
from test_data_scale import NODES, cluster, files

NAMES = 2000


def test_a_walk_keeps_only_the_names_placed_elsewhere_and_little_memory_per_name(tmp_path):
    entries, _ = files(NAMES, random.Random(41))
    for node_id in NODES:
        (tmp_path / node_id[:1]).mkdir()
    node = cluster(tmp_path, entries, [])[NODES[0]]
    elsewhere = Ring([RingMember(n) for n in NODES[1:]])  # this node is out of the ring: nothing is its own
    tracemalloc.start()
    walk = trio.run(node.anti_entropy._walk_names, elsewhere, set(NODES))
    kept_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert walk.not_ours == [e.name for e in entries]
    # What stays after the walk, per name: ~155 bytes with a name each (a 59-byte str, its list
    # slot, the walk's other state), ~375 with a row each.
    assert kept_bytes / NAMES < 200, kept_bytes / NAMES
