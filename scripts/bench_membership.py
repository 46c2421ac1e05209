#!/usr/bin/env python3
"""Membership benchmark on the simulated network (MockClock): convergence, detection, load.

For each cluster size: all nodes join through one seed at time 0, and we
measure the simulated time (and gossip rounds) until every node has the same
full view; then, after the join traffic has died down, the steady message and
byte load per node per second (bytes are encoded frames: wire.encode_message
plus the frame header); then a node is crashed and we measure the time until
the first and until every live member holds it DEAD, against
``MembershipConfig.detection_bound_s``.

A measurement, not a test: it never fails on speed. Runs as

    .venv/bin/python scripts/bench_membership.py [--nodes 100 1000] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import trio

from p2pfs.membership.config import MembershipConfig
from p2pfs.membership.messages import MemberState
from p2pfs.sim.membership import SimCluster, open_sim_cluster, wait_until
from p2pfs.sim import run_simulation

# Longest simulated wait for any one phase; a phase that takes longer is reported as not reached.
PHASE_S_MAX = 600.0


def _rates(cluster: SimCluster, window_s: float, n: int) -> dict[str, float]:
    stats = cluster.network.stats
    return {
        "msgs_per_node_s": stats.messages_sent / n / window_s,
        "bytes_per_node_s": stats.bytes_sent / n / window_s,
    }


async def _scenario(n: int, seed: int, settle_s: float, window_s: float, codec_join: bool) -> dict[str, Any]:
    config = MembershipConfig()
    result: dict[str, Any] = {"nodes": n, "seed": seed}
    async with open_sim_cluster(seed, config=config, codec=codec_join) as cluster:
        first = await cluster.start(0)
        for i in range(1, n):
            await cluster.start(i, [first.address])
        converge_s = await wait_until(cluster.converged, timeout_s=PHASE_S_MAX, poll_s=config.gossip_interval_s)
        result["converge_s"] = converge_s
        result["converge_rounds"] = None if converge_s is None else round(converge_s / config.gossip_interval_s)
        stats = cluster.network.stats
        result["join_msgs_per_node"] = stats.messages_sent / n
        result["join_bytes_per_node"] = stats.bytes_sent / n if codec_join else None

        # Steady state: let join gossip finish its retransmits, then measure.
        await trio.sleep(settle_s)
        cluster.network.encode = True
        cluster.network.reset_stats()
        await trio.sleep(window_s)
        result["steady"] = _rates(cluster, window_s, n)
        result["steady"]["by_type"] = {
            name: {"msgs_per_node_s": c / n / window_s, "bytes_per_node_s": b / n / window_s}
            for name, (c, b) in sorted(cluster.network.stats.by_type.items())
        }

        victim = cluster.nodes[n // 2]
        cluster.crash(victim)
        cluster.network.reset_stats()
        crashed_at_s = trio.current_time()

        def someone_has_it_dead() -> bool:
            return any(
                (m := node.core.member(victim.node_id)) is not None and m.state == MemberState.DEAD
                for node in cluster.running()
            )

        poll_s = config.gossip_interval_s / 2
        result["first_dead_s"] = await wait_until(someone_has_it_dead, timeout_s=PHASE_S_MAX, poll_s=poll_s)
        all_dead = await wait_until(
            lambda: cluster.dead_everywhere(victim.node_id), timeout_s=PHASE_S_MAX, poll_s=poll_s
        )
        result["all_dead_s"] = None if all_dead is None else trio.current_time() - crashed_at_s
        result["detection_bound_s"] = config.detection_bound_s(n)
        result["suspicion_timeout_s_min"] = config.suspicion_timeout_s_min(n)
        result["detection"] = _rates(cluster, trio.current_time() - crashed_at_s, n - 1)
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "not reached" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000], metavar="N")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settle-s", type=float, default=60.0, help="simulated seconds after convergence before measuring load")
    parser.add_argument("--window-s", type=float, default=180.0, help="simulated seconds of steady-state load measured")
    parser.add_argument(
        "--no-codec-join", action="store_true",
        help="do not encode messages during the join (faster for big clusters; join bytes not reported)",
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args(argv)

    results = []
    for n in args.nodes:
        wall_start_s = time.perf_counter()
        result = run_simulation(
            _scenario, n, args.seed, args.settle_s, args.window_s, not args.no_codec_join, seed=args.seed
        )
        result["wall_s"] = time.perf_counter() - wall_start_s
        results.append(result)
        if not args.json:
            steady = result["steady"]
            join_bytes = result["join_bytes_per_node"]
            print(f"--- {n} nodes (seed {args.seed}), {result['wall_s']:.0f} s of wall time")
            print(f"converge (all join at t=0):  {_fmt(result['converge_s'], '.1f')} s = {result['converge_rounds']} gossip rounds")
            print(f"join traffic per node:       {result['join_msgs_per_node']:.0f} msgs"
                  + ("" if join_bytes is None else f", {join_bytes / 1024:.0f} KiB"))
            print(f"steady load per node:        {steady['msgs_per_node_s']:.2f} msgs/s, {steady['bytes_per_node_s']:.0f} B/s")
            for name, rate in steady["by_type"].items():
                print(f"    {name:<9} {rate['msgs_per_node_s']:7.3f} msgs/s {rate['bytes_per_node_s']:9.1f} B/s")
            print(f"crash -> first DEAD:         {_fmt(result['first_dead_s'], '.1f')} s "
                  f"(suspicion floor {result['suspicion_timeout_s_min']:.1f} s)")
            print(f"crash -> DEAD at all live:   {_fmt(result['all_dead_s'], '.1f')} s "
                  f"(bound {result['detection_bound_s']:.1f} s)")
            print(f"load while detecting:        {result['detection']['msgs_per_node_s']:.2f} msgs/s, "
                  f"{result['detection']['bytes_per_node_s']:.0f} B/s per node", flush=True)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
