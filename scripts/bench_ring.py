"""Benchmark of placement (p2pfs/ring.py): memory, build time, loop blocking, balance, weights,
movement.

Measures, for each member count (exact figures come from the tokens' win shares, which stand for
any number of uniformly hashed keys):
- memory of the ring (token arrays and win shares) and the peak the build allocates;
- build time in CPU seconds, in place and in steps (Ring.build_in_steps), and the longest step;
- the longest time the event loop is held while a RingView rebuilds the ring with members
  changing under it, measured by a heartbeat task in CPU seconds of the loop's thread (and in
  wall seconds, which a loaded machine inflates);
- balance: max/mean and min/mean of each member's share of keys, as primary (rf 1) and at rf;
- weights: members of weights 0.5, 1, 2 and 4: each weight class's share against its weight's
  share, and each member's share against its own weight's;
- zones: members in 3 zones, the share of sampled keys whose rf replicas are in rf zones;
- movement on one join and one leave, exact: the share of keys whose replica set changes, and
  the replica copies to make (at most), each as a multiple of the ideal min(rf, N)/N;
- preference_list lookups per second;
- what a request pays for placement: the view's ring(), unavailable() and
  alive(), write_plan and read_order with each version's ring, and the member lookups of every
  request to a replica, at the sizes of --requests, by default the biggest (``request_figures``);
- placement version 3 (replicas nearest to the key's probes) against version 2 (the walk from the
  winning token), on the same sampled keys and the same rings (``nearest_figures``): lookups and
  fallback lists per CPU second, load at rf, weight classes at rf, zones, and per join and leave
  the keys whose replica set changes and the copies they need. Version 3's shares at rf have no
  closed form, so they are sampled; version 2's exact figures above show what the sample's noise
  adds (the sampled max/mean of version 2 beside its exact one).
With --compare, the alternatives measured before choosing multi-probe hashing (docs/ARCHITECTURE.md,
"Placement"): a fixed partition table filled by an optimiser from the member set alone, Maglev's
round-robin and consistent hashing with bounded loads.

Run standalone (python scripts/bench_ring.py --help) or from scripts/bench.py as
bench_ring.main(argv). A benchmark measures; it never fails on speed.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import random
import statistics
import sys
import time
import tracemalloc

import click
import trio

from p2pfs.address import Address
from p2pfs.clock import SystemClock
from p2pfs import wire
from p2pfs.membership import Member, MemberState
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.coordinator import Coordinator
from p2pfs.replication.placement import (
    Target,
    WEIGHT_REFERENCE_BYTES,
    placement_version,
    read_order,
    ring_members,
    unavailable_members,
    write_plan,
)
from p2pfs.replication.replicas import RemoteReplica
from p2pfs.replication.view import RingView
from p2pfs.ring import (
    PLACEMENT_VERSION_NEWEST,
    TOKENS_PER_WEIGHT_DEFAULT,
    Ring,
    RingMember,
    key_probes,
    member_tokens,
    movement,
)

LOOKUPS_COUNT_DEFAULT = 100_000
SAMPLE_KEYS_DEFAULT = 300_000
LOOKUP_ROUNDS = 5  # alternating rounds of lookups per version; the median round is reported
FALLBACK_LISTS_COUNT = 200  # fallback_list calls timed per rule: 11 ms each for version 2 at 10,000
ZONE_KEYS_SAMPLED = 20_000
WEIGHTS = (0.5, 1.0, 2.0, 4.0)
ZONES = ("a", "b", "c")
HEARTBEAT_S = 0.001
# The members of the loop-hold measurement run the newest placement (with version 1 in their
# records the view would build the 2,048-token ring).
ADVERTISED_VERSION = wire.advertised_version(wire.PROTOCOL_VERSION, PLACEMENT_VERSION_NEWEST)


def node_ids(count: int, rng: random.Random) -> list[str]:
    return [hashlib.sha256(rng.randbytes(32)).hexdigest() for _ in range(count)]


def spread(shares: list[float]) -> dict[str, float]:
    mean = statistics.fmean(shares)
    return {"max_over_mean": max(shares) / mean, "min_over_mean": min(shares) / mean}


def build_figures(members: list[RingMember]) -> dict[str, float]:
    started_s = time.process_time()
    Ring(members)
    build_cpu_s = time.process_time() - started_s
    steps = Ring.build_in_steps(members)
    step_cpu_s_max = 0.0
    step_count = 0
    while True:
        started_s = time.thread_time()
        try:
            next(steps)
        except StopIteration as done:
            ring = done.value
            break
        finally:
            step_cpu_s_max = max(step_cpu_s_max, time.thread_time() - started_s)
            step_count += 1
    tracemalloc.start()
    Ring(members)
    _, build_peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    ring.token_shares()
    return ring, {
        "tokens": ring.token_count,
        "ring_bytes": ring.memory_bytes(),
        "build_peak_bytes": build_peak_bytes,
        "build_cpu_s": build_cpu_s,
        "build_steps": step_count,
        "build_step_cpu_s_max": step_cpu_s_max,
    }


def loop_block(ids: list[str]) -> dict[str, float]:
    """Longest hold of the event loop while a RingView rebuilds: membership changes 3 times,
    each while the previous rebuild is under way (so two builds are dropped)."""

    def member(node_id: str) -> Member:
        return Member(node_id, Address("127.0.0.1", 7000), "", WEIGHT_REFERENCE_BYTES, ADVERTISED_VERSION, 1,
                      MemberState.ALIVE, 0.0)

    everyone = [member(n) for n in ids]
    current: list[Member] = everyone[:-3]
    view = RingView(ids[0], ReplicationConfig(), lambda: current, SystemClock())
    gaps_cpu_s: list[float] = []
    gaps_wall_s: list[float] = []

    async def main() -> float:
        nonlocal current
        async with trio.open_nursery() as nursery:
            await nursery.start(view.run_rebuilds)
            view.ring()  # first sight of the members: fills ring_members' cache
            await view.settled_ring()

            async def heartbeat() -> None:
                last_cpu_s, last_wall_s = time.thread_time(), time.perf_counter()
                while True:
                    await trio.sleep(HEARTBEAT_S)
                    cpu_s, wall_s = time.thread_time(), time.perf_counter()
                    gaps_cpu_s.append(cpu_s - last_cpu_s)
                    gaps_wall_s.append(wall_s - last_wall_s - HEARTBEAT_S)
                    last_cpu_s, last_wall_s = cpu_s, wall_s

            nursery.start_soon(heartbeat)
            started_s = time.perf_counter()
            for extra in range(1, 4):
                current = everyone[: len(everyone) - 3 + extra]
                view.ring()
                await trio.sleep(0.01)  # let the rebuild start, then supersede it
            ring = await view.settled_ring()
            assert len(ring) == len(everyone)
            elapsed_s = time.perf_counter() - started_s
            nursery.cancel_scope.cancel()
        return elapsed_s

    elapsed_s = trio.run(main)
    return {
        "loop_block_cpu_s_max": max(gaps_cpu_s),
        "loop_block_wall_s_max": max(gaps_wall_s),
        "rebuild_wall_s": elapsed_s,
    }


REQUEST_CALLS = 50  # calls timed per figure of request_figures
REQUEST_ROUNDS = 5  # alternating rounds of the member lookups, old and new; the median is reported


def request_figures(ids: list[str], rf: int) -> dict[str, float]:
    """CPU milliseconds per call of what a request asks of placement, with ``ids`` as members:
    the view's answers (kept between membership changes) beside deriving them from every record,
    as the view did on every call before; write_plan and read_order with each version's ring; and
    the member lookups of every request to a replica (its address) and every chunk write (its
    replicas' protocol versions) by id, beside the walk of every record they did before.

    ``members()`` copies the table and filters it, as the membership driver's does.
    """

    class FixedClock:
        def monotonic_s(self) -> float:
            return 0.0

        def wall_ms(self) -> int:
            return 0

    members = [Member(n, Address("127.0.0.1", 7000), "", WEIGHT_REFERENCE_BYTES, ADVERTISED_VERSION, 1,
                      MemberState.ALIVE, 0.0) for n in ids]
    table = {m.node_id: m for m in members}
    excluded: frozenset[str] = frozenset()
    view = RingView(ids[0], ReplicationConfig(),
                    lambda: [m for m in list(table.values()) if m.node_id not in excluded], FixedClock())
    view.ring()
    grace_s = ReplicationConfig().dead_grace_s

    def derived() -> None:
        frozenset(ring_members(members, 0.0, grace_s, {}))
        placement_version(members, 0.0, grace_s, {}, PLACEMENT_VERSION_NEWEST)

    calls = {
        "view_ring": view.ring,
        "ring_members_derived": derived,
        "view_unavailable": view.unavailable,
        "unavailable_derived": lambda: unavailable_members(members),
        "view_alive": view.alive,
        "alive_derived": lambda: {m.node_id for m in members if m.state is MemberState.ALIVE},
    }
    key = hashlib.sha256(b"request").digest()
    for version in (2, 3):
        ring = Ring.of_version([RingMember(n, weight=1.0) for n in ids], version)
        calls[f"write_plan_v{version}"] = lambda ring=ring: write_plan(ring, key, rf, set())
        calls[f"read_order_v{version}"] = lambda ring=ring: read_order(ring, key, rf, set(), holder=None, rotate=0)
    figures = {}
    for name, call in calls.items():
        started_s = time.process_time()
        for _ in range(REQUEST_CALLS):
            call()
        figures[name] = (time.process_time() - started_s) / REQUEST_CALLS * 1e3
    return figures | member_lookup_figures(view, ids, rf)


def member_lookup_figures(view: RingView, ids: list[str], rf: int) -> dict[str, float]:
    """RemoteReplica._address and Coordinator._wire_versions (by id, RingView.member) against the
    walk of every record they did before, alternating, in CPU ms per call."""
    replica = RemoteReplica(ids[-1], None, view, None)
    coordinator = Coordinator(node_id=ids[0], config=view.config, view=view, replicas=None, local=None,
                              clock=view.clock, offload=None)
    targets = [Target(n) for n in ids[-rf:]]

    def address_walk() -> Address:
        for member in view.members():
            if member.node_id == replica.node_id:
                return member.address
        raise AssertionError("not a member")

    def wire_versions_walk() -> dict[str, int]:
        wanted = {t.node_id for t in targets}
        return {m.node_id: m.protocol_version for m in view.members() if m.node_id in wanted}

    assert address_walk() == replica._address()
    assert wire_versions_walk() == coordinator._wire_versions(targets)
    calls = {
        "address_walk": address_walk,
        "address_by_id": replica._address,
        "wire_versions_walk": wire_versions_walk,
        "wire_versions_by_id": lambda: coordinator._wire_versions(targets),
        "members_copy": view.members,  # what any call pays to see whether a record changed
    }
    rounds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(REQUEST_ROUNDS):
        for name, call in calls.items():
            started_s = time.process_time()
            for _ in range(REQUEST_CALLS):
                call()
            rounds[name].append((time.process_time() - started_s) / REQUEST_CALLS * 1e3)
    return {name: statistics.median(cpu_ms) for name, cpu_ms in rounds.items()}


def weight_figures(ids: list[str]) -> dict[str, float]:
    members = [RingMember(n, weight=WEIGHTS[i % len(WEIGHTS)]) for i, n in enumerate(ids)]
    ring = Ring(members)
    shares = ring.ownership_fraction(1)
    total_weight = sum(m.weight for m in members)
    class_errors = []
    member_ratios = []
    for weight in WEIGHTS:
        group = [m for m in members if m.weight == weight]
        target = weight * len(group) / total_weight
        class_errors.append(abs(sum(shares[m.node_id] for m in group) / target - 1))
        member_ratios += [shares[m.node_id] / (weight / total_weight) for m in group]
    return {
        "weight_class_error_max": max(class_errors),
        "weight_member_ratio_max": max(member_ratios),
        "weight_member_ratio_min": min(member_ratios),
    }


def zone_figures(ids: list[str], rf: int, rng: random.Random) -> dict[str, float]:
    ring = Ring([RingMember(n, zone=ZONES[i % len(ZONES)]) for i, n in enumerate(ids)])
    spread_ok = 0
    for _ in range(ZONE_KEYS_SAMPLED):
        zones = {ring.members[n].zone for n in ring.preference_list(rng.randbytes(32), rf)}
        spread_ok += len(zones) == min(rf, len(ZONES))
    return {"zones_spread": spread_ok / ZONE_KEYS_SAMPLED}


def measure_size(
    members_count: int, *, rf: int, lookups_count: int, moves_count: int, sample_keys: int, rng: random.Random
) -> dict[str, float]:
    ids = node_ids(members_count + moves_count, rng)
    members = [RingMember(n) for n in ids[:members_count]]
    ring, result = build_figures(members)
    result = {"members": members_count, **result}
    result |= loop_block(ids[:members_count])

    keys = [rng.randbytes(32) for _ in range(lookups_count)]
    started_s = time.process_time()
    for key in keys:
        ring.preference_list(key, rf)
    result["lookups_per_cpu_s"] = lookups_count / (time.process_time() - started_s)

    result |= {f"primary_{k}": v for k, v in spread(list(ring.ownership_fraction(1).values())).items()}
    result |= {f"rf_{k}": v for k, v in spread(list(ring.ownership_fraction(rf).values())).items()}
    result |= weight_figures(ids[:members_count])
    result |= zone_figures(ids[:members_count], rf, rng)
    shuffled = list(members)
    rng.shuffle(shuffled)
    again = Ring(shuffled)
    result["deterministic"] = (again._tokens, again._owners) == (ring._tokens, ring._owners)

    moves = {"join_keys": [], "join_copies": [], "leave_keys": [], "leave_copies": []}
    for joiner, leaver in zip(ids[members_count:], members):
        ideal = min(rf, members_count + 1) / (members_count + 1)
        joined = movement(ring, Ring([*members, RingMember(joiner)]), rf)
        moves["join_keys"].append(joined.keys / ideal)
        moves["join_copies"].append(joined.copies_max / ideal)
        ideal = min(rf, members_count) / members_count
        left = movement(ring, Ring([m for m in members if m != leaver]), rf)
        moves["leave_keys"].append(left.keys / ideal)
        moves["leave_copies"].append(left.copies_max / ideal)
    for name, multiples in moves.items():
        if multiples:
            result[f"{name}_over_ideal_mean"] = statistics.fmean(multiples)
            result[f"{name}_over_ideal_max"] = max(multiples)
    if sample_keys:
        result["nearest"] = nearest_figures(ids, members_count, rf=rf, lookups_count=lookups_count,
                                            sample_keys=sample_keys, moves_count=moves_count, rng=rng)
    return result


def nearest_figures(
    ids: list[str], members_count: int, *, rf: int, lookups_count: int, sample_keys: int, moves_count: int,
    rng: random.Random,
) -> dict[str, dict[str, float]]:
    """Versions 2 and 3 on the same sampled keys and members: {version: figures}."""
    members = [RingMember(n) for n in ids[:members_count]]
    weighted = [RingMember(n, weight=WEIGHTS[i % len(WEIGHTS)]) for i, n in enumerate(ids[:members_count])]
    zoned = [RingMember(n, zone=ZONES[i % len(ZONES)]) for i, n in enumerate(ids[:members_count])]
    keys = [rng.randbytes(32) for _ in range(sample_keys)]
    rings = {version: Ring.of_version(members, version) for version in (2, 3)}
    # Lookups first, in alternating rounds, while little else is alive: timed after the other
    # version's million sampled preference lists, a version pays for the garbage collector
    # scanning them (0.88x measured so at 10,000 members, against 0.99x alone).
    lookup_keys = keys[: max(1, lookups_count // LOOKUP_ROUNDS)]
    rates: dict[int, list[float]] = {2: [], 3: []}
    for _ in range(LOOKUP_ROUNDS):
        for version, ring in rings.items():
            started_s = time.process_time()
            for key in lookup_keys:
                ring.preference_list(key, rf)
            rates[version].append(len(lookup_keys) / (time.process_time() - started_s))
    figures: dict[str, dict[str, float]] = {}
    for version, ring in rings.items():
        row = {"lookups_per_cpu_s": statistics.median(rates[version])}
        started_s = time.process_time()
        for key in keys[:FALLBACK_LISTS_COUNT]:
            ring.fallback_list(key, rf)
        row["fallback_list_cpu_ms"] = (time.process_time() - started_s) / FALLBACK_LISTS_COUNT * 1e3
        before = [ring.preference_list(key, rf) for key in keys]
        load = dict.fromkeys(ring.members, 0)
        for replicas in before:
            for node_id in replicas:
                load[node_id] += 1
        mean = statistics.fmean(load.values())
        row |= {f"rf_sampled_{k}": v for k, v in spread(list(load.values())).items()}
        # The spread the placement itself adds: the loads' variance less a sample's own (binomial).
        variance = statistics.pvariance(load.values()) / mean**2
        beyond = max(0.0, variance - 1 / mean)
        row["rf_sampled_sd_beyond_noise"] = beyond**0.5
        # Each member's sampled deviation shrunk by the share of the variance that is the
        # placement's (not the sample's): an estimate of the true max/mean and min/mean. On
        # version 2 it comes within about 0.005 of the exact max/mean (1,000 members, 300,000 keys).
        shrink = (beyond / variance) ** 0.5
        row["rf_estimated_max_over_mean"] = 1 + shrink * (row["rf_sampled_max_over_mean"] - 1)
        row["rf_estimated_min_over_mean"] = 1 - shrink * (1 - row["rf_sampled_min_over_mean"])
        weighted_ring = Ring.of_version(weighted, version)
        class_load = dict.fromkeys(WEIGHTS, 0)
        weight_of = {m.node_id: m.weight for m in weighted}
        for key in keys[: sample_keys // 4]:
            for node_id in weighted_ring.preference_list(key, rf):
                class_load[weight_of[node_id]] += 1
        total_weight = sum(weight_of.values())
        replicas_sampled = sum(class_load.values())
        row["rf_weight_class_error_max"] = max(
            abs(class_load[w] / replicas_sampled / (w * sum(1 for m in weighted if m.weight == w) / total_weight) - 1)
            for w in WEIGHTS
        )
        zoned_ring = Ring.of_version(zoned, version)
        row["zones_spread"] = statistics.fmean(
            len({zoned_ring.members[n].zone for n in zoned_ring.preference_list(key, rf)}) == min(rf, len(ZONES))
            for key in keys[:ZONE_KEYS_SAMPLED]
        )
        moves = {"join_keys": [], "join_copies": [], "leave_keys": [], "leave_copies": [], "copies_per_key": []}
        for joiner, leaver in zip(ids[members_count:], members):
            for label, other in (("join", Ring.of_version([*members, RingMember(joiner)], version)),
                                 ("leave", Ring.of_version([m for m in members if m != leaver], version))):
                ideal = min(rf, len(other), len(ring)) / max(len(other), len(ring)) * len(keys)
                changed = copies = 0
                for key, old in zip(keys, before):
                    new = other.preference_list(key, rf)
                    differ = len(set(new) - set(old)) if label == "join" else len(set(old) - set(new))
                    changed += differ > 0
                    copies += differ
                moves[f"{label}_keys"].append(changed / ideal)
                moves[f"{label}_copies"].append(copies / ideal)
                moves["copies_per_key"].append(copies / max(1, changed))
        for name, multiples in moves.items():
            if multiples:
                row[f"{name}_mean"] = statistics.fmean(multiples)
                row[f"{name}_max"] = max(multiples)
        figures[str(version)] = row
    return figures


# --- the alternatives, for --compare -------------------------------------------------------------


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def maglev_table(ids: list[str], partitions: int) -> list[str]:
    """Maglev (Eisenbud et al., NSDI 2016): members in id order take turns claiming their next
    preferred free slot of a fixed table (``partitions`` a power of two, odd skips)."""
    order = sorted(ids)
    offsets = {n: _hash64("offset" + n) % partitions for n in order}
    skips = {n: (_hash64("skip" + n) % (partitions // 2)) * 2 + 1 for n in order}
    nexts = dict.fromkeys(order, 0)
    table: list[str | None] = [None] * partitions
    filled = 0
    while True:
        for node_id in order:
            j = nexts[node_id]
            slot = (offsets[node_id] + j * skips[node_id]) % partitions
            while table[slot] is not None:
                j += 1
                slot = (offsets[node_id] + j * skips[node_id]) % partitions
            nexts[node_id] = j + 1
            table[slot] = node_id
            filled += 1
            if filled == partitions:
                return table


def bounded_load_table(ids: list[str], partitions: int, tokens: int, slack: float) -> list[str]:
    """A fixed table whose partitions, in index order, go to the first member clockwise (single
    probe, ``tokens`` per member) with fewer than (1 + slack) x its fair count (Mirrokni,
    Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads", SODA 2018)."""
    order = sorted(ids)
    pairs = sorted((t, i) for i, n in enumerate(order) for t in member_tokens(n, tokens))
    cap = int((1 + slack) * partitions / len(order)) + 1
    loads = [0] * len(order)
    table = []
    step = (1 << 64) // partitions
    j = 0
    for p in range(partitions):
        while j < len(pairs) and pairs[j][0] < p * step:
            j += 1
        k = j
        while loads[pairs[k % len(pairs)][1]] >= cap:
            k += 1
        owner = pairs[k % len(pairs)][1]
        loads[owner] += 1
        table.append(order[owner])
    return table


# Tokens looked at after each probe when replicas are ranked by probe distance: the rf nearest
# distinct members are among them unless one member holds most of the next tokens of every probe.
RANKED_TOKENS_PER_PROBE = 8


def ranked_replicas(ring: Ring, key: bytes, rf: int) -> tuple[str, ...]:
    """The rf distinct members whose tokens are nearest clockwise to any of the key's probes:
    the replica rule that would make a join or leave copy each moved key once (one replica of
    the set changes), measured against the walk from the winning token (``--replica-rule``)."""
    tokens, owners = ring._tokens, ring._owners
    count = len(tokens)
    nearest: dict[int, int] = {}
    for probe in key_probes(key, ring.probes):
        index = bisect.bisect_left(tokens, probe)
        for step in range(RANKED_TOKENS_PER_PROBE):
            at = (index + step) % count
            distance = (tokens[at] - probe) & ((1 << 64) - 1)
            rank = owners[at]
            if distance < nearest.get(rank, 1 << 64):
                nearest[rank] = distance
    best = sorted(nearest, key=nearest.__getitem__)[:rf]
    return tuple(ring._node_ids[r] for r in best)


def replica_rule_figures(members_count: int, rf: int, keys_count: int, rng: random.Random) -> list[dict]:
    """Sampled, same keys and rings for both rules: load at rf, and copies per join and leave
    over the ideal (rf/N of the keys, one copy each)."""
    ids = node_ids(members_count + 1, rng)
    members = [RingMember(n) for n in ids[:members_count]]
    ring = Ring(members)
    joined = Ring([*members, RingMember(ids[-1])])
    left = Ring(members[1:])
    keys = [rng.randbytes(32) for _ in range(keys_count)]
    rules = {
        "walk from the winning token (in use)": lambda r, k: tuple(r.preference_list(k, rf)),
        "nearest distinct members over all probes": lambda r, k: ranked_replicas(r, k, rf),
    }
    rows = []
    for name, replicas in rules.items():
        started_s = time.process_time()
        before = [replicas(ring, k) for k in keys]
        lookup_us = (time.process_time() - started_s) / keys_count * 1e6
        load = dict.fromkeys(ring.members, 0)
        for chosen in before:
            for node_id in chosen:
                load[node_id] += 1
        row = {"rule": name, "lookup_us": lookup_us, **spread(list(load.values()))}
        for label, other, size in (("join", joined, members_count + 1), ("leave", left, members_count)):
            copies = sum(len(set(replicas(other, k)) - set(b)) for k, b in zip(keys, before))
            row[f"{label}_copies_over_ideal"] = copies / (keys_count * rf / size)
        rows.append(row)
    return rows


def compare(members_count: int, partitions: int, rng: random.Random) -> list[dict[str, float]]:
    ids = node_ids(members_count + 1, rng)
    base, joiner = ids[:members_count], ids[members_count]
    rows = []
    variants = {
        "maglev": lambda members: maglev_table(members, partitions),
        "bounded loads, 64 tokens, 10% slack": lambda members: bounded_load_table(members, partitions, 64, 0.10),
        "bounded loads, 256 tokens, 10% slack": lambda members: bounded_load_table(members, partitions, 256, 0.10),
    }
    for name, build in variants.items():
        started_s = time.process_time()
        table = build(base)
        build_cpu_s = time.process_time() - started_s
        counts = dict.fromkeys(base, 0)
        for node_id in table:
            counts[node_id] += 1
        joined = build([*base, joiner])
        left = build(base[1:])
        rows.append({
            "variant": name,
            "build_cpu_s": build_cpu_s,
            **spread([c / partitions for c in counts.values()]),
            # Replicas walk the table, so a reassigned partition moves rf copies, as ideal.
            "join_over_ideal": sum(a != b for a, b in zip(table, joined)) / (partitions / (members_count + 1)),
            "leave_over_ideal": sum(a != b for a, b in zip(table, left)) / (partitions / members_count),
        })
    return rows


# --- report --------------------------------------------------------------------------------------


def print_report(report: dict) -> None:
    echo = click.echo
    echo(f"ring: multi-probe, tokens_per_weight={report['tokens_per_weight']} rf={report['rf']} "
         f"seed={report['seed']}")
    echo(f"{'members':>8} {'tokens':>8} {'ring MiB':>9} {'peak MiB':>9} {'build cpu s':>12} "
         f"{'steps':>6} {'step ms':>8} {'loop block ms (cpu, wall)':>26} {'lookups/cpu s':>14}")
    for row in report["sizes"]:
        echo(f"{row['members']:>8} {row['tokens']:>8} {row['ring_bytes'] / 2**20:>9.1f} "
             f"{row['build_peak_bytes'] / 2**20:>9.1f} {row['build_cpu_s']:>12.3f} {row['build_steps']:>6} "
             f"{row['build_step_cpu_s_max'] * 1e3:>8.1f} "
             f"{row['loop_block_cpu_s_max'] * 1e3:>14.1f}, {row['loop_block_wall_s_max'] * 1e3:>9.1f} "
             f"{row['lookups_per_cpu_s']:>14,.0f}")
    echo("")
    echo(f"{'members':>8} {'max/mean':>9} {'min/mean':>9} {'rf max/mean':>12} {'rf min/mean':>12} "
         f"{'weight class err':>17} {'member/weight max':>18} {'min':>6} {'zones spread':>13} "
         f"{'same from any order':>20}")
    for row in report["sizes"]:
        echo(f"{row['members']:>8} {row['primary_max_over_mean']:>9.3f} {row['primary_min_over_mean']:>9.3f} "
             f"{row['rf_max_over_mean']:>12.3f} {row['rf_min_over_mean']:>12.3f} "
             f"{row['weight_class_error_max']:>17.2%} {row['weight_member_ratio_max']:>18.3f} "
             f"{row['weight_member_ratio_min']:>6.3f} {row['zones_spread']:>13.2%} "
             f"{'yes' if row['deterministic'] else 'NO':>20}")
    echo("")
    echo(f"{'members':>8} {'join keys/ideal':>16} {'copies/ideal':>13} {'leave keys/ideal':>17} "
         f"{'copies/ideal':>13}   (mean, max over moves)")
    for row in report["sizes"]:
        if "join_keys_over_ideal_mean" in row:
            echo(f"{row['members']:>8} "
                 f"{row['join_keys_over_ideal_mean']:>8.3f},{row['join_keys_over_ideal_max']:>6.3f} "
                 f"{row['join_copies_over_ideal_mean']:>6.3f},{row['join_copies_over_ideal_max']:>6.3f} "
                 f"{row['leave_keys_over_ideal_mean']:>9.3f},{row['leave_keys_over_ideal_max']:>6.3f} "
                 f"{row['leave_copies_over_ideal_mean']:>6.3f},{row['leave_copies_over_ideal_max']:>6.3f}")
    if report["compare"]:
        echo("")
        echo(f"alternatives at {report['compare_members']} members, {report['compare_partitions']} partitions:")
        echo(f"{'variant':>38} {'build cpu s':>12} {'max/mean':>9} {'min/mean':>9} {'join/ideal':>11} {'leave/ideal':>12}")
        for row in report["compare"]:
            echo(f"{row['variant']:>38} {row['build_cpu_s']:>12.2f} {row['max_over_mean']:>9.3f} "
                 f"{row['min_over_mean']:>9.3f} {row['join_over_ideal']:>11.2f} {row['leave_over_ideal']:>12.2f}")


def print_nearest(report: dict) -> None:
    rows = [row for row in report["sizes"] if "nearest" in row]
    if not rows:
        return
    echo = click.echo
    echo("")
    echo("placement versions 2 (walk from the winning token) and 3 (nearest to the probes), same sampled keys:")
    echo(f"{'members':>8} {'version':>8} {'lookups/cpu s':>14} {'fallback ms':>12} {'rf max/mean':>12} "
         f"{'min/mean':>9} {'sd beyond noise':>16} {'estimated max, min':>19} {'rf weight class err':>20} "
         f"{'zones spread':>13}")
    for row in rows:
        for version, fig in row["nearest"].items():
            echo(f"{row['members']:>8} {version:>8} {fig['lookups_per_cpu_s']:>14,.0f} "
                 f"{fig['fallback_list_cpu_ms']:>12.3f} {fig['rf_sampled_max_over_mean']:>12.3f} "
                 f"{fig['rf_sampled_min_over_mean']:>9.3f} {fig['rf_sampled_sd_beyond_noise']:>16.4f} "
                 f"{fig['rf_estimated_max_over_mean']:>12.3f},{fig['rf_estimated_min_over_mean']:>6.3f} "
                 f"{fig['rf_weight_class_error_max']:>20.2%} {fig['zones_spread']:>13.2%}")
    echo(f"{'members':>8} {'version':>8} {'join keys/ideal':>16} {'copies/ideal':>13} {'leave keys/ideal':>17} "
         f"{'copies/ideal':>13} {'copies per moved key':>21}   (sampled; mean, max over moves)")
    for row in rows:
        for version, fig in row["nearest"].items():
            if "join_keys_mean" in fig:
                echo(f"{row['members']:>8} {version:>8} {fig['join_keys_mean']:>8.3f},{fig['join_keys_max']:>6.3f} "
                     f"{fig['join_copies_mean']:>6.3f},{fig['join_copies_max']:>6.3f} "
                     f"{fig['leave_keys_mean']:>9.3f},{fig['leave_keys_max']:>6.3f} "
                     f"{fig['leave_copies_mean']:>6.3f},{fig['leave_copies_max']:>6.3f} "
                     f"{fig['copies_per_key_mean']:>13.3f},{fig['copies_per_key_max']:>6.3f}")


def print_request(report: dict) -> None:
    for row in report["requests"]:
        click.echo("")
        click.echo(f"what a request pays for placement at {row['members']} members (CPU ms per call):")
        for name, cpu_ms in row["cpu_ms"].items():
            click.echo(f"{name:>24} {cpu_ms:>9.3f}")


def print_replica_rules(report: dict) -> None:
    if not report["replica_rules"]:
        return
    click.echo("")
    click.echo(f"replica rules at {report['replica_rule_members']} members (sampled keys):")
    click.echo(f"{'rule':>42} {'lookup us':>10} {'rf max/mean':>12} {'min/mean':>9} "
               f"{'join copies/ideal':>18} {'leave copies/ideal':>19}")
    for row in report["replica_rules"]:
        click.echo(f"{row['rule']:>42} {row['lookup_us']:>10.1f} {row['max_over_mean']:>12.3f} "
                   f"{row['min_over_mean']:>9.3f} {row['join_copies_over_ideal']:>18.3f} "
                   f"{row['leave_copies_over_ideal']:>19.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_ring", description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", default="100,1000,10000", metavar="N,N,...",
                        help="member counts (default 100,1000,10000)")
    parser.add_argument("--rf", type=int, default=3, help="replication factor (default 3)")
    parser.add_argument("--lookups", type=int, default=LOOKUPS_COUNT_DEFAULT, metavar="COUNT",
                        help="timed lookups per size")
    parser.add_argument("--moves", type=int, default=3, metavar="COUNT",
                        help="joins and leaves measured per size")
    parser.add_argument("--sample-keys", type=int, default=SAMPLE_KEYS_DEFAULT, metavar="COUNT",
                        help="keys sampled per size to compare placement versions 2 and 3 (0: skip)")
    parser.add_argument("--compare", type=int, default=0, metavar="N",
                        help="also measure the alternatives at N members (0: skip)")
    parser.add_argument("--partitions", type=int, default=1 << 18, metavar="P",
                        help="table size for --compare (default 2**18)")
    parser.add_argument("--replica-rule", type=int, default=0, metavar="N",
                        help="also compare replica rules at N members, sampled over --rule-keys keys (0: skip)")
    parser.add_argument("--rule-keys", type=int, default=100_000, metavar="COUNT")
    parser.add_argument("--requests", default="", metavar="N,N,...",
                        help="member counts for what a request pays (default: the biggest of --members)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    sizes = [int(n) for n in args.members.split(",") if n]
    requests = [int(n) for n in args.requests.split(",") if n] or sizes[-1:]
    report = {
        "tokens_per_weight": TOKENS_PER_WEIGHT_DEFAULT,
        "rf": args.rf,
        "seed": args.seed,
        "sizes": [
            measure_size(n, rf=args.rf, lookups_count=args.lookups, moves_count=args.moves,
                         sample_keys=args.sample_keys, rng=rng)
            for n in sizes
        ],
        "requests": [
            {"members": n, "cpu_ms": request_figures(node_ids(n, random.Random(args.seed)), args.rf)}
            for n in requests
        ],
        "compare_members": args.compare,
        "compare_partitions": args.partitions,
        "compare": compare(args.compare, args.partitions, rng) if args.compare else [],
        "replica_rule_members": args.replica_rule,
        "replica_rules": (replica_rule_figures(args.replica_rule, args.rf, args.rule_keys, rng)
                          if args.replica_rule else []),
    }
    if args.json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
        print_nearest(report)
        print_request(report)
        print_replica_rules(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
