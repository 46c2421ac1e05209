"""Benchmark of the whole-cluster simulation (p2pfs/sim/cluster.py): many seeds, checked, and a replay.

Runs seeds FIRST .. FIRST+SEEDS-1, each a cluster of 5, 6 or 7 nodes (by seed) for DURATION simulated
seconds of workload and faults, then settling and the chaos checker. Reports violations (and the
seeds that had them), seeds per second, and the ratio of simulated to wall-clock time. With
--replay SEED it runs that seed twice and compares the two histories byte for byte.

PYTHONHASHSEED is fixed (the script re-executes itself with it set) so that a seed replays the same
in any process. Run it as python scripts/bench_sim.py (--help for options).
A benchmark measures; it never fails on speed. It exits 1 if a seed broke a promise or a replay
differed, since those are findings, not timings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

from p2pfs.sim.cluster import SimSettings, run_seed

HASH_SEED = "0"
SEEDS_DEFAULT = 1000
DURATION_S_DEFAULT = 120.0


def nodes_for(seed: int) -> int:
    return 5 + seed % 3


def _scratch() -> Path:
    """A directory for the nodes' disks: in memory (/dev/shm) when there is one."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="p2pfs-sim-", dir=shm if shm.is_dir() else None))


def one_seed(job: tuple[int, float, str | None]) -> dict:
    seed, duration_s, keep_dir = job
    scratch = _scratch()
    try:
        started_s = time.perf_counter()
        result = run_seed(seed, scratch / "run", SimSettings(nodes=nodes_for(seed), duration_s=duration_s))
        wall_s = time.perf_counter() - started_s
        history = result.history_path.read_bytes()
        if result.violations and keep_dir:
            Path(keep_dir).mkdir(parents=True, exist_ok=True)
            (Path(keep_dir) / f"seed-{seed}.jsonl").write_bytes(history)
        return {
            "seed": seed,
            "nodes": nodes_for(seed),
            "duration_s": duration_s,
            "wall_s": wall_s,
            "simulated_s": result.simulated_s,
            "operations": len(result.ops),
            "faults": len(result.faults),
            "violations": [v.as_json() for v in result.violations],
            "history_sha256": hashlib.sha256(history).hexdigest(),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("PYTHONHASHSEED") != HASH_SEED:
        os.environ["PYTHONHASHSEED"] = HASH_SEED
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *(sys.argv[1:] if argv is None else argv)])
    parser = argparse.ArgumentParser(prog="bench_sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=SEEDS_DEFAULT, metavar="COUNT",
                        help=f"how many seeds (default {SEEDS_DEFAULT})")
    parser.add_argument("--first", type=int, default=1, metavar="SEED", help="the first seed (default 1)")
    parser.add_argument("--duration", type=float, default=DURATION_S_DEFAULT, metavar="S",
                        help=f"simulated seconds of workload and faults per seed (default {DURATION_S_DEFAULT:.0f})")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="seeds run at once, one process each")
    parser.add_argument("--replay", type=int, default=None, metavar="SEED",
                        help="run SEED twice and compare the histories (default: the first seed)")
    parser.add_argument("--keep", default=None, metavar="DIR", help="save the histories of failing seeds here")
    parser.add_argument("--rows", default=None, metavar="FILE",
                        help="append each seed's figures to FILE (JSON lines) as it finishes")
    parser.add_argument("--summarize", default=None, metavar="FILE",
                        help="only summarize the rows saved in FILE by an earlier (perhaps cut short) run; "
                             "its wall time is estimated as the seeds' total over --jobs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    if args.summarize:
        saved = [json.loads(line) for line in Path(args.summarize).read_text().splitlines() if line.strip()]
        replays = [r for r in saved if r.get("replay")]
        rows = [r for r in saved if not r.get("replay")]
        wall_s = sum(r["wall_s"] for r in rows) / max(1, args.jobs)
        replay_seed = replays[0]["seed"] if replays else -1
        return report_on(rows, replays, replay_seed, wall_s, args)

    rows_file = open(args.rows, "a", encoding="utf-8") if args.rows else None

    def save(row: dict) -> dict:
        if rows_file is not None:
            rows_file.write(json.dumps(row, sort_keys=True) + "\n")
            rows_file.flush()
        return row

    # The replay first: its verdict should not wait for a thousand seeds.
    replay_seed = args.first if args.replay is None else args.replay
    replays = [save({**one_seed((replay_seed, args.duration, None)), "replay": True}) for _ in range(2)]
    seeds = range(args.first, args.first + args.seeds)
    jobs = [(seed, args.duration, args.keep) for seed in seeds]
    started_s = time.perf_counter()
    if args.jobs > 1:
        with multiprocessing.Pool(args.jobs) as pool:
            rows = [save(row) for row in pool.imap(one_seed, jobs)]
    else:
        rows = [save(one_seed(job)) for job in jobs]
    wall_s = time.perf_counter() - started_s
    return report_on(rows, replays, replay_seed, wall_s, args)


def report_on(rows: list[dict], replays: list[dict], replay_seed: int, wall_s: float, args) -> int:
    failing = [row for row in rows if row["violations"]]
    simulated_s = sum(row["simulated_s"] for row in rows)
    cpu_wall_s = sum(row["wall_s"] for row in rows)
    report = {
        "seeds": len(rows),
        "first_seed": min((row["seed"] for row in rows), default=args.first),
        "duration_s": args.duration,
        "jobs": args.jobs,
        "operations": sum(row["operations"] for row in rows),
        "faults": sum(row["faults"] for row in rows),
        "violations": sum(len(row["violations"]) for row in rows),
        "failing_seeds": [row["seed"] for row in failing],
        "wall_s": wall_s,
        "seeds_per_s": len(rows) / wall_s,
        "simulated_s": simulated_s,
        "simulated_per_wall": simulated_s / cpu_wall_s,  # per process, so it does not grow with --jobs
        "seed_wall_s_max": max(row["wall_s"] for row in rows),
        "replay_seed": replay_seed,
        "replay_identical": len(replays) == 2 and replays[0]["history_sha256"] == replays[1]["history_sha256"],
        "replay_sha256": replays[0]["history_sha256"] if replays else "",
    }
    if args.json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(
            f"sim: {report['seeds']} seeds from {report['first_seed']}, {args.duration:.0f} simulated s of faults each "
            f"(5-7 nodes, crashes, leaves, pauses, partitions, loss, clock skew), {args.jobs} process(es)"
        )
        click.echo(f"  operations {report['operations']:,}, faults {report['faults']:,}, "
                   f"violations {report['violations']} (failing seeds: {report['failing_seeds'] or 'none'})")
        click.echo(f"  wall {wall_s:,.0f} s: {report['seeds_per_s']:.2f} seeds/s; simulated {simulated_s:,.0f} s, "
                   f"{report['simulated_per_wall']:.1f} simulated s per wall s per process "
                   f"(slowest seed {report['seed_wall_s_max']:.1f} s)")
        click.echo(f"  replay of seed {replay_seed}: "
                   f"{'byte-identical' if report['replay_identical'] else 'DIFFERENT'} history "
                   f"(sha256 {report['replay_sha256'][:16]}...)")
    return 0 if not failing and report["replay_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
