"""p2pfs benchmarks, one entry point: ``python scripts/bench.py AREA [options]``.

Areas and the modules (beside this file) that measure them:

    ring        bench_ring        the consistent-hash ring: speed, balance, data moved
    storage     bench_storage     hashing and chunk sizes on real disk
    membership  bench_cluster     real daemon processes: convergence, join, detection, idle cost
                bench_membership  the simulated network at 100 and 1,000 nodes (or --nodes)
    data        bench_data        put and get through the CLI and the client library, and the
                                  machine's own TLS ceiling in the same run
    heal        bench_heal        time to restore full replication after losing a node
    sim         bench_sim         the seeded whole-cluster simulation: many seeds, checked, a replay
    admin       bench_admin       the admin listener on real daemons: idle cost while scraped, one scrape
    fuzz        bench_fuzz        the frame decoder in process and every handler of a live node:
                                  inputs, crashes, hangs, the node's RSS and CPU
    all         each of the above with its defaults, one after another

Options after AREA go to its module (``python scripts/bench.py data --help``). ``membership`` also
takes ``--real-only``, ``--sim-only`` and ``--sim-args "..."`` (options for the simulation);
``membership --sim-only --nodes 100,1000,10000`` gives the other options to the simulation.
To add an area, write ``scripts/bench_AREA.py`` with ``main(argv: list[str] | None) -> int`` and
list it in ``AREAS``.

A benchmark measures and prints tables; it never fails a build on speed. Exit status 0 means every
benchmark ran (whatever it measured); anything else means one could not run. Shared machines are
noisy: compare figures within one run, as ratios. Results and the commands behind them are recorded
in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import signal
import sys
from pathlib import Path
from typing import Callable

SCRIPTS_DIR = Path(__file__).resolve().parent


def _module_main(module_name: str) -> Callable[[list[str]], int]:
    """``main(argv)`` of a benchmark module in scripts/; a missing module is reported, not fatal."""

    def run(argv: list[str]) -> int:
        if not (SCRIPTS_DIR / f"{module_name}.py").is_file():
            print(f"scripts/{module_name}.py does not exist yet: nothing to run", file=sys.stderr)
            return 2
        return importlib.import_module(module_name).main(argv) or 0

    return run


def _storage(argv: list[str]) -> int:
    """bench_storage's main() reads sys.argv itself, so hand it the options that way."""
    import bench_storage

    saved = sys.argv
    sys.argv = ["bench_storage", *argv]
    try:
        bench_storage.main()
    finally:
        sys.argv = saved
    return 0


def _membership(argv: list[str]) -> int:
    """Real processes (bench_cluster), then the simulation (bench_membership)."""
    parser = argparse.ArgumentParser(prog="bench.py membership", add_help=False)
    parser.add_argument("--real-only", action="store_true")
    parser.add_argument("--sim-only", action="store_true")
    parser.add_argument("--sim-args", default="", metavar="'OPTIONS'")
    ours, rest = parser.parse_known_args(argv)
    status = 0
    if not ours.sim_only:
        print("## Membership: real processes\n", flush=True)
        status = _module_main("bench_cluster")(rest) or status
    if not ours.real_only:
        print("\n## Membership: simulated network\n", flush=True)
        # With --sim-only, the other options are the simulation's (--nodes 100,1000,10000).
        sim_argv = shlex.split(ours.sim_args) + (rest if ours.sim_only else [])
        status = _module_main("bench_membership")(sim_argv) or status
    return status


AREAS: dict[str, Callable[[list[str]], int]] = {
    "ring": _module_main("bench_ring"),
    "storage": _storage,
    "membership": _membership,
    "data": _module_main("bench_data"),
    "heal": _module_main("bench_heal"),
    "sim": _module_main("bench_sim"),
    "admin": _module_main("bench_admin"),
    "fuzz": _module_main("bench_fuzz"),
}


# The CLI's start-up time: `p2pfs --help` and `p2pfs ls`, wall and CPU (bench_startup).
AREAS["startup"] = _module_main("bench_startup")

# Data per node: a real 3-node network holding a million names per node; the background
# jobs' time, traffic and the daemons' peak RSS, and a node healing a 10% loss (bench_pernode).
AREAS["pernode"] = _module_main("bench_pernode")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.py", description=__doc__.split("\n\n")[0],
        epilog="Options after AREA go to that area's benchmark; try `bench.py AREA --help`.",
    )
    parser.add_argument("area", choices=[*AREAS, "all"], help="what to measure")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options for the area's benchmark")
    args = parser.parse_args(argv)
    if args.area != "all":
        return AREAS[args.area](args.options)
    if args.options:
        parser.error("`all` runs every area with its defaults and takes no options")
    failed = []
    for area, run in AREAS.items():
        print(f"\n# {area}\n", flush=True)
        if run([]) != 0:
            failed.append(area)
    if failed:
        print(f"\ncould not run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on SIGTERM as on Ctrl-C
    sys.exit(main())
