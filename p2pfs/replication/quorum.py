"""Quorum rules as sans-IO state machines: who to ask next, when enough is known.

A coordinator writes a key to its ``rf`` preferred replicas (Dynamo's sloppy
quorum: a replica known to be down is replaced up front by the next available
fallback, which keeps a hint for it; ``placement.write_plan``) and reads a name
from them. What happens while the answers come in is decided here, one answer
at a time:

* ``WriteQuorum``: a replica that fails is replaced by the next unused
  stand-in, which writes under a hint for the replica it replaces (for the
  original owner, if it was a stand-in already). The write is over when every
  target has answered or run out of stand-ins; it met its quorum with ``w``
  acknowledgements (never more than the ring has members).
* ``ReadQuorum``: the same substitution, and the rule that makes a stand-in
  harmless: a stand-in's "nothing here" does not count towards ``r`` (it knows
  a name only if it holds it under a hint), and "absent" is decided only once
  every reachable preferred replica has said so. Otherwise a stand-in that
  answers first could hide a write the preferred replicas hold (Riak's
  ``notfound_ok = false``). Short of ``r`` answers, a version found is returned
  rather than an error; "absent" is never answered short of ``r``. Replicas
  that answered with something older than the winner get read repair.
  A read may ask only its first ``ask_first`` targets and hold the rest back
  (a hedged read: "The Tail at Scale", Dean and Barroso, 2013): a held target is
  asked when an asked one fails (before any stand-in), when the answers so far
  disagree (it is then heard too, so that it is repaired as well), when they say
  "absent" (every reachable preferred replica must say so), and when the driver's
  hedge deadline passes (``hedge``). When the first answers agree, the held
  targets are never asked.
* ``ChunkRead``: a chunk is fetched from one replica at a time in
  ``placement.read_order``; replicas found without it (or with a corrupt copy)
  before one served it get the chunk back, if the ring places it on them.
* Hint delivery: which hint owners to hand back to, and which to forget.

The driver calls ``on_answer(target, result)`` or ``on_failure(target,
reason)`` and gets a ``Decision``: a target to try next (a stand-in), and
whether the whole operation is done. No trio, no clock, no I/O: the tables in
tests/test_quorum.py drive these directly.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

from p2pfs import errors
from p2pfs.ids import short_id
from p2pfs.replication.placement import Target, newest, quorum_error, stale_replicas
from p2pfs.storage import NameEntry


class QuorumError(errors.Unavailable):
    """A write or read did not reach its quorum."""


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What the driver does after one answer: ask ``retry`` (a stand-in) if set; stop when ``done``."""

    retry: Target | None = None
    done: bool = False
    more: tuple[Target, ...] = ()  # held-back targets to ask now as well (a hedged read)


WAIT = Decision()
DONE = Decision(done=True)


def name_read_order(targets: Sequence[Target], me: str) -> list[Target]:
    """The targets of a name read, in the order a hedged read asks them.

    This node first when it is one (its answer costs no request), then the preferred replicas,
    then the stand-ins, each group in ring order: a stand-in's "nothing here" does not count
    towards ``r``, so asking it among the first would often cost the held replica too.
    """
    return sorted(targets, key=lambda t: (t.node_id != me, bool(t.hint_for)))


def quorum_size(wanted: int, ring_size: int) -> int:
    """A quorum cannot exceed the number of ring members (a cluster smaller than rf)."""
    return min(wanted, ring_size)


# The stand-ins of a quorum, or how to find them when the first target fails: finding them
# walks the ring past the preference list, work that most reads and writes never need.
Spare = Sequence[str] | Callable[[], Sequence[str]]


class _StandIns:
    """The stand-ins not used yet, handed out in ring order to replace failed targets."""

    def __init__(self, spare: Spare) -> None:
        self._find = spare if callable(spare) else None
        self._spare = [] if callable(spare) else list(spare)

    def replace(self, failed: Target) -> Target | None:
        if self._find is not None:
            self._spare, self._find = list(self._find()), None
        if not self._spare:
            return None
        return Target(self._spare.pop(0), hint_for=failed.hint_for or failed.node_id)


class WriteQuorum:
    """One key written to its targets, stand-ins replacing failures, ``needed`` acks to succeed."""

    def __init__(self, what: str, targets: Sequence[Target], spare: Spare, needed: int) -> None:
        self.what = what
        self.targets = tuple(targets)
        self._stand_ins = _StandIns(spare)
        self._needed = needed
        self._outstanding = len(self.targets)
        self.acks = 0
        self.errors: list[str] = []

    @property
    def done(self) -> bool:
        return self._outstanding == 0

    def on_answer(self, target: Target) -> Decision:
        """``target`` acknowledged the write."""
        assert self._outstanding > 0, "an answer after the write was over"
        self.acks += 1
        return self._settle()

    def on_failure(self, target: Target, reason: str) -> Decision:
        """``target`` failed: try the next stand-in, if any is left."""
        assert self._outstanding > 0, "a failure after the write was over"
        self.errors.append(f"{short_id(target.node_id)}: {reason}")
        replacement = self._stand_ins.replace(target)
        if replacement is not None:
            return Decision(retry=replacement)
        return self._settle()

    def _settle(self) -> Decision:
        self._outstanding -= 1
        return DONE if self._outstanding == 0 else WAIT

    def check(self) -> int:
        """The acknowledgements, once done; QuorumError if fewer than needed."""
        assert self.done
        if self.acks < self._needed:
            raise QuorumError(quorum_error(self.what, self.acks, self._needed, self.errors))
        return self.acks


@dataclasses.dataclass(frozen=True, slots=True)
class ReadOutcome:
    """The newest entry (None: absent), and the replicas to repair with it."""

    winner: NameEntry | None
    repairs: tuple[Target, ...]


class ReadQuorum:
    """One name read from its replicas until ``needed`` answers that count (see the module doc).

    ``ask_first``: how many of ``targets`` (in the order given) are asked at once; the rest are
    held back until ``Decision.more`` or ``hedge`` hands them out. None asks every target.
    """

    def __init__(
        self, what: str, preferred: Iterable[str], targets: Sequence[Target], spare: Spare, needed: int,
        *, ask_first: int | None = None,
    ) -> None:
        assert ask_first is None or ask_first >= 1, "a read asks at least one target first"
        self.what = what
        cut = len(targets) if ask_first is None else ask_first
        self.targets = tuple(targets[:cut])  # asked first
        self._held = list(targets[cut:])
        self._preferred = frozenset(preferred)
        self._stand_ins = _StandIns(spare)
        self._needed = needed
        self._outstanding = len(self.targets)
        # Preferred replicas asked that have neither answered nor failed yet.
        self._preferred_waiting = {t.node_id for t in self.targets} & self._preferred
        self._counted = 0
        self._answers: dict[str, NameEntry | None] = {}
        self._hint_of: dict[str, str] = {t.node_id: t.hint_for for t in targets}
        # Set when held targets were asked because the answers disagreed: the read then hears
        # every target asked, so that all the stale ones are repaired.
        self._hear_all = False
        self.errors: list[str] = []
        self.done = not self.targets

    @property
    def held(self) -> tuple[Target, ...]:
        """The targets not asked yet."""
        return tuple(self._held)

    def on_answer(self, target: Target, entry: NameEntry | None) -> Decision:
        """``target`` answered with its entry (None: it holds none)."""
        self._answers[target.node_id] = entry
        if entry is not None or target.node_id in self._preferred:
            self._counted += 1
        return self._settle(target)

    def on_failure(self, target: Target, reason: str) -> Decision:
        """``target`` could not answer: ask a held target, else the next stand-in, in its place."""
        self.errors.append(f"{short_id(target.node_id)}: {reason}")
        self._preferred_waiting.discard(target.node_id)
        if self._held and not self.done:  # a preferred replica's answer counts where a stand-in's "nothing" does not
            replacement = self._release(1)[0]
            return Decision(retry=replacement, done=self.done)
        replacement = self._stand_ins.replace(target)
        if replacement is None:
            return self._settle(target)
        self._hint_of[replacement.node_id] = replacement.hint_for
        return Decision(retry=replacement, done=self.done)

    def hedge(self) -> tuple[Target, ...]:
        """The driver's hedge deadline passed before the read was done: every held target, to ask now."""
        if self.done:
            return ()
        more = self._release(len(self._held))
        self._outstanding += len(more)
        return more

    def _release(self, count: int) -> tuple[Target, ...]:
        released, self._held = tuple(self._held[:count]), self._held[count:]
        self._preferred_waiting.update(t.node_id for t in released if t.node_id in self._preferred)
        return released

    def _settle(self, target: Target) -> Decision:
        self._preferred_waiting.discard(target.node_id)
        self._outstanding -= 1
        winner = newest(self._answers.values())
        enough = self._counted >= self._needed and (winner is not None or not self._preferred_waiting)
        if self._hear_all and self._outstanding:
            enough = False
        if self._held and not self.done and (
            (not enough and self._outstanding == 0)  # the asked ones are through, short of a read
            or (enough and winner is None)  # "absent" needs the held preferred replicas too
            or (enough and stale_replicas(self._answers, winner))  # a disagreement: hear and repair all
        ):
            if enough and winner is not None:
                self._hear_all = True
            more = self._release(len(self._held))
            self._outstanding += len(more)
            return Decision(more=more)
        if enough or self._outstanding == 0:
            self.done = True
        return DONE if self.done else WAIT

    def outcome(self) -> ReadOutcome:
        """The winner and the stale replicas; QuorumError if "absent" is not known at quorum."""
        winner = newest(self._answers.values())
        if winner is None:
            if self._counted < self._needed:
                raise QuorumError(quorum_error(self.what, self._counted, self._needed, self.errors))
            return ReadOutcome(None, ())
        repairs = tuple(
            Target(node_id, self._hint_of.get(node_id, "")) for node_id in stale_replicas(self._answers, winner)
        )
        return ReadOutcome(winner, repairs)


class ChunkRead:
    """A chunk fetched from one replica at a time, best first; who to repair once it is found."""

    def __init__(self, chunk_id: bytes, order: Sequence[str], preferred: Iterable[str]) -> None:
        self.chunk_id = chunk_id
        self._order = list(order)
        self._preferred = frozenset(preferred)
        self._lacking: list[str] = []
        self.errors: list[str] = []

    def first(self) -> str | None:
        return self._order.pop(0) if self._order else None

    def on_lacking(self, node_id: str, reason: str) -> str | None:
        """``node_id`` does not hold a good copy: it may get one. Returns the next replica to ask."""
        self._lacking.append(node_id)
        return self.on_failure(node_id, reason)

    def on_failure(self, node_id: str, reason: str) -> str | None:
        """``node_id`` could not serve it; returns the next replica to ask (None: no more)."""
        self.errors.append(f"{short_id(node_id)}: {reason}")
        return self.first()

    def repairs(self) -> list[Target]:
        """After a success: the preferred replicas found lacking, to be given the chunk."""
        return [Target(n) for n in self._lacking if n in self._preferred]

    def error(self) -> QuorumError:
        return QuorumError(
            f"chunk {self.chunk_id.hex()[:16]}: no replica could serve it ({'; '.join(self.errors)})"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class HintPlan:
    """Owners whose hints are forgotten (out of the ring for good), and owners to hand back to."""

    forget: tuple[str, ...]
    deliver: tuple[str, ...]


def hint_plan(owners: Iterable[str], in_ring: Iterable[str], alive: Iterable[str], me: str) -> HintPlan:
    """Which hint owners get their data back now.

    An owner out of the ring (left, or dead past its grace period) will not take
    its hints back: the keys now belong to others, and anti-entropy and hand-off
    place them. An owner that is not alive (or is this node) waits.
    """
    in_ring, alive = set(in_ring), set(alive)
    owners = sorted(set(owners))
    forget = tuple(o for o in owners if o not in in_ring)
    deliver = tuple(o for o in owners if o in in_ring and o in alive and o != me)
    return HintPlan(forget, deliver)


def keep_stand_in_copy(me: str, preferred: Iterable[str], still_hinted: bool) -> bool:
    """A stand-in keeps its copy of a chunk while an owner waits for it or the ring places it here."""
    return still_hinted or me in preferred
