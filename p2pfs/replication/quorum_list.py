"""A listing that never lies: which ring ranges the answers cover, and which page is settled.

``ls`` asks every node for the names it holds (names are spread over the ring
by hash, so every range holds some). Two decisions are made here, without I/O:

* **Coverage.** A put acknowledged by ``w`` of a range's ``rf`` replicas holds
  the name on at least ``w`` of them, so any ``rf - w + 1`` of them include one
  that holds it (the read side of R + W > RF, Dynamo §4.5). A range whose
  replica set answered with at least that many nodes is listed completely; a
  range short of it may be missing names, and the answer says which share of the
  ring that is and which nodes did not answer. With the defaults (rf 3, w 2)
  two of three replicas are needed, which is the read quorum r.
  Stand-ins holding a name under a hint are asked as well (every node is), so
  they only add names; the rule does not rely on them.
* **Paging.** Each node pages through its own index in name order. The merge
  of those streams is settled up to the smallest "last name seen" of the nodes
  that have more (beyond it, a node not yet read that far might hold a name);
  ``ListMerge`` keeps one page per node, says which nodes to read further, and
  cuts a page of at most ``limit`` live names with the name to continue after.
  Memory per request: about nodes x (limit + one node page) entries.

No trio, no clock: tests/test_ls_quorum.py drives both with tables.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from p2pfs.replication.messages import RING_PPM  # the unit of the coverage figures on the wire
from p2pfs.replication.quorum import quorum_size
from p2pfs.storage import NameEntry


def list_quorum(rf: int, w: int, ring_size: int) -> int:
    """Replicas of one range that must answer for its names to be listed in full: rf - w + 1.

    In a ring smaller than rf both shrink to the ring (a put then needs
    ``quorum_size(w, ring_size)`` acknowledgements of ``min(rf, ring_size)`` replicas).
    """
    replicas = min(rf, ring_size)
    if replicas == 0:
        return 0
    return replicas - quorum_size(w, ring_size) + 1


@dataclasses.dataclass(frozen=True, slots=True)
class Coverage:
    """How many replicas answered for how much of the ring.

    ``ring_ppm_by_answers[k]``: parts per million of the ring whose replica set
    had ``k`` members answer.
    """

    needed: int
    ring_ppm_by_answers: Mapping[int, int]

    @property
    def short_ppm(self) -> int:
        return sum(ppm for answers, ppm in self.ring_ppm_by_answers.items() if answers < self.needed)

    @property
    def complete(self) -> bool:
        return self.short_ppm == 0


def coverage(replica_sets: Mapping[tuple[str, ...], int], answered: Iterable[str], needed: int) -> Coverage:
    """Which ranges had ``needed`` of their replicas answer.

    ``replica_sets`` maps each set of replicas to the share of the circle it holds
    (``Ring.replica_sets``, in positions; any unit works, the shares are
    normalised); ``answered`` are the nodes that answered every page asked of
    them. An empty ring is trivially covered.
    """
    answered = set(answered)
    total = sum(replica_sets.values())
    by_answers: dict[int, int] = {}
    for replicas, size in replica_sets.items():
        count = sum(1 for n in replicas if n in answered)
        by_answers[count] = by_answers.get(count, 0) + size
    return Coverage(needed, _shares_in_ppm(by_answers, total))


def coverage_of_shares(shares_by_answers: Mapping[int, float], needed: int) -> Coverage:
    """``coverage`` from the share of keys by how many of their replicas answered
    (``Ring.answered_shares``, which knows how the ring places replicas)."""
    return Coverage(needed, _shares_in_ppm(shares_by_answers, sum(shares_by_answers.values())))


def _shares_in_ppm(sizes: Mapping[int, float], total: float) -> dict[int, int]:
    """Sizes in parts per million of ``total``; a non-zero share never rounds down to 0."""
    if total == 0:
        return {}
    return {k: max(1, round(size * RING_PPM / total)) if size else 0 for k, size in sorted(sizes.items())}


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """What one ls answer carries: live entries in name order, and where the next page starts.

    ``next_after`` is the name to continue after, "" when the listing is over.
    """

    entries: tuple[NameEntry, ...]
    next_after: str


class ListMerge:
    """Merges the name-ordered pages of several nodes into one page of ``limit`` live names.

    Feed each node's pages with ``add``; ``fail`` a node that stopped answering.
    ``to_read`` says which nodes' next page is needed; once it is empty, ``page``
    cuts the answer. A node's entries count only after ``after`` (the caller asks
    from there).
    """

    def __init__(self, limit: int, after: str = "") -> None:
        assert limit >= 1
        self.limit = limit
        self.after = after
        self._newest: dict[str, NameEntry] = {}
        # Per node still read from: the last name it sent (it has more), or None (it has no more).
        self._horizon: dict[str, str | None] = {}

    def add(self, node_id: str, entries: list[NameEntry], more: bool) -> None:
        """A page from ``node_id``: entries after its previous page, in name order."""
        assert not more or entries, "a page that says more must move forward"
        for entry in entries:
            held = self._newest.get(entry.name)
            if held is None or entry.supersedes(held):
                self._newest[entry.name] = entry
        self._horizon[node_id] = entries[-1].name if more else None

    def fail(self, node_id: str) -> None:
        """``node_id`` stopped answering: what it sent stays, it no longer bounds the page."""
        self._horizon.pop(node_id, None)

    def cursor(self, node_id: str) -> str:
        """Where ``node_id``'s next page starts (after this name)."""
        return self._horizon.get(node_id) or self.after

    def _boundary(self) -> str | None:
        """Every name up to this one is settled; None: every name is."""
        open_ends = [h for h in self._horizon.values() if h is not None]
        return min(open_ends) if open_ends else None

    def _settled_live(self, boundary: str | None) -> list[NameEntry]:
        return sorted(
            (e for e in self._newest.values()
             if e.manifest is not None and (boundary is None or e.name <= boundary)),
            key=lambda e: e.name,  # code point order is UTF-8 byte order: the index's order
        )

    def to_read(self) -> list[str]:
        """Nodes whose next page is needed: those at the boundary, while the page is short."""
        boundary = self._boundary()
        if boundary is None or len(self._settled_live(boundary)) >= self.limit:
            return []
        return sorted(n for n, h in self._horizon.items() if h == boundary)

    def page(self) -> Page:
        """At most ``limit`` live entries, and the name to continue after ("" when done)."""
        boundary = self._boundary()
        live = self._settled_live(boundary)
        if len(live) > self.limit:
            return Page(tuple(live[: self.limit]), live[self.limit - 1].name)
        if boundary is None:
            return Page(tuple(live), "")
        return Page(tuple(live), boundary)
