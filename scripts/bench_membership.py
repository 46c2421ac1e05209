#!/usr/bin/env python3
"""Membership benchmark on the simulated network: convergence, detection, load.

The real cores run on ``p2pfs.sim.membership.CoreCluster`` (one event loop,
simulated time, everything from the seed), with compact member tables
(``p2pfs.membership.compact``: the same behaviour in about 35 bytes per node and
member), so 10,000 members fit in a few GiB. For each cluster size the cluster
is formed either as converged views installed at once (``--formation formed``,
the default: a cluster that has run for a while) or by every node joining
through one seed at t=0 (``all-at-once``, which also measures how long that
takes to converge). Then: the steady message and byte load per node per second
(bytes are encoded frames: wire.encode_message plus the frame header); one more
member joins and we count gossip rounds until every member holds it; a node
crashes and we measure the time until the first and until every live member
holds it DEAD, against ``MembershipConfig.detection_bound_s``.

A measurement, not a test: it never fails on speed. Runs as

    .venv/bin/python scripts/bench_membership.py [--nodes 100,1000,10000] [--seed 1] [--json]

Every node holds every member, so memory grows as n^2 (``VIEW_ENTRY_BYTES``);
a size that would not fit in this machine's memory is reported, not run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import time
from typing import Any

from p2pfs.membership.config import MembershipConfig
from p2pfs.membership.messages import MemberState
from p2pfs.sim.membership import CoreCluster, sim_address, sim_node_id
from p2pfs.sim.network import LinkFaults

# Longest simulated wait for any one phase; a phase that takes longer is reported as not reached.
PHASE_S_MAX = 600.0
# Memory one node's view of one member takes in this process with compact views
# (``p2pfs.membership.compact``; measured: 3.3 GiB peak at 10,000 members, 10^8 pairs, about 35 B
# each; ``MemberView`` took 700 B). A size whose estimate exceeds MEMORY_SHARE_MAX of the memory
# available is not run: it would swap or be killed, and the machine is shared.
VIEW_ENTRY_BYTES = 35
MEMORY_SHARE_MAX = 0.5
# Simulated seconds a formed cluster runs before anything is measured: every core's first probe
# (which shuffles its probe order of n members) falls in the first second.
FORMED_SETTLE_S = 2.0
# Simulated seconds between the one join's convergence and the crash.
CRASH_AFTER_JOIN_S = 10.0
# False-death runs (--detector): the cluster of tests/test_membership_sim.py's loss test, polled
# this often for members held DEAD.
FALSE_DEATH_NODES = 24
FALSE_DEATH_POLL_S = 0.5


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _rates(cluster: CoreCluster, window_s: float, n: int) -> dict[str, float]:
    stats = cluster.network.stats
    return {
        "msgs_per_node_s": stats.messages_sent / n / window_s,
        "bytes_per_node_s": stats.bytes_sent / n / window_s,
    }


def _wait(cluster: CoreCluster, predicate, poll_s: float) -> float | None:
    """Simulated seconds until ``predicate()`` holds, checked every ``poll_s``; None after PHASE_S_MAX."""
    start_s = cluster.now_s
    while not predicate():
        if cluster.now_s - start_s >= PHASE_S_MAX:
            return None
        cluster.run_until(cluster.now_s + poll_s)
    return cluster.now_s - start_s


def _holding(cluster: CoreCluster, node_id: str, state: MemberState) -> int:
    """Running cores that hold ``node_id`` in ``state``."""
    return sum(1 for core in cluster.running() if (m := core.member(node_id)) is not None and m.state == state)


def _form(cluster: CoreCluster, n: int, formation: str, codec_join: bool, result: dict[str, Any]) -> None:
    """Make the cluster of n: formed at once (converged views installed), or all joining at t=0."""
    config = cluster.config
    if formation == "formed":
        cluster.form(n)
        cluster.run_until(FORMED_SETTLE_S)  # each core's first probe shuffles its probe order: the cost of a start
        result["formed_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return
    cluster.network.encode = codec_join
    first = cluster.start(0)
    for i in range(1, n):
        cluster.start(i, [first.address])
    converge_s = _wait(cluster, cluster.converged, config.gossip_interval_s)
    result["all_join_converge_s"] = converge_s
    result["all_join_converge_rounds"] = None if converge_s is None else round(converge_s / config.gossip_interval_s)
    stats = cluster.network.stats
    result["all_join_msgs_per_node"] = stats.messages_sent / n
    result["all_join_bytes_per_node"] = stats.bytes_sent / n if codec_join else None


def _scenario(n: int, seed: int, formation: str, settle_s: float, window_s: float, codec_join: bool) -> dict[str, Any]:
    config = MembershipConfig()
    result: dict[str, Any] = {"nodes": n, "seed": seed, "formation": formation}
    cluster = CoreCluster(seed, config=config, codec=False, compact=True)
    _form(cluster, n, formation, codec_join, result)

    # Steady state: let join gossip finish its retransmits, then measure.
    cluster.network.encode = False
    cluster.run_until(cluster.now_s + settle_s)
    cluster.network.encode = True
    cluster.network.reset_stats()
    cluster.run_until(cluster.now_s + window_s)
    result["steady"] = _rates(cluster, window_s, n)
    result["steady"]["by_type"] = {
        name: {"msgs_per_node_s": c / n / window_s, "bytes_per_node_s": b / n / window_s}
        for name, (c, b) in sorted(cluster.network.stats.by_type.items())
    }
    result["push_pull_interval_s"] = config.push_pull_interval_s_for(n)

    # One more member joins through node 0: gossip rounds until every member holds it ALIVE.
    joiner = cluster.start(n, [sim_address(0)])
    result["join_one_s"] = _wait(cluster, lambda: _holding(cluster, joiner.node_id, MemberState.ALIVE) == n + 1,
                                 config.gossip_interval_s)
    join_s = result["join_one_s"]
    result["join_one_rounds"] = None if join_s is None else round(join_s / config.gossip_interval_s)
    cluster.run_until(cluster.now_s + CRASH_AFTER_JOIN_S)

    victim_index = n // 2
    victim_id = sim_node_id(victim_index)
    cluster.crash(victim_index)
    cluster.network.reset_stats()
    crashed_at_s = cluster.now_s
    poll_s = config.gossip_interval_s / 2
    result["first_dead_s"] = _wait(cluster, lambda: _holding(cluster, victim_id, MemberState.DEAD) > 0, poll_s)
    all_dead = _wait(cluster, lambda: cluster.dead_everywhere(victim_id), poll_s)
    result["all_dead_s"] = None if all_dead is None else cluster.now_s - crashed_at_s
    result["detection_bound_s"] = config.detection_bound_s(n + 1)
    result["suspicion_timeout_s_min"] = config.suspicion_timeout_s_min(n + 1)
    result["detection"] = _rates(cluster, cluster.now_s - crashed_at_s, n)
    result["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _detection_s(n: int, seed: int, config: MembershipConfig) -> float | None:
    """Seconds from a crash (20 s after an all-at-once join) until every live member holds it DEAD."""
    cluster = CoreCluster(seed, config=config, codec=False)
    first = cluster.start(0)
    for i in range(1, n):
        cluster.start(i, [first.address])
    cluster.run_until(20.0 + (seed % 10) / 10)  # the crash at a different phase of the probe periods
    cluster.crash(n - 1)
    return _wait(cluster, lambda: cluster.dead_everywhere(sim_node_id(n - 1)), 0.02)


def _false_deaths(n: int, seed: int, config: MembershipConfig, loss: float, duration_s: float) -> int:
    """(observer, subject) pairs ever DEAD while every member runs, under ``loss`` both ways from the start."""
    cluster = CoreCluster(seed, config=config, faults=LinkFaults(drop_probability=loss), codec=False)
    first = cluster.start(0)
    for i in range(1, n):
        cluster.start(i, [first.address])
    dead: set[tuple[str, str]] = set()
    while cluster.now_s < duration_s:
        cluster.run_until(cluster.now_s + FALSE_DEATH_POLL_S)
        for core in cluster.running():
            dead.update((core.node_id, m.node_id) for m in core.members() if m.state == MemberState.DEAD)
    return len(dead)


def _detector_runs(args: argparse.Namespace) -> dict[str, Any]:
    """Detection times and false deaths for one detector setting (issue 14's A/B in simulation)."""
    config = dataclasses.replace(
        MembershipConfig(), suspicion_mult=args.suspicion_mult, suspicion_confirmations=args.suspicion_confirmations,
    )
    out: dict[str, Any] = {"suspicion_mult": config.suspicion_mult, "suspicion_confirmations": config.suspicion_confirmations}
    for n in [n for group in args.nodes for n in group]:
        times = [_detection_s(n, seed, config) for seed in range(args.seed, args.seed + args.trials)]
        done = sorted(t for t in times if t is not None)
        out[f"detect_{n}"] = {"median_s": statistics.median(done) if done else None,
                              "max_s": max(done) if done else None, "undetected": len(times) - len(done)}
    for loss in args.loss:
        out[f"false_deaths_loss_{loss}"] = [
            _false_deaths(FALSE_DEATH_NODES, seed, config, loss, args.loss_s)
            for seed in range(args.seed, args.seed + args.loss_seeds)
        ]
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "not reached" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=lambda text: [int(x) for x in text.split(",")], nargs="+",
                        default=[[100, 1000]], metavar="N[,N...]", help="cluster sizes (default 100,1000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--formation", choices=("formed", "all-at-once"), default="formed",
                        help="formed: start from converged views (any size); all-at-once: every node joins "
                             "through one seed at t=0 and the run waits for convergence (up to about 1,000)")
    parser.add_argument("--settle-s", type=float, default=None,
                        help="simulated seconds after formation before measuring load (default: 60 after an "
                             "all-at-once join, for its gossip to end; 0 for a formed cluster, which is quiet)")
    parser.add_argument("--window-s", type=float, default=180.0, help="simulated seconds of steady-state load measured")
    parser.add_argument(
        "--no-codec-join", action="store_true",
        help="all-at-once: do not encode messages during the join (faster; join bytes not reported)",
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--detector", action="store_true",
                        help="instead: crash detection times (--trials seeds per size of --nodes) and false "
                             "deaths under --loss, for the suspicion settings given")
    parser.add_argument("--trials", type=int, default=15, help="crashes per size with --detector")
    parser.add_argument("--loss", type=lambda text: [float(x) for x in text.split(",")], default=[0.1],
                        metavar="P[,P...]", help="loss probabilities for the false-death runs (default 0.1)")
    parser.add_argument("--loss-seeds", type=int, default=8, help="seeds per loss probability")
    parser.add_argument("--loss-s", type=float, default=600.0, help="simulated seconds per false-death run")
    defaults = MembershipConfig()
    parser.add_argument("--suspicion-mult", type=int, default=defaults.suspicion_mult)
    parser.add_argument("--suspicion-confirmations", type=int, default=defaults.suspicion_confirmations)
    args = parser.parse_args(argv)
    if args.detector:
        print(json.dumps(_detector_runs(args), indent=2))
        return 0

    results = []
    for n in [n for group in args.nodes for n in group]:
        need_bytes, available_bytes = n * n * VIEW_ENTRY_BYTES, _available_bytes()
        if need_bytes > MEMORY_SHARE_MAX * available_bytes:
            results.append({"nodes": n, "skipped": f"needs about {need_bytes / 2**30:.0f} GiB "
                            f"({n}^2 views of a member at {VIEW_ENTRY_BYTES} B), {available_bytes / 2**30:.0f} GiB available"})
            if not args.json:
                print(f"--- {n} nodes: not run, {results[-1]['skipped']}", flush=True)
            continue
        wall_start_s = time.perf_counter()
        cpu_start_s = time.process_time()
        settle_s = args.settle_s if args.settle_s is not None else (0.0 if args.formation == "formed" else 60.0)
        result = _scenario(n, args.seed, args.formation, settle_s, args.window_s, not args.no_codec_join)
        result["wall_s"] = time.perf_counter() - wall_start_s
        result["cpu_s"] = time.process_time() - cpu_start_s
        results.append(result)
        if not args.json:
            _print(result)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    return 0


def _print(result: dict[str, Any]) -> None:
    steady = result["steady"]
    print(f"--- {result['nodes']} nodes ({result['formation']}, seed {result['seed']}), {result['wall_s']:.0f} s of "
          f"wall time, {result['cpu_s']:.0f} CPU-s, peak RSS {result['maxrss_mib']:.0f} MiB")
    if "all_join_converge_s" in result:
        join_bytes = result["all_join_bytes_per_node"]
        print(f"converge (all join at t=0):  {_fmt(result['all_join_converge_s'], '.1f')} s = "
              f"{result['all_join_converge_rounds']} gossip rounds; "
              f"per node {result['all_join_msgs_per_node']:.0f} msgs"
              + ("" if join_bytes is None else f", {join_bytes / 1024:.0f} KiB"))
    print(f"steady load per node:        {steady['msgs_per_node_s']:.2f} msgs/s, {steady['bytes_per_node_s']:.0f} B/s "
          f"(push-pull every {result['push_pull_interval_s']:.0f} s)")
    for name, rate in steady["by_type"].items():
        print(f"    {name:<9} {rate['msgs_per_node_s']:7.3f} msgs/s {rate['bytes_per_node_s']:9.1f} B/s")
    print(f"one more joins -> all hold it: {_fmt(result['join_one_s'], '.1f')} s = "
          f"{result['join_one_rounds']} gossip rounds")
    print(f"crash -> first DEAD:         {_fmt(result['first_dead_s'], '.1f')} s "
          f"(suspicion floor {result['suspicion_timeout_s_min']:.1f} s)")
    print(f"crash -> DEAD at all live:   {_fmt(result['all_dead_s'], '.1f')} s "
          f"(bound {result['detection_bound_s']:.1f} s)")
    print(f"load while detecting:        {result['detection']['msgs_per_node_s']:.2f} msgs/s, "
          f"{result['detection']['bytes_per_node_s']:.0f} B/s per node", flush=True)


if __name__ == "__main__":
    sys.exit(main())
