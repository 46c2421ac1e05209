"""A member table in flat arrays, for simulating thousands of full views in one process. Pure.

``MemberView`` keeps, per member, a ``Member``, a ``MemberFact`` and the dict
and list entries of its indexes: about 700 bytes for each (node, member) pair
in a simulation (measured at 1,000 members), so 10,000 members, each holding
the other 10,000, would need about 70 GB. ``CompactView`` holds the same
table with the same rules (it is a ``MemberView``: ``apply``, ``accusation``,
``state_facts`` and the random picks are inherited) in about 30 bytes a pair:

* What every view of a simulation shares goes in one ``MemberTable``: node ids
  interned as small integers (slots), and each member's meta, address and its
  current ALIVE fact (the fact most views hold of most members).
* Per view, by slot: the state (a byte), the incarnation (8 bytes), the
  position among the live members (4), and three orders of 4-byte slots (the
  live list, the probe order, the order in which members were learned, which
  is the order a dict of members would iterate in). What only a few pairs
  have (a state since a time other than the view's start, a meta other than
  the table's, an accuser, a signature) is in dicts by slot.
* ``Member`` and ``MemberFact`` values are built when asked for
  (``members``, ``facts``: read-only mappings), not kept.

Same seed, same behaviour: the random draws, the orders and the values are
those of ``MemberView`` (``tests/test_membership_compact.py`` runs both side by
side). The daemon keeps ``MemberView`` (one view per process, where clarity
is worth more than bytes); the simulation (``p2pfs.sim.membership.CoreCluster``)
chooses this one, with one ``MemberTable`` for all its nodes.
"""

from __future__ import annotations

import array
import heapq
import random
from typing import Iterator

from p2pfs.address import Address

from .config import MembershipConfig
from .messages import MemberFact, MemberMeta, MemberState
from .view import Member, MemberView, index_update, track_timers

# A slot this view does not hold (never learned, or reaped).
UNKNOWN = 0xFF
# Positions in the per-view index arrays for a slot that is not in that index.
ABSENT = -1
_STATES = tuple(MemberState)


class MemberTable:
    """Node ids as slots, and what all views of one simulation share about each member.

    Grows by one slot per node id ever held by any view; never shrinks (a
    reaped member keeps its slot, so a view that learns it again finds it).
    Bounded by the views' own ``MEMBERS_MAX`` times the views that share it.
    """

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.slot_of: dict[str, int] = {}
        # Per slot: the meta first held for the member, its address, and the
        # last ALIVE fact built for it (reused while it stays current).
        self.metas: list[MemberMeta] = []
        self.addresses: list[Address] = []
        self._alive_facts: list[MemberFact | None] = []

    def __len__(self) -> int:
        return len(self.ids)

    def intern(self, node_id: str, meta: MemberMeta) -> int:
        slot = self.slot_of.get(node_id)
        if slot is None:
            slot = len(self.ids)
            self.slot_of[node_id] = slot
            self.ids.append(node_id)
            self.metas.append(meta)
            self.addresses.append(Address(meta.host, meta.port))
            self._alive_facts.append(None)
        return slot

    def alive_fact(self, slot: int, incarnation: int) -> MemberFact:
        """The unsigned ALIVE fact of a member at ``incarnation`` with the table's meta, shared."""
        fact = self._alive_facts[slot]
        if fact is None or fact.incarnation != incarnation:
            fact = MemberFact(self.ids[slot], incarnation, MemberState.ALIVE, "", self.metas[slot])
            self._alive_facts[slot] = fact
        return fact


class _Members:
    """Read-only mapping node id -> ``Member`` over a ``CompactView`` (what ``MemberView.members`` is)."""

    __slots__ = ("_view",)

    def __init__(self, view: CompactView) -> None:
        self._view = view

    def get(self, node_id: str, default: Member | None = None) -> Member | None:
        view = self._view
        slot = view.table.slot_of.get(node_id)
        if slot is None or slot >= len(view.state) or view.state[slot] == UNKNOWN:
            return default
        return view.member_at(slot)

    def __getitem__(self, node_id: str) -> Member:
        member = self.get(node_id)
        if member is None:
            raise KeyError(node_id)
        return member

    def __contains__(self, node_id: object) -> bool:
        view = self._view
        slot = view.table.slot_of.get(node_id)  # type: ignore[arg-type]
        return slot is not None and slot < len(view.state) and view.state[slot] != UNKNOWN

    def __len__(self) -> int:
        return len(self._view.order)

    def __iter__(self) -> Iterator[str]:
        ids = self._view.table.ids
        return (ids[slot] for slot in self._view.order)

    def values(self) -> Iterator[Member]:
        member_at = self._view.member_at
        return (member_at(slot) for slot in self._view.order)


class _Facts:
    """Read-only mapping node id -> the ``MemberFact`` a full state sends (``MemberView.facts``)."""

    __slots__ = ("_view",)

    def __init__(self, view: CompactView) -> None:
        self._view = view

    def __getitem__(self, node_id: str) -> MemberFact:
        view = self._view
        slot = view.table.slot_of.get(node_id)
        if slot is None or slot >= len(view.state) or view.state[slot] == UNKNOWN:
            raise KeyError(node_id)
        return view.fact_at(slot)

    def __len__(self) -> int:
        return len(self._view.order)

    def values(self) -> Iterator[MemberFact]:
        fact_at = self._view.fact_at
        return (fact_at(slot) for slot in self._view.order)

    def items(self) -> Iterator[tuple[str, MemberFact]]:
        ids, fact_at = self._view.table.ids, self._view.fact_at
        return ((ids[slot], fact_at(slot)) for slot in self._view.order)


class _Ids:
    """A list of slots seen as a read-only list of node ids (``live_ids``, ``dead_ids``)."""

    __slots__ = ("_slots", "_ids")

    def __init__(self, slots: array.array | list[int], ids: list[str]) -> None:
        self._slots = slots
        self._ids = ids

    def __len__(self) -> int:
        return len(self._slots)

    def __getitem__(self, i: int) -> str:
        return self._ids[self._slots[i]]

    def __iter__(self) -> Iterator[str]:
        ids = self._ids
        return (ids[slot] for slot in self._slots)


class CompactView(MemberView):
    """``MemberView``'s table and indexes in flat arrays by slot of a shared ``MemberTable``."""

    def __init__(self, self_id: str, config: MembershipConfig, rng: random.Random, table: MemberTable) -> None:
        super().__init__(self_id, config, rng)
        self.table = table
        self.state = bytearray()
        self.incarnation = array.array("q")
        self.live_pos = array.array("i")
        self.live = array.array("i")
        self.order = array.array("i")
        self.probe_order = array.array("i")
        # Sparse: what few pairs have. A member's state is "since" the view's start unless listed.
        self.since_default_s = 0.0
        self.since_s: dict[int, float] = {}
        self.meta_own: dict[int, MemberMeta] = {}   # a meta other than the table's
        self.accuser: dict[int, str] = {}           # the accuser of a SUSPECT or DEAD fact held
        self.signature: dict[int, bytes] = {}       # the member's record, where the cluster signs
        self.dead: list[int] = []
        self.dead_pos: dict[int, int] = {}
        # MemberView's dicts and lists, replaced by views over the arrays.
        self.members = _Members(self)  # type: ignore[assignment]
        self.facts = _Facts(self)  # type: ignore[assignment]
        self.live_ids = _Ids(self.live, table.ids)  # type: ignore[assignment]
        self.dead_ids = _Ids(self.dead, table.ids)  # type: ignore[assignment]
        del self._live_pos, self._dead_pos, self._probe_order

    # -- values built on demand ------------------------------------------------

    def _meta(self, slot: int) -> MemberMeta:
        meta = self.meta_own.get(slot)
        return self.table.metas[slot] if meta is None else meta

    def member_at(self, slot: int) -> Member:
        table = self.table
        meta = self.meta_own.get(slot)
        if meta is None:
            meta, address = table.metas[slot], table.addresses[slot]
        else:
            address = Address(meta.host, meta.port)
        return Member(
            table.ids[slot], address, meta.zone, meta.capacity_bytes, meta.protocol_version,
            self.incarnation[slot], _STATES[self.state[slot]], self.since_s.get(slot, self.since_default_s),
        )

    def fact_at(self, slot: int) -> MemberFact:
        state, incarnation = self.state[slot], self.incarnation[slot]
        if state == MemberState.ALIVE and slot not in self.meta_own and slot not in self.signature \
                and slot not in self.accuser:
            return self.table.alive_fact(slot, incarnation)
        return MemberFact(self.table.ids[slot], incarnation, _STATES[state], self.accuser.get(slot, ""),
                          self._meta(slot), self.signature.get(slot, b""))

    # -- MemberView's storage, over the arrays -----------------------------------

    def _grow(self) -> None:
        """Make room in the per-slot arrays for every slot of the table."""
        extra = len(self.table) - len(self.state)
        if extra > 0:
            self.state.extend(bytes([UNKNOWN]) * extra)
            self.incarnation.extend(array.array("q", bytes(8 * extra)))
            self.live_pos.extend(array.array("i", [ABSENT]) * extra)

    def set(self, new: Member, accuser_id: str, now_s: float, *, self_live: bool,
            signature: bytes | None = None, cert: bytes = b"") -> None:
        """``MemberView.set`` over the arrays: the same indexes, the same random draws."""
        node_id = new.node_id
        meta = MemberMeta(new.address.host, new.address.port, new.zone, new.capacity_bytes, new.protocol_version)
        slot = self.table.intern(node_id, meta)
        self._grow()
        old_state_byte = self.state[slot]
        old_state = None if old_state_byte == UNKNOWN else _STATES[old_state_byte]
        if old_state is None:
            self.order.append(slot)
        self.state[slot] = new.state
        self.incarnation[slot] = new.incarnation
        if new.state_since_s == self.since_default_s:
            self.since_s.pop(slot, None)
        else:
            self.since_s[slot] = new.state_since_s
        if meta == self.table.metas[slot]:
            self.meta_own.pop(slot, None)
        else:
            self.meta_own[slot] = meta
        if accuser_id:
            self.accuser[slot] = accuser_id
        else:
            self.accuser.pop(slot, None)
        if signature is not None:
            held = self.proofs.get(node_id)
            self.proofs[node_id] = (signature, cert or (held[1] if held else b""))
        proof = self.proofs.get(node_id)
        if proof is not None and proof[0]:
            self.signature[slot] = proof[0]
        else:
            self.signature.pop(slot, None)
        self.version += 1
        if node_id == self.self_id:
            return
        if old_state is None:
            probe_order = self.probe_order
            probe_order.append(slot)
            j = self._rng.randrange(len(probe_order))
            probe_order[j], probe_order[-1] = probe_order[-1], probe_order[j]
        self._live_update(slot, new.state <= MemberState.SUSPECT)
        index_update(self.dead, self.dead_pos, slot, new.state == MemberState.DEAD)
        track_timers(self, self._config, node_id, old_state, new, now_s, accuser_id,
                     len(self.live) + (1 if self_live else 0))

    def _live_update(self, slot: int, present: bool) -> None:
        """``view.index_update`` on the live array and its position array."""
        live, pos = self.live, self.live_pos
        if present:
            if pos[slot] == ABSENT:
                pos[slot] = len(live)
                live.append(slot)
            return
        i = pos[slot]
        if i == ABSENT:
            return
        pos[slot] = ABSENT
        last = live.pop()
        if i < len(live):
            live[i] = last
            pos[last] = i

    def reap(self, now_s: float) -> None:
        """``MemberView.reap``: forget members DEAD or LEFT long enough (in learned order, the rest kept)."""
        heap = self.reap_heap
        while heap and heap[0][0] <= now_s:
            _, node_id = heapq.heappop(heap)
            slot = self.table.slot_of.get(node_id)
            if slot is None or node_id == self.self_id or self.state[slot] == UNKNOWN:
                continue
            state = _STATES[self.state[slot]]
            if state == MemberState.DEAD:
                reap_s = self._config.dead_reap_s
            elif state == MemberState.LEFT:
                reap_s = self._config.left_reap_s
            else:
                continue
            if self.since_s.get(slot, self.since_default_s) + reap_s > now_s:
                continue
            self.state[slot] = UNKNOWN
            del self.order[self.order.index(slot)]
            for sparse in (self.since_s, self.meta_own, self.accuser, self.signature):
                sparse.pop(slot, None)
            self.proofs.pop(node_id, None)
            index_update(self.dead, self.dead_pos, slot, False)
            self.version += 1

    def next_probe_target(self) -> Member | None:
        """``MemberView.next_probe_target`` over the slot arrays (the same shuffles)."""
        for _ in range(len(self.probe_order) + 2):
            if self._probe_index >= len(self.probe_order):
                self.probe_order = array.array("i", self.live)
                self._rng.shuffle(self.probe_order)
                self._probe_index = 0
                if not self.probe_order:
                    return None
            slot = self.probe_order[self._probe_index]
            self._probe_index += 1
            state = self.state[slot]
            if state != UNKNOWN and state <= MemberState.SUSPECT and self.table.ids[slot] != self.self_id:
                return self.member_at(slot)
        return None

    # -- a simulation's shortcut --------------------------------------------------

    def hold_all(self, incarnations: array.array, now_s: float) -> None:
        """Hold every member of the table ALIVE at ``incarnations[slot]``, learned at ``now_s``.

        What this view would hold after every member's join had reached it and
        gossip had gone quiet, without the join: a simulation forms a cluster
        of thousands this way (``CoreCluster.form``). Only for a view that holds
        nothing but itself, whose own slot must be ALIVE at its incarnation in
        ``incarnations``. The live list is in slot order; the probe order is
        left empty, to be shuffled at the first probe.
        """
        table, n = self.table, len(self.table)
        self_slot = table.slot_of[self.self_id]
        assert list(self.order) == [self_slot], "hold_all needs a view holding only itself"
        assert len(incarnations) == n and incarnations[self_slot] == self.incarnation[self_slot]
        assert self.state[self_slot] == MemberState.ALIVE
        self_since_s = self.since_s.get(self_slot, self.since_default_s)
        self.since_default_s = now_s
        self.since_s = {} if self_since_s == now_s else {self_slot: self_since_s}
        self.state = bytearray(n)  # ALIVE is 0
        self.incarnation = array.array("q", incarnations)
        others = array.array("i", range(self_slot)) + array.array("i", range(self_slot + 1, n))
        self.live = others
        self.live_ids = _Ids(self.live, table.ids)  # type: ignore[assignment]
        self.live_pos = array.array("i", range(self_slot)) + array.array("i", [ABSENT]) \
            + array.array("i", range(self_slot, n - 1))
        self.order = array.array("i", [self_slot]) + others
        self.probe_order = array.array("i")
        self._probe_index = 0
        self.version += 1
