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
  above the one heard and gossiping ALIVE, and sends that ALIVE straight to
  the accuser too (whose suspicion runs out first). Whoever is passed an
  accusation older than an ALIVE it holds answers the sender with the ALIVE,
  so a member that heard a suspicion after its refutation's gossip was over
  does not keep it until it runs out.
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
  member (less often in bigger clusters, so that its bytes per second stay
  flat: ``MembershipConfig.push_pull_interval_s_for``), and (serf's
  reconnect, at odds dead / live) one with a random dead member, so that
  whatever gossip missed, including both sides of a healed partition, is
  repaired. A DEAD in a remote full state becomes a local suspicion
  (memberlist's mergeState), so a healed partition does not kill live
  members outright. Joining is a PushPull with each seed, retried until one
  answers.
* Local health (Lifeguard). Failed probes and missing nacks raise an awareness
  score that stretches this node's probe interval and timeout (``awareness.py``).
* Signed records (issue 12). With a ``signer`` and a ``verifier`` (the
  daemon's; the simulation runs without), what a member says about itself
  (ALIVE at an incarnation with its meta, or LEFT) is a record signed with
  its own key (``records.py``), and a fact that carries meta must carry the
  member's valid record. Others may accuse (SUSPECT, DEAD) only at an
  incarnation the member has signed: one we hold already, or one whose
  record the accusation carries. So nobody but the member can make it LEFT
  or push its incarnation, its own refutation (signed, one above) always
  wins, and a signed incarnation moves at most ``INCARNATION_STEP_MAX``
  above the one we hold. Ping-reqs are relayed only to a member we hold, at
  the address of its record, and every send names its target's node id
  (``Send.to_id``), so the transport never hands a member's traffic to
  another that claims its address.
* Leave and reap. ``leave`` announces LEFT; DEAD and LEFT members are kept for
  ``dead_reap_s``/``left_reap_s`` and then forgotten. A DEAD, LEFT or otherwise
  unknown-meta fact about a member we do not know is ignored, so a reaped
  member is not brought back by a late fact about its end.

Times (``now_s``, ``Member.state_since_s``) are in the caller's clock; the
trio driver uses ``trio.current_time()``, not wall time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from typing import Callable, Sequence

from p2pfs import wire
from p2pfs.address import Address
from p2pfs.ids import short_id

from .awareness import Awareness
from .broadcast import BroadcastQueue
from .config import MembershipConfig
from .messages import (
    GOSSIP_BYTES_MAX,
    INCARNATION_MAX,
    MESSAGE_OVERHEAD_BYTES,
    NACK_TIMEOUT_S_MAX,
    PIGGYBACK_BYTES_MAX,
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
from .probes import Probe, Relay, Relays
from .records import RecordSigner
from .view import Member, MemberView

__all__ = ["Member", "MemberState", "Membership", "Send"]

log = logging.getLogger(__name__)

# Seed addresses kept for joining.
SEEDS_MAX = 64
# A relay nacks after this fraction of the time the requester has left in its
# probe period, so the nack arrives before the requester stops counting
# (Lifeguard nacks at 80% of the probe timeout).
NACK_TIMEOUT_FRACTION = 0.8
# Largest step by which a member's signed incarnation may move past the one we
# hold. Incarnations start from the wall clock in seconds and grow by one per
# refutation, so a restart after a long absence is the biggest honest step;
# 2^22 s (48 days) covers any absence shorter than dead_reap_s and
# left_reap_s (24 h), after which the member is forgotten and starts afresh.
# It keeps INCARNATION_MAX out of reach: 2^41 such steps.
INCARNATION_STEP_MAX = 2**22


_SUSPECT = MemberState.SUSPECT
_DEAD = MemberState.DEAD


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """An action: send ``msg`` to ``to`` (one-way, best effort).

    ``to_id`` is the node id the message is meant for (None only for a seed,
    known by address alone): the transport must deliver it to that node or
    not at all, whoever else claims the address.
    """

    to: Address
    msg: wire.Message
    to_id: str | None


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
        signer: RecordSigner | None = None,
        verifier: Callable[[MemberFact], bool] | None = None,
        view_factory: Callable[[str, MembershipConfig, random.Random], MemberView] = MemberView,
    ) -> None:
        """``signer`` and ``verifier`` (both or neither) make this a signing member (see the module docstring).

        ``view_factory(node_id, config, rng)`` makes the member table: ``MemberView``, or a
        simulation's ``compact.CompactView``, which holds the same in a fraction of the memory.
        """
        assert 0 <= incarnation_initial < INCARNATION_MAX
        assert (signer is None) == (verifier is None), "a signing member both signs and verifies"
        assert signer is None or signer.node_id == node_id
        self.config = config
        self._signer = signer
        self._verify = verifier
        self.node_id = node_id
        self.address = address
        self._rng = rng
        self._meta = MemberMeta(address.host, address.port, zone, capacity_bytes, protocol_version)
        self._incarnation = incarnation_initial
        self._left = False
        # Every member we know, self included, with its indexes.
        self._view = view_factory(node_id, config, rng)
        self._probe: Probe | None = None
        self._seq = rng.randrange(SEQ_MODULUS)
        self._relays = Relays()
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
        self._set_self(MemberState.ALIVE, now_s)

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

    def handle(self, sender: Address, msg: wire.Message, now_s: float, *, sender_id: str | None = None) -> list[Send]:
        """Process one message from ``sender`` (the address replies go to), node ``sender_id`` if known."""
        sends: list[Send] = []
        if isinstance(msg, Ping):
            self._merge(msg.updates, now_s, sends, sender=sender, sender_id=sender_id)
            if msg.target_id != self.node_id:
                log.debug("%s: ping from %s for another node %s", short_id(self.node_id), sender, short_id(msg.target_id))
                return sends
            sends.append(Send(sender, Ack(msg.seq, self._piggyback(None, PIGGYBACK_BYTES_MAX)), sender_id))
        elif isinstance(msg, Ack):
            self._merge(msg.updates, now_s, sends, sender=sender, sender_id=sender_id)
            self._on_ack(msg.seq, sends)
        elif isinstance(msg, Nack):
            probe = self._probe
            if probe is not None and probe.seq == msg.seq and probe.indirect_sent:
                probe.nacks += 1
        elif isinstance(msg, PingReq):
            self._merge(msg.updates, now_s, sends, sender=sender, sender_id=sender_id)
            self._relay(sender, sender_id, msg, now_s, sends)
        elif isinstance(msg, Gossip):
            self._merge(msg.updates, now_s, sends, sender=sender, sender_id=sender_id)
        elif isinstance(msg, PushPull):
            # A remote view that someone is DEAD becomes our own suspicion
            # (memberlist's mergeState): the member gets a suspicion timeout to
            # refute in, so the two sides of a healed partition, which hold
            # each other dead, do not kill each other's live members outright.
            # A signing member keeps the accused member's record along,
            # for a member it holds (a late DEAD must not bring back one
            # that was forgotten).
            facts = [f if f.state != _DEAD else self._as_suspicion(f) for f in msg.members]
            self._merge(facts, now_s, sends)
            if not msg.is_reply:
                # Certificates only of members the requester did not list.
                listed = {f.node_id for f in msg.members}
                reply = self._view.state_facts(lambda node_id: node_id not in listed)
                sends.append(Send(sender, PushPull(True, reply), sender_id))
        else:
            raise TypeError(f"not a membership message: {type(msg).__name__}")
        return sends

    def tick(self, now_s: float) -> list[Send]:
        """Run every timer that is due at ``now_s``."""
        sends: list[Send] = []
        self._expire_relays(now_s, sends)
        self._expire_suspicions(now_s, sends)
        self._view.reap(now_s)
        if not self._left:
            self._advance_probe(now_s, sends)
            if now_s >= self._next_push_pull_s:
                self._next_push_pull_s = now_s + self.config.push_pull_interval_s_for(self.live_count)
                if self._view.live_ids:
                    target = self._view.members[self._view.pick(self._view.live_ids)]
                    sends.append(Send(target.address, PushPull(False, self._request_state()), target.node_id))
            if now_s >= self._next_reconnect_s:
                self._next_reconnect_s = now_s + self.config.reconnect_interval_s
                if self._view.dead_ids and self._reconnect_now():
                    target = self._view.members[self._view.pick(self._view.dead_ids)]
                    sends.append(Send(target.address, PushPull(False, self._request_state()), target.node_id))
            if self._seeds and not self._view.live_ids and now_s >= self._next_join_s:
                self._contact_seeds(now_s, sends)
        if now_s >= self._next_gossip_s and len(self._broadcasts) and self._view.live_ids:
            self._gossip_round(now_s, sends)
        return sends

    def next_deadline_s(self) -> float:
        """The latest time ``tick`` must next be called (it may be called earlier)."""
        deadline = math.inf
        if len(self._broadcasts) and self._view.live_ids:
            deadline = self._next_gossip_s
        if not self._left:
            deadline = min(deadline, self._next_probe_s, self._next_push_pull_s)
            probe = self._probe
            if probe is not None:
                deadline = min(deadline, probe.next_deadline_s())
            if self._view.dead_ids:
                deadline = min(deadline, self._next_reconnect_s)
            if self._seeds and not self._view.live_ids:
                deadline = min(deadline, self._next_join_s)
        for heap in (self._view.suspicion_heap, self._view.reap_heap):
            if heap:
                deadline = min(deadline, heap[0][0])
        return min(deadline, self._relays.next_deadline_s())

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
        self._enqueue(self._set_self(MemberState.LEFT, now_s, cert=False))
        self._gossip_round(now_s, sends)
        log.info("%s: leaving at incarnation %d", short_id(self.node_id), self._incarnation)
        return sends

    def members(self) -> list[Member]:
        """Every known member, self included, dead and left ones until they are reaped."""
        return list(self._view.members.values())

    def live_members(self) -> list[Member]:
        """Members believed running (ALIVE or SUSPECT), self included unless we left."""
        return [m for m in self._view.members.values() if m.state <= MemberState.SUSPECT]

    def member(self, node_id: str) -> Member | None:
        return self._view.members.get(node_id)

    @property
    def live_count(self) -> int:
        """n for the protocol's log(n) scalings: live members including self."""
        return len(self._view.live_ids) + (0 if self._left else 1)

    @property
    def version(self) -> int:
        """Bumped on every change to the member table."""
        return self._view.version

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
        target = self._view.next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        timeout_s = now_s + self._awareness.scale_timeout_s(self.config.probe_timeout_s)
        self._probe = Probe(target.node_id, seq, timeout_s, now_s + interval_s)
        ping = Ping(seq, target.node_id, self._piggyback(target.node_id, PIGGYBACK_BYTES_MAX))
        sends.append(Send(target.address, ping, target.node_id))

    def _send_ping_reqs(self, probe: Probe, now_s: float, sends: list[Send]) -> None:
        probe.indirect_sent = True
        target = self._view.members.get(probe.target_id)
        if target is None:
            return
        relays = self._view.pick_live(self.config.indirect_checks, exclude=probe.target_id)
        nack_timeout_s = min(NACK_TIMEOUT_S_MAX, NACK_TIMEOUT_FRACTION * max(0.0, probe.end_s - now_s))
        for relay_id in relays:
            relay = self._view.members[relay_id]
            req = PingReq(
                probe.seq, target.node_id, target.address.host, target.address.port, nack_timeout_s,
                self._piggyback(relay_id, PIGGYBACK_BYTES_MAX),
            )
            sends.append(Send(relay.address, req, relay_id))
        probe.nacks_expected = len(relays)

    def _probe_failed(self, probe: Probe, now_s: float, sends: list[Send]) -> None:
        # Lifeguard: with relays, only the nacks we did not get count against
        # our own health (the relays could talk to us, so the target is the
        # problem); without relays, any failed probe does.
        if probe.nacks_expected > 0:
            self._awareness.apply_delta(probe.nacks_expected - probe.nacks)
        else:
            self._awareness.apply_delta(1)
        target = self._view.members.get(probe.target_id)
        if target is None or target.state > MemberState.SUSPECT:
            return
        fact = self._view.accusation(target, MemberState.SUSPECT, self.node_id)
        self._apply_local(fact, now_s)
        # Tell the suspect first, so it can refute before the word spreads.
        sends.append(Send(target.address, Gossip((fact,)), target.node_id))

    def _on_ack(self, seq: int, sends: list[Send]) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq:
            self._probe = None
            self._awareness.apply_delta(-1)
            return
        relay = self._relays.pop(seq)
        if relay is not None:
            ack = Ack(relay.requester_seq, self._piggyback(None, PIGGYBACK_BYTES_MAX))
            sends.append(Send(relay.requester, ack, relay.requester_id))

    def _relay(self, sender: Address, sender_id: str | None, req: PingReq, now_s: float, sends: list[Send]) -> None:
        # Only a member we hold, at the address its record gave: a ping-req
        # must not make us dial an address of the requester's choosing.
        target = self._view.members.get(req.target_id)
        if target is None or target.node_id == self.node_id or target.address != Address(req.target_host, req.target_port):
            log.debug("%s: ping-req from %s for %s at %s:%d, not a member there; ignored", short_id(self.node_id),
                      sender, short_id(req.target_id), req.target_host, req.target_port)
            return
        if self._relays.full:
            log.debug("%s: relay table full, ignoring ping-req from %s", short_id(self.node_id), sender)
            return
        seq = self._next_seq()
        deadline_s = now_s + req.nack_timeout_s
        self._relays.add(seq, Relay(sender, req.seq, deadline_s, sender_id))
        ping = Ping(seq, target.node_id, self._piggyback(target.node_id, PIGGYBACK_BYTES_MAX))
        sends.append(Send(target.address, ping, target.node_id))

    def _expire_relays(self, now_s: float, sends: list[Send]) -> None:
        for relay in self._relays.expire(now_s):
            sends.append(Send(relay.requester, Nack(relay.requester_seq), relay.requester_id))

    def _expire_suspicions(self, now_s: float, sends: list[Send]) -> None:
        for member in self._view.expired_suspects(now_s):
            self._apply_local(self._view.accusation(member, MemberState.DEAD, self.node_id), now_s)

    # ------------------------------------------------------------------
    # Facts

    def _merge(self, facts: Sequence[MemberFact], now_s: float, sends: list[Send], *,
               sender: Address | None = None, sender_id: str | None = None) -> None:
        """Merge ``facts``; accusations older than a refutation we hold are answered to ``sender``."""
        members = self._view.members
        refuted: list[MemberFact] = []
        for fact in facts:
            old = members.get(fact.node_id)
            if old is not None:
                # Fast path for the common case, a fact we already hold or
                # an older one (checked again, fully, by _apply).
                incarnation = fact.incarnation
                if incarnation < old.incarnation:
                    if fact.node_id == self.node_id and (fact.state == _SUSPECT or fact.state == _DEAD):
                        self._reassert()
                    elif (sender is not None and (fact.state == _SUSPECT or fact.state == _DEAD)
                          and old.state == MemberState.ALIVE):
                        refuted.append(self._view.facts[fact.node_id])
                    continue
                if incarnation == old.incarnation and fact.state <= old.state and fact.state != _SUSPECT:
                    continue
            if self._verify is not None and not self._believable(fact):
                continue
            if self._apply(fact, now_s):
                if fact.node_id != self.node_id:
                    self._enqueue(fact)
                else:
                    self._refute_to_accuser(fact, sends)
        if refuted:
            assert sender is not None
            self._answer_stale_accusations(refuted, sender, sender_id, sends)

    def _believable(self, fact: MemberFact) -> bool:
        """A signing member's check of a fact that would be news (see the module docstring)."""
        assert self._verify is not None
        if fact.node_id == self.node_id and fact.state in (_SUSPECT, _DEAD) and fact.incarnation <= self._incarnation:
            # An accusation of us at an incarnation we reached: we refute it with our own record,
            # whatever record it carries. Our verifier may no longer hold our certificate (it
            # keeps records.CERTIFICATES_MAX, oldest out first); refusing would leave us dead.
            return True
        held = self._view.members.get(fact.node_id)
        if fact.meta is None:
            # No record: only an accusation at an incarnation the member has signed.
            if fact.state in (_SUSPECT, _DEAD) and held is not None and fact.incarnation <= held.incarnation:
                return True
            log.debug("%s: refused %s of %s at incarnation %d: no record of it", short_id(self.node_id),
                      fact.state.name, short_id(fact.node_id), fact.incarnation)
            return False
        if held is not None and fact.incarnation > held.incarnation + INCARNATION_STEP_MAX:
            log.info("%s: refused %s of %s at incarnation %d: more than %d above %d", short_id(self.node_id),
                     fact.state.name, short_id(fact.node_id), fact.incarnation, INCARNATION_STEP_MAX,
                     held.incarnation)
            return False
        return self._verify(fact)

    def _as_suspicion(self, fact: MemberFact) -> MemberFact:
        """A DEAD from a remote full state, as our own suspicion (see ``handle``)."""
        if self._signer is not None and fact.node_id in self._view.members and fact.signature:
            return MemberFact(fact.node_id, fact.incarnation, _SUSPECT, self.node_id, fact.meta, fact.signature)
        return MemberFact(fact.node_id, fact.incarnation, _SUSPECT, self.node_id, None)

    def _reassert(self) -> None:
        """Gossip our current ALIVE again: someone accused us at an incarnation we have refuted.

        The accuser (or whoever passed the accusation on) missed our
        refutation, every copy of it lost, and would declare us dead when its
        suspicion times out. Our fact goes first on the next message we send,
        which is usually the ack to the very ping that carried the accusation
        (a suspect's suspicion rides first on pings to it). memberlist drops
        such an accusation silently; under 10% loss in the simulation that
        left an observer holding a refuted suspicion until it expired.
        """
        if not self._left:
            self._enqueue(self._view.facts[self.node_id])

    def _refute_to_accuser(self, accusation: MemberFact, sends: list[Send]) -> None:
        """Send the refutation of ``accusation`` straight to its accuser too, not only to gossip.

        The accuser's suspicion is the oldest, so it is the first to run out
        into DEAD, and the accuser is the member gossip may reach last: a
        refutation leaves in random fan-outs and on probes, and at 50 real
        processes under load it took 3.6-4.6 s to reach anyone, about the
        suspicion floor (docs/BENCHMARKS.md, "Real processes at 50"). Sent
        directly, it is in the accuser's hands one message later, whoever
        passed the accusation on. Lifeguard's refutation is gossip only, as
        in memberlist; this costs one message per refutation.
        """
        accuser = self._view.members.get(accusation.accuser_id)
        if accuser is None or accuser.node_id == self.node_id:
            return  # an accusation without an accuser (LEFT), or one we do not know
        sends.append(Send(accuser.address, Gossip((self._view.facts[self.node_id],)), accuser.node_id))

    def _answer_stale_accusations(self, refutations: list[MemberFact], sender: Address, sender_id: str | None,
                                  sends: list[Send]) -> None:
        """Send ``sender``, who passed us accusations older than these refutations, the refutations.

        A member that hears a suspicion after the refutation's gossip has
        died out (it was starting, or busy) holds it until its timer runs out
        and declares a live member dead (seen in 50-process start-ups, 14 s
        after the refutation: docs/BENCHMARKS.md).
        It gossips the stale suspicion on, though, and whoever holds the
        newer ALIVE hears it: answered, the member that needs the refutation
        has it within a gossip round. One message, to the sender only (no
        third party is ever sent anything), at most a gossip message's bytes.
        """
        budget_bytes = GOSSIP_BYTES_MAX - MESSAGE_OVERHEAD_BYTES
        facts: list[MemberFact] = []
        for fact in refutations[:UPDATES_PER_MESSAGE_MAX]:
            budget_bytes -= fact_size_bytes(fact)
            if budget_bytes < 0:
                break
            facts.append(fact)
        if facts:
            sends.append(Send(sender, Gossip(tuple(facts)), sender_id))

    def _apply_local(self, fact: MemberFact, now_s: float) -> None:
        """Apply a fact we originate, and queue it for gossip."""
        if self._apply(fact, now_s):
            self._enqueue(fact)

    def _apply(self, fact: MemberFact, now_s: float) -> bool:
        """Merge one fact into our view; True if it was news (to be gossiped on)."""
        if fact.node_id == self.node_id:
            return self._apply_about_self(fact, now_s)
        return self._view.apply(fact, now_s, self_live=not self._left)

    def _apply_about_self(self, fact: MemberFact, now_s: float) -> bool:
        if self._left or fact.incarnation < self._incarnation:
            return False
        if fact.incarnation >= INCARNATION_MAX:
            # Nothing can refute it; a peer sending this is broken or hostile.
            log.warning("%s: ignoring a fact about us at the largest incarnation", short_id(self.node_id))
            return False
        if fact.state == MemberState.ALIVE and fact.incarnation == self._incarnation:
            return False  # our own current fact, echoed back
        # Suspected, declared dead or left at our incarnation or later, or an
        # ALIVE from a previous life with a higher incarnation: refute.
        self._incarnation = fact.incarnation + 1
        assert self._incarnation <= INCARNATION_MAX
        self._awareness.apply_delta(1)  # Lifeguard: needing to refute hints we are slow
        log.info(
            "%s: refuting %s at incarnation %d with %d", short_id(self.node_id), fact.state.name,
            fact.incarnation, self._incarnation,
        )
        self._enqueue(self._set_self(MemberState.ALIVE, now_s))
        return True

    # ------------------------------------------------------------------
    # Dissemination

    def _enqueue(self, fact: MemberFact) -> None:
        self._broadcasts.enqueue(fact, fact_size_bytes(fact))

    def _piggyback(self, to_id: str | None, bytes_max: int) -> tuple[MemberFact, ...]:
        """Updates for one message to ``to_id``; a suspect's own suspicion goes first."""
        facts: list[MemberFact] = []
        budget_bytes = bytes_max - MESSAGE_OVERHEAD_BYTES
        if to_id is not None:
            suspicion = self._view.suspicions.get(to_id)
            if suspicion is not None:
                fact = self._view.accusation(self._view.members[to_id], MemberState.SUSPECT, suspicion.accuser_id)
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
        for node_id in self._view.pick_live(self.config.gossip_fanout, exclude=None):
            updates = self._piggyback(None, GOSSIP_BYTES_MAX)
            if not updates:
                break
            sends.append(Send(self._view.members[node_id].address, Gossip(updates), node_id))

    def _reconnect_now(self) -> bool:
        """Whether this reconnect round tries a dead member: with probability dead / live (serf).

        Every member tries one random dead member per round with that
        probability, so each dead member is tried by about one member per
        ``reconnect_interval_s`` at any cluster size, instead of by all of
        them: a full state sent to a member that is usually really dead costs
        as much as a periodic exchange. Two halves of a partition hold each
        other dead at odds near 1, so they still find each other within a
        round or two of the heal.
        """
        dead_count = len(self._view.dead_ids)
        live_count = max(1, self.live_count)
        return dead_count >= live_count or self._rng.random() < dead_count / live_count

    def _contact_seeds(self, now_s: float, sends: list[Send]) -> None:
        self._next_join_s = now_s + self.config.join_retry_interval_s
        state = self._request_state()
        for seed in self._seeds:
            sends.append(Send(seed, PushPull(False, state), None))

    # ------------------------------------------------------------------
    # Helpers

    def _request_state(self) -> tuple[MemberFact, ...]:
        """Our full state for a PushPull request: with our own certificate only (a seed may not
        know us yet); the reply carries those of members we did not list."""
        return self._view.state_facts(lambda node_id: node_id == self.node_id)

    def _set_self(self, state: MemberState, now_s: float, *, cert: bool = True) -> MemberFact:
        """Record our own ``state`` at our incarnation (signed, once per change); the fact to gossip.

        The certificate rides along where a receiver may not know us yet (an
        ALIVE: a join or a refutation), not on a LEAVE.
        """
        signature, cert_der = b"", b""
        if self._signer is not None:
            signature = self._signer.sign(self._incarnation, state, self._meta)
            cert_der = self._signer.cert_der
        self._view.set(
            Member.from_meta(self.node_id, self._meta, self._incarnation, state, now_s), "", now_s,
            self_live=not self._left, signature=signature, cert=cert_der,
        )
        return MemberFact(self.node_id, self._incarnation, state, "", self._meta, signature,
                          cert_der if cert else b"")

    def redraw_push_pull_phase(self, now_s: float) -> None:
        """Draw the next full-state exchange uniformly within the interval for the current size.

        For a simulation that installs a converged view in bulk
        (``p2pfs.sim.membership.CoreCluster.form``): a core's first exchange
        is due within ``push_pull_interval_s`` of its start, so thousands of
        members formed at once would all exchange their full state in the same
        30 s, where members that have run for a while spread their exchanges
        over the whole (longer) interval.
        """
        self._next_push_pull_s = now_s + self._rng.uniform(0, self.config.push_pull_interval_s_for(self.live_count))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % SEQ_MODULUS
        return self._seq
