"""The SWIM + Lifeguard membership core: pure, no I/O, no clock, seeded randomness.

``Membership`` is fed messages (``handle``) and the passage of time (``tick``),
each with an explicit ``now_s``, and returns the messages to send. A trio
driver (``driver.py``) moves them and keeps time; a simulation runs hundreds of
cores in one process on a fake clock and network.

The protocol (SWIM, Das, Gupta, Motivala, DSN 2002; Lifeguard, Dadgar,
Phillips, Currey, arXiv:1707.00788; the details follow hashicorp/memberlist):

* Failure detection. Every probe period a node pings the next member of a
  shuffled round-robin list. No ack within the probe timeout: it sends PingReq
  to ``indirect_checks`` random members, which ping the target and forward its
  ack, or nack if it stays silent. No ack by the end of the period: the target
  becomes SUSPECT, and the suspect is told first (a Gossip straight to it, and
  its suspicion rides first on any ping to it) so that it can refute quickly.
* Suspicion. A suspicion expires into DEAD after a timeout that starts at its
  ceiling and shrinks with independent confirmations (``suspicion.py``).
* Incarnations. Each member's facts are ordered by (incarnation, state) with
  ALIVE < SUSPECT < DEAD < LEFT. A node that hears a fact about itself at least
  as new as its own that is not its current self (suspected, declared dead or
  left, or an ALIVE from a previous life) refutes by raising its incarnation
  above the one heard and gossiping ALIVE.
* Restart pitfall. A restarted node keeps its node id (the hash of its key).
  If its incarnation started again from 0, the cluster's stale facts about its
  previous life (say DEAD at incarnation 7) would win over its new ALIVE until
  it heard of them and refuted. So the caller passes ``incarnation_initial``
  from something that grows across restarts: the driver's default is the wall
  clock in whole seconds (``driver.incarnation_from_wall_clock``), or a
  persisted counter. A refutation storm in the previous life can still have
  pushed the old incarnation past a clock-based start; refutation covers that.
* Dissemination. Every state change is queued (``broadcast.py``) and
  piggybacked on Ping, Ack and PingReq, and on piggyback-only Gossip messages
  sent each gossip round to ``gossip_fanout`` random members while anything is
  pending (memberlist's gossip; it takes dissemination from one message per
  probe period to ``fanout`` per 200 ms). Each fact is sent
  ``retransmit_mult * ceil(log10(n+1))`` times.
* Anti-entropy. Periodically, a full-state PushPull with one random live
  member, and (serf's reconnect) one with a random dead member, so that
  whatever gossip missed, including both sides of a healed partition, is
  repaired. A DEAD in a remote full state becomes a local suspicion
  (memberlist's mergeState), so a healed partition does not kill live
  members outright. Joining is a PushPull with each seed, retried until one
  answers.
* Local health (Lifeguard). Failed probes and missing nacks raise an awareness
  score that stretches this node's probe interval and timeout (``awareness.py``).
* Leave and reap. ``leave`` announces LEFT; DEAD and LEFT members are kept for
  ``dead_reap_s``/``left_reap_s`` and then forgotten. A DEAD, LEFT or otherwise
  unknown-meta fact about a member we do not know is ignored, so a reaped
  member is not brought back by a late fact about its end.

Times (``now_s``, ``Member.state_since_s``) are in the caller's clock; the
trio driver uses ``trio.current_time()``, not wall time.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import random
from typing import Sequence

from p2pfs import wire
from p2pfs.address import Address

from .awareness import Awareness
from .broadcast import BroadcastQueue
from .config import MembershipConfig
from .messages import (
    GOSSIP_BYTES_MAX,
    INCARNATION_MAX,
    MESSAGE_OVERHEAD_BYTES,
    NACK_TIMEOUT_S_MAX,
    PIGGYBACK_BYTES_MAX,
    PUSH_PULL_MEMBERS_MAX,
    SEQ_MODULUS,
    UPDATES_PER_MESSAGE_MAX,
    Ack,
    Gossip,
    MemberFact,
    MemberMeta,
    MemberState,
    Nack,
    Ping,
    PingReq,
    PushPull,
    fact_size_bytes,
)
from .suspicion import Suspicion

__all__ = ["Member", "MemberState", "Membership", "Send"]

log = logging.getLogger(__name__)

# Indirect probes this node relays at once; further PingReqs are ignored (the
# requester then misses our nack, which is the right signal: we are busy).
RELAY_PROBES_MAX = 256
# Members we hold at most (dead and left ones included until reaped): ten
# times the largest clusters Lifeguard reports (10k+ per datacentre). Facts
# introducing more are ignored, so a broken peer cannot grow us without bound.
MEMBERS_MAX = 100_000
# Seed addresses kept for joining.
SEEDS_MAX = 64
# A relay nacks after this fraction of the time the requester has left in its
# probe period, so the nack arrives before the requester stops counting
# (Lifeguard nacks at 80% of the probe timeout).
NACK_TIMEOUT_FRACTION = 0.8
# Attempts at drawing distinct random members, per member wanted.
RANDOM_DRAWS_PER_PICK_MAX = 8


_SUSPECT = MemberState.SUSPECT
_DEAD = MemberState.DEAD


def _short(node_id: str) -> str:
    return node_id[:12]


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


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """An action: send ``msg`` to ``to`` (one-way, best effort)."""

    to: Address
    msg: wire.Message


class _Probe:
    """The probe in flight (at most one per node, as in SWIM)."""

    __slots__ = ("target_id", "seq", "timeout_s", "end_s", "indirect_sent", "nacks_expected", "nacks")

    def __init__(self, target_id: str, seq: int, timeout_s: float, end_s: float) -> None:
        self.target_id = target_id
        self.seq = seq
        self.timeout_s = timeout_s  # direct ack deadline; then ping-req
        self.end_s = end_s          # end of the probe period; then suspect
        self.indirect_sent = False
        self.nacks_expected = 0
        self.nacks = 0


@dataclasses.dataclass(frozen=True, slots=True)
class _Relay:
    requester: Address
    requester_seq: int
    deadline_s: float


class Membership:
    """SWIM membership with Lifeguard extensions, as a pure state machine. See the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        address: Address,
        zone: str,
        capacity_bytes: int,
        protocol_version: int,
        incarnation_initial: int,
        config: MembershipConfig,
        rng: random.Random,
        now_s: float,
    ) -> None:
        assert 0 <= incarnation_initial < INCARNATION_MAX
        self.config = config
        self.node_id = node_id
        self.address = address
        self._rng = rng
        self._meta = MemberMeta(address.host, address.port, zone, capacity_bytes, protocol_version)
        self._incarnation = incarnation_initial
        self._left = False
        # Every member we know, self included, and its fact for push-pull.
        self._members: dict[str, Member] = {}
        self._facts: dict[str, MemberFact] = {}
        # Other members that are ALIVE or SUSPECT, and those DEAD, as lists with
        # positions for O(1) removal and uniform random picks.
        self._live_ids: list[str] = []
        self._live_pos: dict[str, int] = {}
        self._dead_ids: list[str] = []
        self._dead_pos: dict[str, int] = {}
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._probe: _Probe | None = None
        self._seq = rng.randrange(SEQ_MODULUS)
        self._relays: dict[int, _Relay] = {}
        self._relay_heap: list[tuple[float, int]] = []
        self._suspicions: dict[str, Suspicion] = {}
        self._suspicion_heap: list[tuple[float, str]] = []
        self._reap_heap: list[tuple[float, str]] = []
        self._broadcasts = BroadcastQueue()
        self._awareness = Awareness(config.awareness_max)
        self._seeds: tuple[Address, ...] = ()
        # Timers start at random offsets so that a cluster started at once
        # does not probe and gossip in lockstep.
        self._next_probe_s = now_s + rng.uniform(0, config.probe_interval_s)
        self._next_gossip_s = now_s + rng.uniform(0, config.gossip_interval_s)
        self._next_push_pull_s = now_s + rng.uniform(0, config.push_pull_interval_s)
        self._next_reconnect_s = now_s + rng.uniform(0, config.reconnect_interval_s)
        self._next_join_s = math.inf
        self.version = 0
        self._set_member(
            self._member_from(node_id, self._meta, incarnation_initial, MemberState.ALIVE, now_s), "", now_s
        )

    # ------------------------------------------------------------------
    # Public API

    def join(self, seeds: Sequence[Address], now_s: float) -> list[Send]:
        """Contact ``seeds`` with a PushPull each; retried every ``join_retry_interval_s``
        while no other member is live. Our own address among the seeds is skipped."""
        self._seeds = tuple(s for s in seeds if s != self.address)[:SEEDS_MAX]
        sends: list[Send] = []
        if self._seeds:
            self._contact_seeds(now_s, sends)
        return sends

    def handle(self, sender: Address, msg: wire.Message, now_s: float) -> list[Send]:
        """Process one message from ``sender`` (the address replies go to)."""
        sends: list[Send] = []
        if isinstance(msg, Ping):
            self._merge(msg.updates, now_s, sends)
            if msg.target_id != self.node_id:
                log.debug("%s: ping from %s for another node %s", _short(self.node_id), sender, _short(msg.target_id))
                return sends
            sends.append(Send(sender, Ack(msg.seq, self._piggyback(None, PIGGYBACK_BYTES_MAX))))
        elif isinstance(msg, Ack):
            self._merge(msg.updates, now_s, sends)
            self._on_ack(msg.seq, sends)
        elif isinstance(msg, Nack):
            probe = self._probe
            if probe is not None and probe.seq == msg.seq and probe.indirect_sent:
                probe.nacks += 1
        elif isinstance(msg, PingReq):
            self._merge(msg.updates, now_s, sends)
            self._relay(sender, msg, now_s, sends)
        elif isinstance(msg, Gossip):
            self._merge(msg.updates, now_s, sends)
        elif isinstance(msg, PushPull):
            # A remote view that someone is DEAD becomes our own suspicion
            # (memberlist's mergeState): the member gets a suspicion timeout to
            # refute in, so the two sides of a healed partition, which hold
            # each other dead, do not kill each other's live members outright.
            facts = [
                f if f.state != _DEAD else MemberFact(f.node_id, f.incarnation, _SUSPECT, self.node_id, None)
                for f in msg.members
            ]
            self._merge(facts, now_s, sends)
            if not msg.is_reply:
                sends.append(Send(sender, PushPull(True, self._state_facts())))
        else:
            raise TypeError(f"not a membership message: {type(msg).__name__}")
        return sends

    def tick(self, now_s: float) -> list[Send]:
        """Run every timer that is due at ``now_s``."""
        sends: list[Send] = []
        self._expire_relays(now_s, sends)
        self._expire_suspicions(now_s, sends)
        self._reap(now_s)
        if not self._left:
            self._advance_probe(now_s, sends)
            if now_s >= self._next_push_pull_s:
                self._next_push_pull_s = now_s + self.config.push_pull_interval_s_for(self.live_count)
                if self._live_ids:
                    target = self._members[self._pick(self._live_ids)]
                    sends.append(Send(target.address, PushPull(False, self._state_facts())))
            if now_s >= self._next_reconnect_s:
                self._next_reconnect_s = now_s + self.config.reconnect_interval_s
                if self._dead_ids:
                    target = self._members[self._pick(self._dead_ids)]
                    sends.append(Send(target.address, PushPull(False, self._state_facts())))
            if self._seeds and not self._live_ids and now_s >= self._next_join_s:
                self._contact_seeds(now_s, sends)
        if now_s >= self._next_gossip_s and len(self._broadcasts) and self._live_ids:
            self._gossip_round(now_s, sends)
        return sends

    def next_deadline_s(self) -> float:
        """The latest time ``tick`` must next be called (it may be called earlier)."""
        deadline = math.inf
        if len(self._broadcasts) and self._live_ids:
            deadline = self._next_gossip_s
        if not self._left:
            deadline = min(deadline, self._next_probe_s, self._next_push_pull_s)
            probe = self._probe
            if probe is not None:
                deadline = min(deadline, probe.end_s if probe.indirect_sent else probe.timeout_s)
            if self._dead_ids:
                deadline = min(deadline, self._next_reconnect_s)
            if self._seeds and not self._live_ids:
                deadline = min(deadline, self._next_join_s)
        for heap in (self._suspicion_heap, self._relay_heap, self._reap_heap):
            if heap:
                deadline = min(deadline, heap[0][0])
        return deadline

    def leave(self, now_s: float) -> list[Send]:
        """Announce that we leave: LEFT at our incarnation, gossiped at once and then each round.

        Afterwards the core stops probing and anti-entropy, still answers
        messages, and keeps gossiping while anything is pending
        (``pending_broadcasts``).
        """
        sends: list[Send] = []
        if self._left:
            return sends
        self._left = True
        self._probe = None
        me = self._members[self.node_id]
        self._set_member(dataclasses.replace(me, state=MemberState.LEFT, state_since_s=now_s), "", now_s)
        self._enqueue(MemberFact(self.node_id, self._incarnation, MemberState.LEFT, "", None))
        self._gossip_round(now_s, sends)
        log.info("%s: leaving at incarnation %d", _short(self.node_id), self._incarnation)
        return sends

    def members(self) -> list[Member]:
        """Every known member, self included, dead and left ones until they are reaped."""
        return list(self._members.values())

    def live_members(self) -> list[Member]:
        """Members believed running (ALIVE or SUSPECT), self included unless we left."""
        return [m for m in self._members.values() if m.state <= MemberState.SUSPECT]

    def member(self, node_id: str) -> Member | None:
        return self._members.get(node_id)

    @property
    def live_count(self) -> int:
        """n for the protocol's log(n) scalings: live members including self."""
        return len(self._live_ids) + (0 if self._left else 1)

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def awareness_score(self) -> int:
        return self._awareness.score

    @property
    def pending_broadcasts(self) -> int:
        """Facts still waiting to be piggybacked (leave waits for this to reach 0)."""
        return len(self._broadcasts)

    # ------------------------------------------------------------------
    # Failure detection

    def _advance_probe(self, now_s: float, sends: list[Send]) -> None:
        probe = self._probe
        if probe is not None:
            if not probe.indirect_sent and now_s >= probe.timeout_s:
                self._send_ping_reqs(probe, now_s, sends)
            if now_s >= probe.end_s:
                self._probe = None
                self._probe_failed(probe, now_s, sends)
        if self._probe is None and now_s >= self._next_probe_s:
            self._start_probe(now_s, sends)

    def _start_probe(self, now_s: float, sends: list[Send]) -> None:
        interval_s = self._awareness.scale_timeout_s(self.config.probe_interval_s)
        self._next_probe_s = now_s + interval_s
        target = self._next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        timeout_s = now_s + self._awareness.scale_timeout_s(self.config.probe_timeout_s)
        self._probe = _Probe(target.node_id, seq, timeout_s, now_s + interval_s)
        ping = Ping(seq, target.node_id, self._piggyback(target.node_id, PIGGYBACK_BYTES_MAX))
        sends.append(Send(target.address, ping))

    def _next_probe_target(self) -> Member | None:
        """Round-robin over a shuffled list; reshuffled after each pass (SWIM section 4.3)."""
        for _ in range(len(self._probe_order) + 2):
            if self._probe_index >= len(self._probe_order):
                self._probe_order = list(self._live_ids)
                self._rng.shuffle(self._probe_order)
                self._probe_index = 0
                if not self._probe_order:
                    return None
            node_id = self._probe_order[self._probe_index]
            self._probe_index += 1
            member = self._members.get(node_id)
            if member is not None and member.state <= MemberState.SUSPECT and node_id != self.node_id:
                return member
        return None

    def _send_ping_reqs(self, probe: _Probe, now_s: float, sends: list[Send]) -> None:
        probe.indirect_sent = True
        target = self._members.get(probe.target_id)
        if target is None:
            return
        relays = self._pick_live(self.config.indirect_checks, exclude=probe.target_id)
        nack_timeout_s = min(NACK_TIMEOUT_S_MAX, NACK_TIMEOUT_FRACTION * max(0.0, probe.end_s - now_s))
        for relay_id in relays:
            relay = self._members[relay_id]
            req = PingReq(
                probe.seq, target.node_id, target.address.host, target.address.port, nack_timeout_s,
                self._piggyback(relay_id, PIGGYBACK_BYTES_MAX),
            )
            sends.append(Send(relay.address, req))
        probe.nacks_expected = len(relays)

    def _probe_failed(self, probe: _Probe, now_s: float, sends: list[Send]) -> None:
        # Lifeguard: with relays, only the nacks we did not get count against
        # our own health (the relays could talk to us, so the target is the
        # problem); without relays, any failed probe does.
        if probe.nacks_expected > 0:
            self._awareness.apply_delta(probe.nacks_expected - probe.nacks)
        else:
            self._awareness.apply_delta(1)
        target = self._members.get(probe.target_id)
        if target is None or target.state > MemberState.SUSPECT:
            return
        fact = MemberFact(target.node_id, target.incarnation, MemberState.SUSPECT, self.node_id, None)
        self._apply_local(fact, now_s)
        # Tell the suspect first, so it can refute before the word spreads.
        sends.append(Send(target.address, Gossip((fact,))))

    def _on_ack(self, seq: int, sends: list[Send]) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq:
            self._probe = None
            self._awareness.apply_delta(-1)
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            sends.append(Send(relay.requester, Ack(relay.requester_seq, self._piggyback(None, PIGGYBACK_BYTES_MAX))))

    def _relay(self, sender: Address, req: PingReq, now_s: float, sends: list[Send]) -> None:
        if len(self._relays) >= RELAY_PROBES_MAX:
            log.debug("%s: relay table full, ignoring ping-req from %s", _short(self.node_id), sender)
            return
        seq = self._next_seq()
        deadline_s = now_s + req.nack_timeout_s
        self._relays[seq] = _Relay(sender, req.seq, deadline_s)
        heapq.heappush(self._relay_heap, (deadline_s, seq))
        target = Address(req.target_host, req.target_port)
        sends.append(Send(target, Ping(seq, req.target_id, self._piggyback(req.target_id, PIGGYBACK_BYTES_MAX))))

    def _expire_relays(self, now_s: float, sends: list[Send]) -> None:
        heap = self._relay_heap
        while heap and heap[0][0] <= now_s:
            _, seq = heapq.heappop(heap)
            relay = self._relays.pop(seq, None)
            if relay is not None:
                sends.append(Send(relay.requester, Nack(relay.requester_seq)))

    def _expire_suspicions(self, now_s: float, sends: list[Send]) -> None:
        heap = self._suspicion_heap
        while heap and heap[0][0] <= now_s:
            _, node_id = heapq.heappop(heap)
            suspicion = self._suspicions.get(node_id)
            if suspicion is None or suspicion.deadline_s() > now_s:
                continue  # refuted, or an entry superseded by a later one
            member = self._members[node_id]
            assert member.state == MemberState.SUSPECT
            fact = MemberFact(node_id, member.incarnation, MemberState.DEAD, self.node_id, None)
            self._apply_local(fact, now_s)

    # ------------------------------------------------------------------
    # Facts

    def _merge(self, facts: Sequence[MemberFact], now_s: float, sends: list[Send]) -> None:
        members = self._members
        for fact in facts:
            old = members.get(fact.node_id)
            if old is not None:
                # Fast path for the common case, a fact we already hold or
                # an older one (checked again, fully, by _apply).
                incarnation = fact.incarnation
                if incarnation < old.incarnation:
                    continue
                if incarnation == old.incarnation and fact.state <= old.state and fact.state != _SUSPECT:
                    continue
            if self._apply(fact, now_s) and fact.node_id != self.node_id:
                self._enqueue(fact)

    def _apply_local(self, fact: MemberFact, now_s: float) -> None:
        """Apply a fact we originate, and queue it for gossip."""
        if self._apply(fact, now_s):
            self._enqueue(fact)

    def _apply(self, fact: MemberFact, now_s: float) -> bool:
        """Merge one fact into our view; True if it was news (to be gossiped on)."""
        if fact.node_id == self.node_id:
            return self._apply_about_self(fact, now_s)
        old = self._members.get(fact.node_id)
        if old is None:
            # Only a fact that says the member runs, and says where, introduces it.
            if fact.state > MemberState.SUSPECT or fact.meta is None:
                return False
            if len(self._members) >= MEMBERS_MAX:
                log.warning("%s: MEMBERS_MAX reached, ignoring new member %s", _short(self.node_id), _short(fact.node_id))
                return False
            self._set_member(
                self._member_from(fact.node_id, fact.meta, fact.incarnation, fact.state, now_s),
                fact.accuser_id, now_s,
            )
            log.debug("%s: learned %s (%s)", _short(self.node_id), _short(fact.node_id), fact.state.name)
            return True
        if fact.state == MemberState.SUSPECT and old.state == MemberState.SUSPECT:
            if fact.incarnation < old.incarnation:
                return False
            news = False
            if fact.incarnation > old.incarnation:
                self._set_member(dataclasses.replace(old, incarnation=fact.incarnation), fact.accuser_id, now_s)
                news = True
            suspicion = self._suspicions[fact.node_id]
            if suspicion.confirm(fact.accuser_id):
                heapq.heappush(self._suspicion_heap, (suspicion.deadline_s(), fact.node_id))
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
        self._set_member(new, fact.accuser_id, now_s)
        if new.state != old.state:
            level = logging.DEBUG if new.state == MemberState.ALIVE and old.state == MemberState.ALIVE else logging.INFO
            log.log(
                level, "%s: %s is %s (incarnation %d%s)", _short(self.node_id), _short(fact.node_id),
                new.state.name, fact.incarnation, f", by {_short(fact.accuser_id)}" if fact.accuser_id else "",
            )
        return True

    def _apply_about_self(self, fact: MemberFact, now_s: float) -> bool:
        if self._left or fact.incarnation < self._incarnation:
            return False
        if fact.incarnation >= INCARNATION_MAX:
            # Nothing can refute it; a peer sending this is broken or hostile.
            log.warning("%s: ignoring a fact about us at the largest incarnation", _short(self.node_id))
            return False
        if fact.state == MemberState.ALIVE and fact.incarnation == self._incarnation:
            return False  # our own current fact, echoed back
        # Suspected, declared dead or left at our incarnation or later, or an
        # ALIVE from a previous life with a higher incarnation: refute.
        self._incarnation = fact.incarnation + 1
        assert self._incarnation <= INCARNATION_MAX
        self._awareness.apply_delta(1)  # Lifeguard: needing to refute hints we are slow
        log.info(
            "%s: refuting %s at incarnation %d with %d", _short(self.node_id), fact.state.name,
            fact.incarnation, self._incarnation,
        )
        alive = MemberFact(self.node_id, self._incarnation, MemberState.ALIVE, "", self._meta)
        self._set_member(
            self._member_from(self.node_id, self._meta, self._incarnation, MemberState.ALIVE, now_s), "", now_s
        )
        self._enqueue(alive)
        return True

    def _set_member(self, new: Member, accuser_id: str, now_s: float) -> None:
        """Install ``new`` and keep every index in step with it."""
        node_id = new.node_id
        old = self._members.get(node_id)
        self._members[node_id] = new
        meta = MemberMeta(new.address.host, new.address.port, new.zone, new.capacity_bytes, new.protocol_version)
        self._facts[node_id] = MemberFact(node_id, new.incarnation, new.state, accuser_id, meta)
        self.version += 1
        if node_id == self.node_id:
            return
        if old is None:
            # New members go to a random place in the probe order, the one
            # they displace to the end (memberlist), so nobody is skipped.
            self._probe_order.append(node_id)
            j = self._rng.randrange(len(self._probe_order))
            self._probe_order[j], self._probe_order[-1] = self._probe_order[-1], self._probe_order[j]
        old_state = None if old is None else old.state
        _index_update(self._live_ids, self._live_pos, node_id, new.state <= MemberState.SUSPECT)
        _index_update(self._dead_ids, self._dead_pos, node_id, new.state == MemberState.DEAD)
        if old_state == MemberState.SUSPECT and new.state != MemberState.SUSPECT:
            del self._suspicions[node_id]
        if new.state == MemberState.SUSPECT and old_state != MemberState.SUSPECT:
            n = self.live_count
            suspicion = Suspicion(
                start_s=now_s, accuser_id=accuser_id, k=self.config.suspicion_confirmations_expected(n),
                timeout_s_min=self.config.suspicion_timeout_s_min(n),
                timeout_s_max=self.config.suspicion_timeout_s_max(n),
            )
            self._suspicions[node_id] = suspicion
            heapq.heappush(self._suspicion_heap, (suspicion.deadline_s(), node_id))
        if new.state in (MemberState.DEAD, MemberState.LEFT) and new.state != old_state:
            reap_s = self.config.dead_reap_s if new.state == MemberState.DEAD else self.config.left_reap_s
            heapq.heappush(self._reap_heap, (new.state_since_s + reap_s, node_id))

    def _reap(self, now_s: float) -> None:
        heap = self._reap_heap
        while heap and heap[0][0] <= now_s:
            _, node_id = heapq.heappop(heap)
            member = self._members.get(node_id)
            if member is None or node_id == self.node_id:
                continue
            if member.state == MemberState.DEAD:
                reap_s = self.config.dead_reap_s
            elif member.state == MemberState.LEFT:
                reap_s = self.config.left_reap_s
            else:
                continue
            if member.state_since_s + reap_s > now_s:
                continue
            del self._members[node_id]
            del self._facts[node_id]
            _index_update(self._dead_ids, self._dead_pos, node_id, False)
            self.version += 1
            log.debug("%s: forgot %s (%s)", _short(self.node_id), _short(node_id), member.state.name)

    # ------------------------------------------------------------------
    # Dissemination

    def _enqueue(self, fact: MemberFact) -> None:
        self._broadcasts.enqueue(fact, fact_size_bytes(fact))

    def _piggyback(self, to_id: str | None, bytes_max: int) -> tuple[MemberFact, ...]:
        """Updates for one message to ``to_id``; a suspect's own suspicion goes first."""
        facts: list[MemberFact] = []
        budget_bytes = bytes_max - MESSAGE_OVERHEAD_BYTES
        if to_id is not None:
            suspicion = self._suspicions.get(to_id)
            if suspicion is not None:
                member = self._members[to_id]
                fact = MemberFact(to_id, member.incarnation, MemberState.SUSPECT, suspicion.accuser_id, None)
                facts.append(fact)
                budget_bytes -= fact_size_bytes(fact)
        if len(self._broadcasts):
            facts.extend(self._broadcasts.take(
                bytes_max=budget_bytes, count_max=UPDATES_PER_MESSAGE_MAX - len(facts),
                transmit_limit=self.config.retransmit_limit(self.live_count),
            ))
        return tuple(facts)

    def _gossip_round(self, now_s: float, sends: list[Send]) -> None:
        interval_s = self.config.gossip_interval_s
        # Keep the cadence, unless the queue sat empty past a round.
        self._next_gossip_s += interval_s
        if self._next_gossip_s <= now_s:
            self._next_gossip_s = now_s + interval_s
        for node_id in self._pick_live(self.config.gossip_fanout, exclude=None):
            updates = self._piggyback(None, GOSSIP_BYTES_MAX)
            if not updates:
                break
            sends.append(Send(self._members[node_id].address, Gossip(updates)))

    def _state_facts(self) -> tuple[MemberFact, ...]:
        """Our full view for a PushPull: self first, live members before the rest, capped."""
        facts = self._facts
        if len(facts) <= PUSH_PULL_MEMBERS_MAX:
            return tuple(facts.values())
        chosen = [facts[self.node_id]] + [facts[i] for i in self._live_ids]
        chosen += [f for i, f in facts.items() if self._members[i].state > MemberState.SUSPECT]
        return tuple(chosen[:PUSH_PULL_MEMBERS_MAX])

    def _contact_seeds(self, now_s: float, sends: list[Send]) -> None:
        self._next_join_s = now_s + self.config.join_retry_interval_s
        state = self._state_facts()
        for seed in self._seeds:
            sends.append(Send(seed, PushPull(False, state)))

    # ------------------------------------------------------------------
    # Helpers

    def _member_from(
        self, node_id: str, meta: MemberMeta, incarnation: int, state: MemberState, now_s: float
    ) -> Member:
        return Member(
            node_id, Address(meta.host, meta.port), meta.zone, meta.capacity_bytes, meta.protocol_version,
            incarnation, state, now_s,
        )

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % SEQ_MODULUS
        return self._seq

    def _pick(self, ids: list[str]) -> str:
        return ids[self._rng.randrange(len(ids))]

    def _pick_live(self, k: int, *, exclude: str | None) -> list[str]:
        """Up to ``k`` distinct random live members other than ``exclude``."""
        ids = self._live_ids
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


def _index_update(ids: list[str], pos: dict[str, int], node_id: str, present: bool) -> None:
    """Add or remove ``node_id`` in a list-with-positions index, O(1) (swap with the last)."""
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
