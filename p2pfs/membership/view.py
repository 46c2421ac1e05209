"""What one node believes about every member: the member table and its indexes. Pure.

``MemberView`` holds, for each known member, its latest ``Member`` and the
``MemberFact`` sent for it in a full-state exchange, and keeps in step with
them the indexes the protocol needs in O(1): the live and dead members as
lists with positions (uniform random picks and removal), the shuffled probe
order, the running suspicions with their expiry heap, and the reap heap for
DEAD and LEFT members. ``apply`` holds the precedence rules by which a fact
about another member replaces what we hold; facts about this node itself are
the protocol's to refute (``state.py``). Members dead or gone long enough are
forgotten (``reap``).
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import random
from typing import Callable, Iterator

from p2pfs.address import Address
from p2pfs.ids import short_id

from .config import MembershipConfig
from .messages import PUSH_PULL_MEMBERS_MAX, MemberFact, MemberMeta, MemberState
from .suspicion import Suspicion

log = logging.getLogger(__name__)

# Members we hold at most (dead and left ones included until reaped): ten
# times the largest clusters Lifeguard reports (10k+ per datacentre). Facts
# introducing more are ignored, so a broken peer cannot grow us without bound.
MEMBERS_MAX = 100_000
# Attempts at drawing distinct random members, per member wanted.
RANDOM_DRAWS_PER_PICK_MAX = 8


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """A member as this node currently sees it. ``state_since_s`` is in the core's clock."""

    node_id: str
    address: Address
    zone: str
    capacity_bytes: int
    protocol_version: int
    incarnation: int
    state: MemberState
    state_since_s: float

    @property
    def is_live(self) -> bool:
        """ALIVE or SUSPECT: still believed to be running."""
        return self.state <= MemberState.SUSPECT

    @classmethod
    def from_meta(cls, node_id: str, meta: MemberMeta, incarnation: int, state: MemberState,
                  now_s: float) -> "Member":
        return cls(
            node_id, Address(meta.host, meta.port), meta.zone, meta.capacity_bytes, meta.protocol_version,
            incarnation, state, now_s,
        )


class MemberView:
    """Every member this node knows, self included, with the indexes kept in step."""

    def __init__(self, self_id: str, config: MembershipConfig, rng: random.Random) -> None:
        self.self_id = self_id
        self._config = config
        self._rng = rng
        self.members: dict[str, Member] = {}
        self.facts: dict[str, MemberFact] = {}
        # Per member, its own signed record of the incarnation held and its
        # certificate (``records.py``); empty where the cluster does not sign.
        self.proofs: dict[str, tuple[bytes, bytes]] = {}
        # Other members that are ALIVE or SUSPECT, and those DEAD.
        self.live_ids: list[str] = []
        self._live_pos: dict[str, int] = {}
        self.dead_ids: list[str] = []
        self._dead_pos: dict[str, int] = {}
        self._probe_order: list[str] = []
        self._probe_index = 0
        self.suspicions: dict[str, Suspicion] = {}
        self.suspicion_heap: list[tuple[float, str]] = []
        self.reap_heap: list[tuple[float, str]] = []
        # Bumped on every change, so that readers can tell a stale copy.
        self.version = 0

    def __len__(self) -> int:
        return len(self.members)

    def get(self, node_id: str) -> Member | None:
        return self.members.get(node_id)

    def set(self, new: Member, accuser_id: str, now_s: float, *, self_live: bool,
            signature: bytes | None = None, cert: bytes = b"") -> None:
        """Install ``new`` and keep every index in step with it.

        ``self_live``: whether this node counts itself among the live members
        (not once it has left), for the n of the suspicion timeouts' log(n).
        ``signature`` (with ``cert``, if not empty) is the member's record of
        ``new``'s incarnation, replacing the one held; None keeps it (an
        accusation at the incarnation of the record held).
        """
        node_id = new.node_id
        old = self.members.get(node_id)
        self.members[node_id] = new
        if signature is not None:
            held = self.proofs.get(node_id)
            self.proofs[node_id] = (signature, cert or (held[1] if held else b""))
        signature, cert = self.proofs.get(node_id, (b"", b""))
        meta = MemberMeta(new.address.host, new.address.port, new.zone, new.capacity_bytes, new.protocol_version)
        # Without the certificate: a full state carries it only where the receiver may lack it.
        self.facts[node_id] = MemberFact(node_id, new.incarnation, new.state, accuser_id, meta, signature)
        self.version += 1
        if node_id == self.self_id:
            return
        if old is None:
            # New members go to a random place in the probe order, the one
            # they displace to the end (memberlist), so nobody is skipped.
            self._probe_order.append(node_id)
            j = self._rng.randrange(len(self._probe_order))
            self._probe_order[j], self._probe_order[-1] = self._probe_order[-1], self._probe_order[j]
        old_state = None if old is None else old.state
        index_update(self.live_ids, self._live_pos, node_id, new.state <= MemberState.SUSPECT)
        index_update(self.dead_ids, self._dead_pos, node_id, new.state == MemberState.DEAD)
        track_timers(self, self._config, node_id, old_state, new, now_s, accuser_id,
                     len(self.live_ids) + (1 if self_live else 0))

    def apply(self, fact: MemberFact, now_s: float, *, self_live: bool) -> bool:
        """Merge one fact about another member; True if it was news (to be gossiped on).

        The precedence rules: a fact replaces ours if its (incarnation, state) is
        greater, ALIVE < SUSPECT < DEAD < LEFT; a SUSPECT about a suspect may
        confirm the suspicion (Lifeguard); only a fact that says a member runs,
        and where, introduces an unknown one.
        """
        assert fact.node_id != self.self_id, "facts about ourselves are the protocol's to refute"
        old = self.members.get(fact.node_id)
        if old is None:
            # Only a fact that says the member runs, and says where, introduces it.
            if fact.state > MemberState.SUSPECT or fact.meta is None:
                return False
            if len(self.members) >= MEMBERS_MAX:
                log.warning("%s: MEMBERS_MAX reached, ignoring new member %s", short_id(self.self_id), short_id(fact.node_id))
                return False
            if fact.state == MemberState.SUSPECT and fact.accuser_id != self.self_id:
                # Another member's suspicion of one we did not know: we are joining, from a
                # full state that may predate the member's refutation, whose gossip is over by
                # the time we arrive. Held as ours, that suspicion would run out into DEAD with
                # nothing to cancel it (one live member declared dead so in ten 50-process
                # start-ups, docs/BENCHMARKS.md). The member comes in ALIVE at the incarnation
                # its record signs, and is suspected again only by a new accusation or our own
                # failed probe; the stale suspicion is not ours to gossip. memberlist ignores a
                # suspicion of an unknown node altogether. (A DEAD in a full state, which
                # PushPull hands us as our own suspicion, still comes in suspected.)
                self.set(
                    Member.from_meta(fact.node_id, fact.meta, fact.incarnation, MemberState.ALIVE, now_s),
                    "", now_s, self_live=self_live, signature=fact.signature, cert=fact.cert,
                )
                log.debug("%s: learned %s (ALIVE; suspected by %s)", short_id(self.self_id),
                          short_id(fact.node_id), short_id(fact.accuser_id))
                return False
            self.set(
                Member.from_meta(fact.node_id, fact.meta, fact.incarnation, fact.state, now_s),
                fact.accuser_id, now_s, self_live=self_live, signature=fact.signature, cert=fact.cert,
            )
            log.debug("%s: learned %s (%s)", short_id(self.self_id), short_id(fact.node_id), fact.state.name)
            return True
        if fact.state == MemberState.SUSPECT and old.state == MemberState.SUSPECT:
            if fact.incarnation < old.incarnation:
                return False
            news = False
            if fact.incarnation > old.incarnation:
                self.set(
                    dataclasses.replace(old, incarnation=fact.incarnation), fact.accuser_id, now_s,
                    self_live=self_live, signature=fact.signature if fact.signature else None, cert=fact.cert,
                )
                news = True
            suspicion = self.suspicions[fact.node_id]
            if suspicion.confirm(fact.accuser_id):
                heapq.heappush(self.suspicion_heap, (suspicion.deadline_s(), fact.node_id))
                news = True
            return news
        if (fact.incarnation, fact.state) <= (old.incarnation, old.state):
            return False
        if fact.meta is not None:
            address = Address(fact.meta.host, fact.meta.port)
            new = Member(
                fact.node_id, address, fact.meta.zone, fact.meta.capacity_bytes, fact.meta.protocol_version,
                fact.incarnation, fact.state, now_s if fact.state != old.state else old.state_since_s,
            )
        else:
            new = dataclasses.replace(
                old, incarnation=fact.incarnation, state=fact.state,
                state_since_s=now_s if fact.state != old.state else old.state_since_s,
            )
        self.set(new, fact.accuser_id, now_s, self_live=self_live,
                 signature=fact.signature if fact.signature else None, cert=fact.cert)
        if new.state != old.state:
            level = logging.DEBUG if new.state == MemberState.ALIVE and old.state == MemberState.ALIVE else logging.INFO
            log.log(
                level, "%s: %s is %s (incarnation %d%s)", short_id(self.self_id), short_id(fact.node_id),
                new.state.name, fact.incarnation, f", by {short_id(fact.accuser_id)}" if fact.accuser_id else "",
            )
        return True

    def accusation(self, member: Member, state: MemberState, accuser_id: str) -> MemberFact:
        """``accuser_id``'s fact that ``member`` is ``state`` at its incarnation.

        Carries the member's own record of that incarnation (without the
        certificate: whoever holds the member has it), so a receiver that
        has not yet heard of the incarnation can believe it was reached.
        """
        signature, _ = self.proofs.get(member.node_id, (b"", b""))
        meta = self.facts[member.node_id].meta if signature else None
        return MemberFact(member.node_id, member.incarnation, state, accuser_id, meta, signature)

    def expired_suspects(self, now_s: float) -> Iterator[Member]:
        """Suspects whose suspicion has run out at ``now_s``, each checked when reached.

        A generator, so that the caller declares each one dead before the next is checked.
        """
        heap = self.suspicion_heap
        while heap and heap[0][0] <= now_s:
            _, node_id = heapq.heappop(heap)
            suspicion = self.suspicions.get(node_id)
            if suspicion is None or suspicion.deadline_s() > now_s:
                continue  # refuted, or an entry superseded by a later one
            member = self.members[node_id]
            assert member.state == MemberState.SUSPECT
            yield member

    def reap(self, now_s: float) -> None:
        """Forget members DEAD for ``dead_reap_s`` or LEFT for ``left_reap_s``."""
        heap = self.reap_heap
        while heap and heap[0][0] <= now_s:
            _, node_id = heapq.heappop(heap)
            member = self.members.get(node_id)
            if member is None or node_id == self.self_id:
                continue
            if member.state == MemberState.DEAD:
                reap_s = self._config.dead_reap_s
            elif member.state == MemberState.LEFT:
                reap_s = self._config.left_reap_s
            else:
                continue
            if member.state_since_s + reap_s > now_s:
                continue
            del self.members[node_id]
            del self.facts[node_id]
            self.proofs.pop(node_id, None)
            index_update(self.dead_ids, self._dead_pos, node_id, False)
            self.version += 1
            log.debug("%s: forgot %s (%s)", short_id(self.self_id), short_id(node_id), member.state.name)

    def next_probe_target(self) -> Member | None:
        """Round-robin over a shuffled list; reshuffled after each pass (SWIM section 4.3)."""
        for _ in range(len(self._probe_order) + 2):
            if self._probe_index >= len(self._probe_order):
                self._probe_order = list(self.live_ids)
                self._rng.shuffle(self._probe_order)
                self._probe_index = 0
                if not self._probe_order:
                    return None
            node_id = self._probe_order[self._probe_index]
            self._probe_index += 1
            member = self.members.get(node_id)
            if member is not None and member.state <= MemberState.SUSPECT and node_id != self.self_id:
                return member
        return None

    def state_facts(self, with_cert: Callable[[str], bool] = lambda node_id: False) -> tuple[MemberFact, ...]:
        """Our full view for a PushPull: self first, live members before the rest, capped.

        The facts of members for which ``with_cert`` is true carry their
        certificate (where the receiver may not know the member yet).
        """
        facts = self.facts
        if len(facts) <= PUSH_PULL_MEMBERS_MAX:
            chosen = list(facts.values())
        else:
            chosen = [facts[self.self_id]] + [facts[i] for i in self.live_ids]
            chosen += [f for i, f in facts.items() if self.members[i].state > MemberState.SUSPECT]
            chosen = chosen[:PUSH_PULL_MEMBERS_MAX]
        for i, fact in enumerate(chosen):
            if fact.signature and with_cert(fact.node_id):
                chosen[i] = dataclasses.replace(fact, cert=self.proofs[fact.node_id][1])
        return tuple(chosen)

    def pick(self, ids: list[str]) -> str:
        return ids[self._rng.randrange(len(ids))]

    def pick_live(self, k: int, *, exclude: str | None) -> list[str]:
        """Up to ``k`` distinct random live members other than ``exclude``."""
        ids = self.live_ids
        if len(ids) <= 4 * k + 4:
            candidates = [i for i in ids if i != exclude]
            return self._rng.sample(candidates, min(k, len(candidates)))
        chosen: list[str] = []
        for _ in range(RANDOM_DRAWS_PER_PICK_MAX * k):
            node_id = ids[self._rng.randrange(len(ids))]
            if node_id != exclude and node_id not in chosen:
                chosen.append(node_id)
                if len(chosen) == k:
                    break
        return chosen


def track_timers(view, config: MembershipConfig, node_id: str, old_state: MemberState | None, new: Member,
                 now_s: float, accuser_id: str, live_count: int) -> None:
    """Start or end ``node_id``'s suspicion and schedule its reaping as its state changes.

    Shared by both member tables (this one and ``compact.CompactMemberView``), whose
    ``suspicions``, ``suspicion_heap`` and ``reap_heap`` are the same structures.
    """
    if old_state == MemberState.SUSPECT and new.state != MemberState.SUSPECT:
        del view.suspicions[node_id]
    if new.state == MemberState.SUSPECT and old_state != MemberState.SUSPECT:
        suspicion = Suspicion(
            start_s=now_s, accuser_id=accuser_id, k=config.suspicion_confirmations_expected(live_count),
            timeout_s_min=config.suspicion_timeout_s_min(live_count),
            timeout_s_max=config.suspicion_timeout_s_max(live_count),
        )
        view.suspicions[node_id] = suspicion
        heapq.heappush(view.suspicion_heap, (suspicion.deadline_s(), node_id))
    if new.state in (MemberState.DEAD, MemberState.LEFT) and new.state != old_state:
        reap_s = config.dead_reap_s if new.state == MemberState.DEAD else config.left_reap_s
        heapq.heappush(view.reap_heap, (new.state_since_s + reap_s, node_id))


def index_update(ids: list, pos: dict, node_id, present: bool) -> None:
    """Add or remove ``node_id`` in a list-with-positions index, O(1) (swap with the last).

    Keys are node ids here and member slots in ``compact``'s tables."""
    if present:
        if node_id not in pos:
            pos[node_id] = len(ids)
            ids.append(node_id)
        return
    i = pos.pop(node_id, None)
    if i is None:
        return
    last = ids.pop()
    if i < len(ids):
        ids[i] = last
        pos[last] = i
