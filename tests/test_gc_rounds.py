"""A GC round reads the other nodes' names only when this node holds something to judge.

Every round read every name entry of every node (~42 MB per node and round at 100,000
names on 3 nodes), although a chunk that a name on this node refers to is never garbage.
These tests count the name pages each node is asked for, and check that what is removed
is still exactly the chunks no name anywhere refers to.
"""

from __future__ import annotations

import dataclasses
import os
import random

import trio

from p2pfs.replication import gc
from p2pfs.replication.errors import ReplicaDown
from test_data_scale import NODES, CountingOffload, cluster, files
from test_handoff_batch import Counting

BATCH = 100


class Down:
    node_id = NODES[2]

    async def list_names(self, prefix, start_after, limit):
        raise ReplicaDown("not answering")


def counted(nodes, node_id: str) -> dict[str, Counting]:
    """Make ``node_id``'s GC reach every replica (its own too) through a request counter."""
    counting = {n: Counting(nodes[n].replica) for n in NODES}
    nodes[node_id].gc._replicas = lambda n: counting[n]
    return counting


def test_a_round_with_every_chunk_referenced_here_reads_no_other_nodes_names(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "GC_BATCH_IDS", BATCH)
    entries, blobs = files(300, random.Random(31))
    offload = CountingOffload()
    nodes = cluster(tmp_path, entries, blobs, offload)
    counting = counted(nodes, NODES[0])
    removed, _ = trio.run(nodes[NODES[0]].gc.round)
    assert removed == 0
    assert counting[NODES[0]].calls["list_names"] == 300 // gc.LIST_PAGE_NAMES + 1  # its own index, once
    assert "list_names" not in counting[NODES[1]].calls and "list_names" not in counting[NODES[2]].calls
    assert max(offload.batches) <= BATCH


def test_garbage_is_removed_exactly_and_a_chunk_referenced_only_elsewhere_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "GC_BATCH_IDS", BATCH)
    entries, blobs = files(300, random.Random(32))
    garbage = [os.urandom(20) for _ in range(200)]
    nodes = cluster(tmp_path, entries, blobs + garbage)
    node = nodes[NODES[0]]
    elsewhere = entries[:30]  # these names are held by the other nodes only
    for entry in elsewhere:
        node.local.names.remove_if(entry.name, entry.version, entry.writer)
    counting = counted(nodes, NODES[0])
    removed, _ = trio.run(node.gc.round)
    held = set(node.local.chunks.iter_ids())
    referenced = {ref.chunk_id for e in entries for ref in e.manifest.chunks}
    assert held == referenced  # exact: every candidate judged against every name, no filter's luck
    assert removed == len(garbage)
    for peer in NODES[1:]:
        assert counting[peer].calls["list_names"] >= 1  # with candidates, every node's names count


def test_past_the_candidate_bound_the_whole_store_is_judged_against_the_filter(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "GC_BATCH_IDS", BATCH)
    monkeypatch.setattr(gc, "GC_CANDIDATES_MAX", 50)
    entries, blobs = files(300, random.Random(33))
    garbage = [os.urandom(20) for _ in range(200)]
    nodes = cluster(tmp_path, entries, blobs + garbage)
    node = nodes[NODES[0]]
    for entry in entries[:100]:  # 200 chunks referenced only by the other nodes' names
        node.local.names.remove_if(entry.name, entry.version, entry.writer)
    removed, _ = trio.run(node.gc.round)
    held = set(node.local.chunks.iter_ids())
    referenced = {ref.chunk_id for e in entries for ref in e.manifest.chunks}
    assert referenced <= held
    assert len(garbage) - 3 <= removed <= len(garbage)  # the filter may keep a few, never a referenced one


def test_candidates_are_kept_when_a_node_does_not_answer_and_young_chunks_are_no_candidates(tmp_path):
    entries, blobs = files(50, random.Random(34))
    garbage = [os.urandom(20) for _ in range(20)]
    nodes = cluster(tmp_path, entries, blobs + garbage)
    node = nodes[NODES[0]]
    counting = counted(nodes, NODES[0])
    counting[NODES[2]] = Down()
    removed, _ = trio.run(node.gc.round)
    assert removed == 0 and len(list(node.local.chunks.iter_ids())) == len(blobs) + len(garbage)
    # Written within the grace (every file here is stamped NOW_MS): nothing to judge, nothing read.
    node.gc.config = dataclasses.replace(node.gc.config, chunk_gc_grace_s=3600.0)
    counting = counted(nodes, NODES[0])
    removed, _ = trio.run(node.gc.round)
    assert removed == 0
    assert "list_names" not in counting[NODES[1]].calls and "list_names" not in counting[NODES[2]].calls
