"""Hand-off of names asks each owner about a batch with pages of its index, not name by name.

A leave handed off a million names with one GetName per name per owner (two million
requests on a 3-node network, and as many PutNames as owners lacked). These tests count the
requests an owner gets, and check that what is handed off and dropped is what the
name-by-name hand-off did.
"""

from __future__ import annotations

import dataclasses
import math
import random
import types

import pytest
import trio

from p2pfs.replication import handoff
from p2pfs.replication.background import RepairPacer
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.errors import BadReply
from p2pfs.replication.handoff import HandOff, Pusher
from p2pfs.replication.hints import HintKind
from p2pfs.ring import Ring, RingMember
from p2pfs.storage import Timestamp, chunk_id_of
from test_data_scale import NODES, NOW_MS, ManualClock, cluster, files, inline


class Counting:
    """A replica that counts the requests it is sent."""

    def __init__(self, replica) -> None:
        self._replica = replica
        self.node_id = replica.node_id
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        method = getattr(self._replica, name)

        async def counted(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            return await method(*args)

        return counted


def names_only(tmp_path, entries):
    """Three nodes holding ``entries`` and no chunks (a names hand-off moves no chunk)."""
    for node_id in NODES:
        (tmp_path / node_id[:1]).mkdir()
    return cluster(tmp_path, entries, [])


def hand_off_from(nodes, leaving: str) -> tuple[HandOff, dict[str, Counting]]:
    node = nodes[leaving]
    counting = {n: Counting(nodes[n].replica) for n in NODES if n != leaving}
    view = types.SimpleNamespace(node_id=leaving, alive=lambda: set(NODES))
    pacer = RepairPacer(1 << 40, ManualClock())
    hand = HandOff(config=ReplicationConfig(), view=view, replicas=lambda n: counting[n], local=node.local,
                   pusher=Pusher(node.local, pacer, inline), offload=inline)
    return hand, counting


def test_a_batch_of_names_costs_each_owner_a_few_pages_and_drops_what_every_owner_holds(tmp_path, monkeypatch):
    monkeypatch.setattr(handoff, "HANDOFF_BATCH_NAMES", 500)
    entries, _ = files(1200, random.Random(21))
    nodes = names_only(tmp_path, entries)
    leaving, lacking = NODES[0], NODES[2]
    missing = entries[::7]
    for entry in missing:  # an owner that lacks some names gets them
        nodes[lacking].local.names.remove_if(entry.name, entry.version, entry.writer)
    without = Ring([RingMember(n) for n in NODES[1:]])
    hand, counting = hand_off_from(nodes, leaving)
    names = [e.name for e in entries]
    dropped = trio.run(hand.names, without, names)
    assert dropped == len(entries)
    assert nodes[leaving].local.names.summaries() == []
    for owner in NODES[1:]:
        assert len(nodes[owner].local.names.summaries()) == len(entries)
        calls = counting[owner].calls
        # 3 batches of at most 500 consecutive names: a page of 1,000 or two each.
        assert calls.get("list_names", 0) <= 3 * 2, calls
        assert calls.get("get_name", 0) == 0, calls
    assert counting[lacking].calls["put_name"] == len(missing)
    assert "put_name" not in counting[NODES[1]].calls


def test_names_far_apart_are_asked_one_by_one_after_a_bounded_number_of_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(handoff, "LIST_PAGE_NAMES", 10)
    entries, _ = files(600, random.Random(22))
    nodes = names_only(tmp_path, entries)
    hand, counting = hand_off_from(nodes, NODES[0])
    sparse = [e.name for e in entries[::30]]  # 20 names, each 30 apart: 3 of a page of 10 each
    owner = counting[NODES[1]]
    found = trio.run(hand._owner_entries, owner, sparse)
    assert sorted(found) == sparse
    assert all(found[name].name == name for name in sparse)
    assert owner.calls["list_names"] == 1 + len(sparse) // handoff.NAMES_PER_PAGE_READ
    # Three pages of ten reached the 30th name; every later name was asked by itself.
    assert owner.calls["get_name"] == sum(1 for name in sparse if name > entries[29].name) == len(sparse) - 1


class OutOfOrder:
    node_id = NODES[1]

    async def list_names(self, prefix, start_after, limit):
        return [types.SimpleNamespace(name="dir/b"), types.SimpleNamespace(name="dir/a")], True


def test_a_page_out_of_order_is_the_owners_fault(tmp_path):
    entries, _ = files(3, random.Random(23))
    nodes = names_only(tmp_path, entries)
    hand, _ = hand_off_from(nodes, NODES[0])
    with pytest.raises(BadReply):
        trio.run(hand._owner_entries, OutOfOrder(), ["dir/a", "dir/c"])


def transactions(statements: list[str]) -> int:
    """Transactions in a statement trace: each BEGIN..COMMIT, and each write outside one (autocommit)."""
    count, inside = 0, False
    for statement in statements:
        verb = statement.split(None, 1)[0].upper()
        if verb == "BEGIN":
            inside = True
        elif verb in ("COMMIT", "ROLLBACK"):
            count, inside = count + (verb == "COMMIT"), False
        elif verb in ("INSERT", "DELETE", "UPDATE") and not inside:
            count += 1
    return count


def test_a_hand_off_of_n_names_commits_once_a_batch_and_keeps_a_name_rewritten_meanwhile(tmp_path, monkeypatch):
    # Name by name, each drop was its own commit (an fsync each: a leave of a million names
    # made a million); a batch of names is now dropped in one.
    monkeypatch.setattr(handoff, "HANDOFF_BATCH_NAMES", 100)
    entries, _ = files(450, random.Random(24))
    nodes = names_only(tmp_path, entries)
    leaving = nodes[NODES[0]]
    newer = dataclasses.replace(entries[10], version=Timestamp(entries[10].version.wall_ms + 1, 0))
    statements: list[str] = []

    async def offload(fn, *args):
        if fn is handoff._drop_names_unless_hinted and newer.name in {e.name for e in args[1]}:
            leaving.local.names.apply(newer)  # written here after the batch was handed off
            statements.clear()
            leaving.local.names._conn.set_trace_callback(statements.append)
        return fn(*args)

    hand, _ = hand_off_from(nodes, NODES[0])
    hand._offload = offload
    leaving.local.names._conn.set_trace_callback(statements.append)
    dropped = trio.run(hand.names, Ring([RingMember(n) for n in NODES[1:]]), [e.name for e in entries])
    leaving.local.names._conn.set_trace_callback(None)
    assert dropped == len(entries) - 1
    assert [row[0] for row in leaving.local.names.summaries()] == [newer.name]  # the newer version stays
    # From the first batch's drop on, one commit per batch of 100 (the newer write's own commit
    # came before the trace restarted).
    assert transactions(statements) == math.ceil(len(entries) / 100) == 5


def test_a_hand_off_costs_a_few_worker_thread_calls_a_batch_and_keeps_what_is_hinted(tmp_path, monkeypatch):
    # A leave's hand-off asked the hints, and read each name, one worker-thread call per key:
    # two million chunks and a million names were three million thread hops (and hint queries),
    # ~7 ms a chunk on a loaded machine (748 s for 100,000 chunks). Now a batch's keys are
    # asked about together, and what is hinted for a returning owner is still kept.
    monkeypatch.setattr(handoff, "HANDOFF_BATCH_IDS", 100)
    monkeypatch.setattr(handoff, "HANDOFF_BATCH_NAMES", 100)
    entries, blobs = files(250, random.Random(25))
    for node_id in NODES:
        (tmp_path / node_id[:1]).mkdir()
    nodes = cluster(tmp_path, entries, blobs)
    leaving = nodes[NODES[0]]
    ids = sorted(chunk_id_of(blob) for blob in blobs)
    hinted_chunk, hinted_name = ids[123], entries[77].name
    leaving.local.hints.add(NODES[1], HintKind.CHUNK, hinted_chunk, NOW_MS)
    leaving.local.hints.add(NODES[2], HintKind.NAME, hinted_name.encode(), NOW_MS)
    calls: list = []

    async def offload(fn, *args):
        calls.append(fn)
        return fn(*args)

    hand, _ = hand_off_from(nodes, NODES[0])
    hand._offload = offload
    without = Ring([RingMember(n) for n in NODES[1:]])
    assert trio.run(hand.chunks, without, ids) == (len(ids) - 1, 0)
    assert len(calls) <= 2 * math.ceil(len(ids) / 100) == 10
    assert sorted(leaving.local.chunks.iter_ids()) == [hinted_chunk]
    calls.clear()
    assert trio.run(hand.names, without, [e.name for e in entries]) == len(entries) - 1
    assert len(calls) <= 2 * math.ceil(len(entries) / 100) == 6
    assert [row[0] for row in leaving.local.names.summaries()] == [hinted_name]
