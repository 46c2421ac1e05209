"""ls's pure decisions: which ring ranges had enough replicas answer, and how pages merge."""

from __future__ import annotations

import pytest

from p2pfs.replication.quorum_list import ListMerge, Page, coverage, list_quorum
from p2pfs.ring import Ring, RingMember
from p2pfs.storage import NameEntry, Timestamp
from p2pfs.storage.manifest import Manifest

A, B, C, D, E = "a", "b", "c", "d", "e"
WRITER = "ab" * 32


@pytest.mark.parametrize(
    "rf, w, ring_size, needed",
    [
        (3, 2, 5, 2),  # the defaults: two of three, which is r
        (3, 3, 5, 1),  # every replica acknowledged: any one of them lists the name
        (3, 1, 5, 3),  # one acknowledgement: every replica must answer
        (3, 2, 2, 1),  # a ring smaller than rf: both hold every name
        (3, 2, 1, 1),
        (3, 2, 0, 0),  # an empty ring has nothing to miss
        (1, 1, 5, 1),
    ],
)
def test_replicas_needed_per_range_are_rf_minus_w_plus_one(rf, w, ring_size, needed):
    assert list_quorum(rf, w, ring_size) == needed


# Ring shares (any unit) of the replica sets of five nodes at rf 3: ten sets, 10% each.
FIVE = {tuple(sorted(s)): 1 for s in [
    (A, B, C), (A, B, D), (A, B, E), (A, C, D), (A, C, E), (A, D, E), (B, C, D), (B, C, E), (B, D, E), (C, D, E),
]}


@pytest.mark.parametrize(
    "answered, needed, by_answers, complete",
    [
        ({A, B, C, D, E}, 2, {3: 1_000_000}, True),
        ({A, B, C, D}, 2, {2: 600_000, 3: 400_000}, True),  # one node down: every range keeps two
        ({A, B, C}, 2, {1: 300_000, 2: 600_000, 3: 100_000}, False),  # ranges of both down: 30%
        ({A, B, C}, 1, {1: 300_000, 2: 600_000, 3: 100_000}, True),  # w = 3: one replica is enough
        ({A, B}, 1, {0: 100_000, 1: 600_000, 2: 300_000}, False),  # three down: 10% unread
        (set(), 2, {0: 1_000_000}, False),
    ],
)
def test_coverage_counts_answering_replicas_per_range(answered, needed, by_answers, complete):
    found = coverage(FIVE, answered, needed)
    assert dict(found.ring_ppm_by_answers) == by_answers
    assert found.complete is complete
    assert found.short_ppm == sum(ppm for k, ppm in by_answers.items() if k < needed)


def test_coverage_weighs_ranges_by_their_size_and_never_rounds_a_short_range_away():
    sets = {(A, B): 999_999_999, (B, C): 1}
    found = coverage(sets, {A, B}, 2)
    assert found.ring_ppm_by_answers[1] == 1  # a sliver of the ring, still reported
    assert not found.complete


def test_coverage_of_an_empty_ring_is_complete():
    assert coverage({}, set(), 0).complete


def test_coverage_over_a_real_ring_matches_the_count_of_nodes_down():
    ring = Ring([RingMember(n) for n in "12345"], tokens_per_weight=64)
    sets = ring.replica_sets(3)
    assert all(len(s) == 3 for s in sets)
    assert sum(sets.values()) == 2**64
    assert coverage(sets, set("1234"), 2).complete
    assert not coverage(sets, set("123"), 2).complete
    assert coverage(sets, set("123"), 1).complete
    assert not coverage(sets, set("12"), 1).complete


def entry(name: str, wall_ms: int = 1, live: bool = True) -> NameEntry:
    manifest = Manifest(size_bytes=0, chunk_size_bytes=1 << 20, file_hash=bytes(32), created_ms=0, chunks=())
    return NameEntry(name, Timestamp(wall_ms, 0), WRITER, manifest if live else None)


def names(page: Page) -> list[str]:
    return [e.name for e in page.entries]


def test_a_merge_of_exhausted_nodes_is_the_whole_sorted_union():
    merge = ListMerge(limit=10)
    merge.add(A, [entry("a"), entry("c")], more=False)
    merge.add(B, [entry("b"), entry("c")], more=False)
    assert merge.to_read() == []
    assert merge.page() == Page(tuple([entry("a"), entry("b"), entry("c")]), "")


def test_a_merge_is_settled_only_up_to_the_slowest_node_with_more():
    merge = ListMerge(limit=10)
    merge.add(A, [entry("a"), entry("b")], more=True)  # A may hold more after "b"
    merge.add(B, [entry("a"), entry("d"), entry("f")], more=True)
    assert merge.to_read() == [A]
    assert merge.cursor(A) == "b"
    assert merge.page() == Page((entry("a"), entry("b")), "b")  # "d" could still be preceded by A's "c"
    merge.add(A, [entry("c"), entry("g")], more=False)
    assert merge.to_read() == [B]
    assert names(merge.page()) == ["a", "b", "c", "d", "f"]
    assert merge.page().next_after == "f"


def test_a_page_stops_at_its_limit_and_continues_after_its_last_name():
    merge = ListMerge(limit=2)
    merge.add(A, [entry("a"), entry("b"), entry("c")], more=False)
    assert merge.to_read() == []
    assert merge.page() == Page((entry("a"), entry("b")), "b")


def test_newer_tombstones_hide_older_versions_and_do_not_count_towards_the_limit():
    merge = ListMerge(limit=1)
    merge.add(A, [entry("a", wall_ms=1), entry("b", wall_ms=1)], more=True)
    merge.add(B, [entry("a", wall_ms=2, live=False), entry("b", wall_ms=1)], more=True)
    assert names(merge.page()) == ["b"]
    merge = ListMerge(limit=1)
    merge.add(A, [entry("a", wall_ms=1)], more=True)
    merge.add(B, [entry("a", wall_ms=2, live=False)], more=True)
    assert merge.to_read() == [A, B]  # nothing live settled yet: read further
    assert merge.page() == Page((), "a")  # a short page still moves forward


def test_a_failed_node_keeps_what_it_sent_and_stops_bounding_the_page():
    merge = ListMerge(limit=10)
    merge.add(A, [entry("a")], more=True)
    merge.add(B, [entry("b"), entry("z")], more=False)
    assert merge.to_read() == [A]
    merge.fail(A)
    assert merge.to_read() == []
    assert names(merge.page()) == ["a", "b", "z"]
    assert merge.page().next_after == ""


def test_a_merge_continues_after_the_token_it_was_given():
    merge = ListMerge(limit=5, after="m")
    assert merge.cursor(A) == "m"
    merge.add(A, [entry("n")], more=False)
    assert merge.page() == Page((entry("n"),), "")
