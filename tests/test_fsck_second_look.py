"""fsck reads every node's keys a page at a time, at different moments: a key that moves
between two of those reads (a leaving node hands it to its new owner and drops its copy)
must not be reported at fault. Real fsck code over in-memory replicas; the move happens
between the reads the scan makes, which is what a live hand-off does at random."""

from __future__ import annotations

import pytest
import trio

from p2pfs.replication import fsck
from p2pfs.replication.config import ReplicationConfig
from p2pfs.storage import ChunkRef, Manifest, NameEntry, Timestamp
from p2pfs.storage.manifest import chunk_id_of

WRITER = "a" * 64
# Node ids in the order the scan reads them: the new owner before the leaver.
OWNER_1, OWNER_2, NEW_OWNER, LEAVER = ("1" * 64, "2" * 64, "3" * 64, "4" * 64)
CONTENT = b"moving chunk"
CHUNK_ID = chunk_id_of(CONTENT)


def entry(name: str) -> NameEntry:
    manifest = Manifest((ChunkRef(CHUNK_ID, len(CONTENT)),), len(CONTENT), chunk_id_of(CONTENT), 0, 4096)
    return NameEntry(name, Timestamp(5, 0), WRITER, manifest)


class Node:
    """One node's names and chunk ids, answering the reads fsck makes."""

    def __init__(self, node_id: str, cluster: "Cluster") -> None:
        self.node_id = node_id
        self.cluster = cluster
        self.names: dict[str, NameEntry] = {}
        self.chunks: set[bytes] = set()

    async def list_names(self, prefix, start_after, limit):
        entries = sorted((e for n, e in self.names.items() if n > start_after), key=lambda e: e.name)
        self.cluster.read(self.node_id, "names")
        return entries[:limit], len(entries) > limit

    async def list_chunks(self, start_after, limit):
        ids = sorted(i for i in self.chunks if i > start_after)
        self.cluster.read(self.node_id, "chunks")
        return ids[:limit], [], len(ids) > limit

    async def get_name(self, name):
        return self.names.get(name)

    async def has_chunks(self, chunk_ids):
        return tuple(i in self.chunks for i in chunk_ids)


class Ring:
    members = (OWNER_1, OWNER_2, NEW_OWNER)

    def __len__(self) -> int:
        return len(self.members)

    def preference_list(self, key, rf):
        return list(self.members[:rf])


class View:
    """The ring without the leaver, who is alive and leaving (as every node sees it once told)."""

    def ring(self):
        return Ring()

    def alive(self):
        return {OWNER_1, OWNER_2, NEW_OWNER, LEAVER}

    def everyone(self, ring):
        return sorted(set(ring.members) | self.alive())


class Cluster:
    """Four nodes; once the scan has read the new owner's page of ``what``, the leaver hands
    the key over and drops its copy, before the scan reads the leaver."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.nodes = {node_id: Node(node_id, self) for node_id in (OWNER_1, OWNER_2, NEW_OWNER, LEAVER)}
        for node_id in (OWNER_1, OWNER_2, LEAVER):
            self.nodes[node_id].names["moving"] = entry("moving")
            self.nodes[node_id].chunks.add(CHUNK_ID)
        self.moved = False

    def read(self, node_id: str, what: str) -> None:
        if node_id == NEW_OWNER and what == self.what and not self.moved:
            new_owner, leaver = self.nodes[NEW_OWNER], self.nodes[LEAVER]
            new_owner.names.update(leaver.names)
            new_owner.chunks |= leaver.chunks
            leaver.names.clear()
            leaver.chunks.clear()
            self.moved = True


def check(cluster: Cluster):
    checker = fsck.Fsck(config=ReplicationConfig(rf=3), view=View(), replicas=lambda n: cluster.nodes[n])
    return trio.run(checker.run)


@pytest.mark.parametrize("what", ["names", "chunks"])
def test_a_key_handed_off_between_two_page_reads_is_not_under_replicated(what):
    cluster = Cluster(what)
    report = check(cluster)
    assert cluster.moved
    assert (report.names_checked, report.chunks_checked) == (1, 1)
    assert (report.names_under_replicated, report.chunks_under_replicated) == (0, 0), report.problems
    assert report.problems == ()


def test_a_name_truly_short_of_copies_is_still_reported():
    cluster = Cluster("nothing moves")
    cluster.nodes[LEAVER].names.clear()
    cluster.nodes[LEAVER].chunks.clear()
    report = check(cluster)
    assert report.names_under_replicated == 1
    assert report.chunks_under_replicated == 1
    assert {(p.what, p.kind) for p in report.problems} == {("names", "under_replicated"),
                                                         ("chunks", "under_replicated")}


def test_past_the_second_look_bound_the_scan_verdict_stands(monkeypatch):
    monkeypatch.setattr(fsck, "FSCK_SECOND_LOOK_NAMES_MAX", 0)
    monkeypatch.setattr(fsck, "FSCK_SECOND_LOOK_CHUNKS_MAX", 0)
    cluster = Cluster("names")
    report = check(cluster)
    assert report.names_under_replicated == 1
