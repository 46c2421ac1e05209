"""Listing page by page, and what the pages of one listing add up to.

A node answers ``ls`` one page at a time (at most ``LS_PAGE_FILES_MAX`` files,
and the name to continue after), so neither it nor the client ever holds a whole
listing. Each page also says how much of the ring it was read from
(``replication/quorum_list.py``); ``Listing`` adds that up over the pages, so a
caller that streamed a million names can still say whether some may be missing
and why.
"""

from __future__ import annotations

import dataclasses
from typing import Any, AsyncIterator, Awaitable, Callable

from p2pfs import errors
from p2pfs.replication import client_messages as cm

# Files in one page: the node's cap. Larger pages cost fewer round trips, and at
# most this many entries (times the nodes asked) sit in a node's memory per request.
LS_PAGE_FILES_MAX = cm.FILES_PER_LIST_MAX
# Pages one listing may read: 10^6 pages of up to 1,000 names is far past any
# cluster; a node whose continuation never ends is cut off here.
LS_PAGES_MAX = 1_000_000


def check_page_files(limit: int) -> None:
    if not 1 <= limit <= LS_PAGE_FILES_MAX:
        raise errors.BadInput(f"a page holds 1 to {LS_PAGE_FILES_MAX} files, not {limit}")


class Pager:
    """Where each page of a listing starts and how many files it asks for; when it is over."""

    def __init__(self, after: str, limit: int | None, page_files: int) -> None:
        check_page_files(page_files)
        if limit is not None and limit < 1:
            raise errors.BadInput(f"a limit is at least 1 file, not {limit}")
        self.after = after
        self._remaining = limit
        self._page_files = page_files
        self._pages = 0
        self._over = False

    def next(self) -> tuple[str, int] | None:
        """(after, files) of the next page to ask for; None once the listing is over."""
        if self._over:
            return None
        if self._pages >= LS_PAGES_MAX:
            raise errors.PeerFault(f"a listing went on past {LS_PAGES_MAX} pages")
        size = self._page_files if self._remaining is None else min(self._page_files, self._remaining)
        return self.after, size

    def got(self, page: Any) -> None:
        self._pages += 1
        if self._remaining is not None:
            self._remaining -= len(page.files)
        if not page.next_after or self._remaining == 0:
            self._over = True
            return
        if page.next_after <= self.after:
            raise errors.PeerFault("a node's listing did not move forward")
        self.after = page.next_after


async def listing_pages(
    ls: Callable[..., Awaitable[Any]], prefix: str, after: str, limit: int | None, page_files: int
) -> AsyncIterator[Any]:
    """Pages from ``ls(prefix, after=..., limit=...)`` until the end, or until ``limit`` files."""
    pager = Pager(after, limit, page_files)
    while (request := pager.next()) is not None:
        page = await ls(prefix, after=request[0], limit=request[1])
        pager.got(page)
        yield page


def short_fraction(page: Any) -> float:
    """The share of the ring whose replicas answered fewer than needed for this page."""
    short_ppm = sum(c.ring_ppm for c in page.coverage if c.replicas < page.replicas_needed)
    return short_ppm / cm.RING_PPM


@dataclasses.dataclass(slots=True)
class Listing:
    """What a listing's pages add up to: complete only if every page was.

    ``unanswered`` holds one reason per node (at most the cluster's members).
    """

    complete: bool = True
    replicas_needed: int = 0
    short_ring_fraction: float = 0.0
    unanswered: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, page: Any) -> None:
        self.complete = self.complete and page.complete
        self.replicas_needed = max(self.replicas_needed, page.replicas_needed)
        self.short_ring_fraction = max(self.short_ring_fraction, short_fraction(page))
        for node in page.unanswered:
            self.unanswered.setdefault(node.node_id, node.reason)

    def warning(self) -> str:
        """Why names may be missing, in words (empty when the listing is complete)."""
        if self.complete:
            return ""
        share = self.short_ring_fraction * 100
        share_text = f"{share:.0f}%" if share >= 1 else "under 1%"
        nodes = "; ".join(f"{node_id[:12]}: {reason}" for node_id, reason in sorted(self.unanswered.items()))
        return (f"names may be missing: ranges covering ~{share_text} of the ring were answered by fewer "
                f"than {self.replicas_needed} of their replicas (nodes not answering: {nodes or 'none'})")
