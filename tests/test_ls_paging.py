"""The client's paging of ls (no network): page sizes, --limit, the end, a node that loops,
and what the pages of one listing add up to."""

from __future__ import annotations

import pytest
import trio

from p2pfs import errors
from p2pfs.client.listing import Listing, Pager, listing_pages
from p2pfs.replication import messages as dm

NAMES = [f"n{i:02d}" for i in range(10)]


def info(name: str) -> dm.FileInfo:
    return dm.FileInfo(name, 1, 0, 0, 0)


def reply(files: list[str], next_after: str, *, answered: int = 3, unanswered: tuple = ()) -> dm.ListFilesReply:
    return dm.ListFilesReply(tuple(info(n) for n in files), answered >= 2, next_after, 2,
                             (dm.RangeAnswers(answered, 1_000_000),), unanswered)


class FakeCluster:
    """A node's ls over NAMES: at most ``limit`` names after ``after``."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def ls(self, prefix: str, *, after: str, limit: int) -> dm.ListFilesReply:
        self.asked.append((after, limit))
        rest = [n for n in NAMES if n > after]
        page = rest[:limit]
        return reply(page, page[-1] if len(rest) > limit else "")


def walk(limit: int | None, page_files: int, after: str = "") -> tuple[list[str], list[tuple[str, int]]]:
    fake = FakeCluster()

    async def main() -> list[str]:
        return [f.name async for page in listing_pages(fake.ls, "", after, limit, page_files) for f in page.files]

    return trio.run(main), fake.asked


@pytest.mark.parametrize(
    "limit, page_files, listed, asked",
    [
        (None, 4, NAMES, [("", 4), ("n03", 4), ("n07", 4)]),
        (None, 10, NAMES, [("", 10)]),
        (5, 4, NAMES[:5], [("", 4), ("n03", 1)]),  # the last page asks only for what is left
        (3, 4, NAMES[:3], [("", 3)]),
    ],
)
def test_pages_follow_the_continuation_and_stop_at_the_limit_or_the_end(limit, page_files, listed, asked):
    assert walk(limit, page_files) == (listed, asked)


def test_a_listing_continues_after_a_given_name():
    assert walk(None, 100, after="n07") == (NAMES[8:], [("n07", 100)])


def test_a_node_whose_continuation_does_not_move_forward_is_a_peer_fault():
    pager = Pager("", None, 2)
    pager.got(reply(["a", "b"], "b"))
    with pytest.raises(errors.PeerFault):
        pager.got(reply([], "a"))


@pytest.mark.parametrize("limit, page_files", [(0, 10), (None, 0), (None, dm.FILES_PER_LIST_MAX + 1)])
def test_limits_outside_what_a_page_holds_are_bad_input(limit, page_files):
    with pytest.raises(errors.BadInput):
        Pager("", limit, page_files)


def test_a_listing_is_complete_only_if_every_page_was_and_says_why_not():
    listing = Listing()
    listing.add(reply(["a"], "a"))
    assert listing.complete and listing.warning() == ""
    short = dm.ListFilesReply((), False, "", 2, (dm.RangeAnswers(1, 300_000), dm.RangeAnswers(2, 700_000)),
                              (dm.Unanswered("d" * 64, "dead (membership)"),))
    listing.add(short)
    listing.add(reply(["b"], ""))
    assert not listing.complete
    assert listing.short_ring_fraction == pytest.approx(0.3)
    assert listing.warning() == (
        "names may be missing: ranges covering ~30% of the ring were answered by fewer than 2 of their "
        "replicas (nodes not answering: dddddddddddd: dead (membership))")
