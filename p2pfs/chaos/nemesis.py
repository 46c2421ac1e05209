"""The seeded nemesis: a schedule of faults, then the injection of each and its heal.

``schedule`` is pure: the seed, the fault kinds and the run's length give the
same faults with the same targets, parameters and times on every replay. Kinds
come round in seeded shuffles, so a run long enough for one round (about 90 s
with the chaos timings) injects every kind at least once. One fault is in
force at a time, with a quiet gap after each heal: the cluster is meant to
survive any single fault, and stacking them would also stack legitimate data
loss (two wiped replicas before repair) that the checker would have to excuse.
For the same reason a wipe never follows another wipe sooner than
``wipe_cooldown_s``, which leaves anti-entropy time to refill the first.

Kinds (the names used in the history and on the command line):

* ``kill``: SIGKILL a node, restart it with its data after a few seconds.
* ``wipe``: SIGKILL a node, delete its data dir for good, restart it empty
  (same identity: a replaced disk).
* ``pause-short``: SIGSTOP a node for less than the suspicion timeout's floor;
  nobody should declare it dead.
* ``pause-long``: SIGSTOP a node for longer than the worst-case detection time;
  it is declared dead, and after SIGCONT it must refute and rejoin.
* ``partition``: drop all packets between two sides (one node against the rest,
  or a minority against a majority).
* ``loss``: drop a fraction of all loopback packets at random.
* ``delay``: hold every loopback packet for a delay with jitter.
* ``skew``: move one or two nodes' wall clocks by seconds (the chaos clock
  shim, see ``cluster``), then back.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Callable

import trio

from p2pfs.chaos.cluster import CLOCK_SETTLE_S, Cluster, Timings
from p2pfs.chaos.history import Fault
from p2pfs.chaos.netns import Firewall

log = logging.getLogger(__name__)

KILL, WIPE, PAUSE_SHORT, PAUSE_LONG = "kill", "wipe", "pause-short", "pause-long"
PARTITION, LOSS, DELAY, SKEW = "partition", "loss", "delay", "skew"
FAULT_KINDS = (KILL, WIPE, PAUSE_SHORT, PAUSE_LONG, PARTITION, LOSS, DELAY, SKEW)

# Seconds of quiet after each heal before the next fault (uniform).
GAP_S_MIN, GAP_S_MAX = 2.0, 4.0
# How long a killed node stays down, and how long network faults and skew last (uniform, s).
DOWN_S_MIN, DOWN_S_MAX = 2.0, 5.0
NETWORK_FAULT_S_MIN, NETWORK_FAULT_S_MAX = 4.0, 8.0
# Fraction of packets lost, and per-packet delay and jitter (each way on loopback).
LOSS_FRACTION_MIN, LOSS_FRACTION_MAX = 0.02, 0.15
DELAY_MS_MIN, DELAY_MS_MAX = 20.0, 120.0
JITTER_FRACTION = 0.5  # jitter is up to this fraction of the delay
# Wall-clock offsets applied by skew, in seconds either way (below the HLC's 60 s drift limit
# and the certificates' 5 min tolerance, so only ordering is tested, not rejection).
SKEW_S_MIN, SKEW_S_MAX = 2.0, 8.0
# A short pause lasts this fraction of the suspicion timeout's floor.
SHORT_PAUSE_FRACTION = 0.5
# A long pause outlasts the worst-case detection time by this many seconds.
LONG_PAUSE_MARGIN_S = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedFault:
    """A fault as scheduled: when it starts (s after the run's start), what, on whom, how long."""

    start_s: float
    kind: str
    targets: tuple[str, ...]
    hold_s: float
    params: dict

    def __post_init__(self) -> None:
        assert self.kind in FAULT_KINDS, self.kind
        assert self.start_s >= 0 and self.hold_s > 0


def wipe_cooldown_s(timings: Timings) -> float:
    """Seconds between two wipes: three anti-entropy rounds plus time for the restart."""
    return 3 * timings.anti_entropy_interval_s + 15.0


def _plan_one(kind: str, rng: random.Random, names: list[str], timings: Timings) -> tuple[tuple[str, ...], float, dict]:
    membership = timings.membership()
    if kind in (KILL, WIPE):
        return (rng.choice(names),), rng.uniform(DOWN_S_MIN, DOWN_S_MAX), {}
    if kind == PAUSE_SHORT:
        return (rng.choice(names),), SHORT_PAUSE_FRACTION * membership.suspicion_timeout_s_min(len(names)), {}
    if kind == PAUSE_LONG:
        return (rng.choice(names),), membership.detection_bound_s(len(names)) + LONG_PAUSE_MARGIN_S, {}
    hold_s = rng.uniform(NETWORK_FAULT_S_MIN, NETWORK_FAULT_S_MAX)
    if kind == PARTITION:
        shuffled = rng.sample(names, len(names))
        minority = 1 if rng.random() < 0.5 else (len(names) - 1) // 2
        side_a, side_b = sorted(shuffled[:minority]), sorted(shuffled[minority:])
        return tuple(side_a), hold_s, {"side_a": side_a, "side_b": side_b}
    if kind == LOSS:
        return (), hold_s, {"fraction": round(rng.uniform(LOSS_FRACTION_MIN, LOSS_FRACTION_MAX), 3)}
    if kind == DELAY:
        delay_ms = round(rng.uniform(DELAY_MS_MIN, DELAY_MS_MAX), 1)
        return (), hold_s, {"delay_ms": delay_ms, "jitter_ms": round(delay_ms * rng.uniform(0, JITTER_FRACTION), 1),
                            "seed": rng.randrange(2**31)}
    assert kind == SKEW
    chosen = sorted(rng.sample(names, rng.choice((1, 2))))
    offsets = {name: round(rng.choice((-1, 1)) * rng.uniform(SKEW_S_MIN, SKEW_S_MAX), 3) for name in chosen}
    return tuple(chosen), hold_s, {"offsets_s": offsets}


def schedule(seed: int, kinds: tuple[str, ...], duration_s: float, names: list[str],
             timings: Timings) -> list[PlannedFault]:
    """The faults of a run, in order, all ending within ``duration_s``. Pure."""
    assert kinds and all(k in FAULT_KINDS for k in kinds)
    rng = random.Random(f"nemesis-{seed}")
    planned: list[PlannedFault] = []
    at_s = rng.uniform(GAP_S_MIN, GAP_S_MAX)
    last_wipe_s = -wipe_cooldown_s(timings)
    round_kinds: list[str] = []
    while True:
        if not round_kinds:
            round_kinds = rng.sample(kinds, len(kinds))
        kind = round_kinds.pop()
        if kind == WIPE and at_s - last_wipe_s < wipe_cooldown_s(timings):
            kind = KILL
        targets, hold_s, params = _plan_one(kind, rng, names, timings)
        if at_s + hold_s > duration_s:
            return planned
        planned.append(PlannedFault(round(at_s, 3), kind, targets, round(hold_s, 3), params))
        if kind == WIPE:
            last_wipe_s = at_s
        at_s += hold_s + rng.uniform(GAP_S_MIN, GAP_S_MAX)


class Nemesis:
    """Injects a schedule of faults into a cluster, healing each before the next."""

    def __init__(self, *, cluster: Cluster, firewall: Firewall, clock: Callable[[], float],
                 record: Callable[[Fault], None]) -> None:
        self._cluster = cluster
        self._firewall = firewall
        self._clock = clock
        self._record = record
        self._down: list[str] = []  # killed nodes not yet restarted
        self._skewed: list[str] = []

    async def run(self, faults: list[PlannedFault], run_started_s: float) -> None:
        """Inject each fault at its time; whatever happens, leave the cluster healed.

        A fault that ran late (a restart under load can take half a minute) still leaves
        its planned quiet gap before the next: the next one starts at its time, or that
        gap after the late heal, whichever is later.
        """
        try:
            healed_s, planned_end_s = run_started_s, 0.0
            for planned in faults:
                gap_s = planned.start_s - planned_end_s
                # The schedule's clock, not a sync.
                await trio.sleep_until(max(run_started_s + planned.start_s, healed_s + gap_s))
                await self._inject(planned)
                healed_s, planned_end_s = trio.current_time(), planned.start_s + planned.hold_s
        finally:
            with trio.CancelScope(shield=True):
                await self.heal_everything()

    async def _inject(self, planned: PlannedFault) -> None:
        cluster = self._cluster
        fault = Fault(planned.kind, list(planned.targets), self._clock(), params=dict(planned.params))
        log.info("nemesis: %s %s for %.1f s %s", planned.kind, ",".join(planned.targets) or "all",
                 planned.hold_s, planned.params or "")
        nodes = [cluster.node(name) for name in planned.targets]
        if planned.kind in (KILL, WIPE):
            node = nodes[0]
            await cluster.kill(node)
            self._down.append(node.name)
            if planned.kind == WIPE:
                cluster.wipe(node)
            await trio.sleep(planned.hold_s)  # the outage itself
            await cluster.start(node)
            self._down.remove(node.name)
        elif planned.kind in (PAUSE_SHORT, PAUSE_LONG):
            cluster.pause(nodes[0])
            await trio.sleep(planned.hold_s)  # the pause itself
            cluster.resume(nodes[0])
        elif planned.kind == PARTITION:
            hosts = {n.name: n.host for n in cluster.nodes}
            await self._firewall.partition([hosts[n] for n in planned.params["side_a"]],
                                           [hosts[n] for n in planned.params["side_b"]])
            await trio.sleep(planned.hold_s)  # the partition itself
            await self._firewall.heal()
        elif planned.kind == LOSS:
            await self._firewall.set_loss(planned.params["fraction"])
            await trio.sleep(planned.hold_s)
            await self._firewall.heal()
        elif planned.kind == DELAY:
            await self._firewall.set_delay(planned.params["delay_ms"], planned.params["jitter_ms"],
                                           planned.params["seed"])
            await trio.sleep(planned.hold_s)
            await self._firewall.heal()
        else:
            assert planned.kind == SKEW
            for node in nodes:
                cluster.write_clock_offset(node, planned.params["offsets_s"][node.name])
                self._skewed.append(node.name)
            await trio.sleep(planned.hold_s)
            for node in nodes:
                cluster.write_clock_offset(node, 0.0)
                self._skewed.remove(node.name)
            fault.params["settle_s"] = CLOCK_SETTLE_S  # offsets change within this of the writes
        fault.end_s = self._clock()
        self._record(fault)

    async def heal_everything(self) -> None:
        """Undo every fault that may be in force: network, clocks, pauses, dead nodes."""
        await self._firewall.heal()
        for name in list(self._skewed):
            self._cluster.write_clock_offset(self._cluster.node(name), 0.0)
            self._skewed.remove(name)
        for node in self._cluster.nodes:
            if node.paused:
                self._cluster.resume(node)
        for name in list(self._down):
            node = self._cluster.node(name)
            if not node.running:
                await self._cluster.start(node)
            self._down.remove(name)
