#!/usr/bin/env python3
"""Chaos run: real daemons in a network namespace of their own, a seeded workload, a nemesis, a checker.

    python scripts/chaos.py --minutes 30 --seed 7 --nodes 5
    python scripts/chaos.py --replay /tmp/p2pfs-chaos/7-.../history.jsonl

Exit status: 0 no violation, 1 violations (the history is kept for --replay),
2 bad usage, 4 this machine cannot host the sandbox (the message says why).
See docs/CHAOS.md.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path

import click

from p2pfs.chaos import netns
from p2pfs.chaos.history import read_header
from p2pfs.chaos.nemesis import FAULT_KINDS
from p2pfs.chaos.runner import RunOptions, run_chaos
from p2pfs.chaos.checker import render_summary
from p2pfs.cli import ExitCode, exit_code_for
from p2pfs.errors import P2pfsError

OUT_ROOT_DEFAULT = Path("/tmp/p2pfs-chaos")


def _kinds(value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown or not kinds:
        raise click.BadParameter(f"unknown fault kind(s) {', '.join(unknown) or '(none)'}; "
                                 f"choose from {', '.join(FAULT_KINDS)}")
    return kinds


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--minutes", type=float, default=30.0, show_default=True,
              help="Length of the workload under the nemesis; setting up and checking add 20 s to a minute.")
@click.option("--seed", type=int, default=None, help="Seed of the workload and the nemesis (default: random).")
@click.option("--nodes", type=click.IntRange(3, 20), default=5, show_default=True, help="Daemons (rf is 3).")
@click.option("--faults", "faults", default=",".join(FAULT_KINDS), show_default=True, metavar="KIND,...",
              help="Fault kinds the nemesis may inject.")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Concurrent clients.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None, metavar="DIR",
              help=f"Where the history, summary and daemon logs go (default: {OUT_ROOT_DEFAULT}/SEED-TIME).")
@click.option("--replay", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              metavar="FILE", help="Run again with the seed and parameters of a saved history.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def main(minutes: float, seed: int | None, nodes: int, faults: str, workers: int, out_dir: Path | None,
         replay: Path | None, as_json: bool) -> None:
    """Run p2pfs under kills, pauses, partitions, loss, delay and clock skew, and check the result."""
    header = None
    if replay is not None:
        try:
            header = read_header(replay)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--replay") from None
        seed, faults = header["seed"], ",".join(header["kinds"])
    kinds = _kinds(faults)
    seed = random.randrange(2**31) if seed is None else seed
    out_dir = out_dir or OUT_ROOT_DEFAULT / f"{seed}-{time.strftime('%Y%m%dT%H%M%S')}"
    if not netns.inside_sandbox():
        missing = netns.missing_capabilities()
        if missing:
            click.echo(f"chaos: cannot run here: {'; '.join(missing)}", err=True)
            sys.exit(ExitCode.UNAVAILABLE)
        click.echo(f"chaos: seed {seed}, output in {out_dir}", err=True)
        args = ["--minutes", repr(minutes), "--seed", str(seed), "--nodes", str(nodes), "--faults", ",".join(kinds),
                "--workers", str(workers), "--out", str(out_dir)]
        args += (["--replay", str(replay.resolve())] if replay else []) + (["--json"] if as_json else [])
        netns.enter_sandbox([sys.executable, os.path.abspath(__file__), *args])
    # Inside the sandbox this process is the pid namespace's init, for which SIGTERM is
    # ignored unless handled: make it stop the run (the finally blocks clean up).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s chaos %(name)s: %(message)s", stream=sys.stderr)
    if header is not None:
        options = RunOptions.from_header(header, out_dir)
    else:
        options = RunOptions(seed=seed, duration_s=minutes * 60, out_dir=out_dir, nodes=nodes, kinds=kinds,
                             workers=workers)
    try:
        summary = run_chaos(options)
    except P2pfsError as exc:
        click.echo(f"chaos: the run could not complete: {exc} (history so far: {out_dir / 'history.jsonl'})",
                   err=True)
        sys.exit(exit_code_for(exc))
    click.echo(json.dumps(summary, indent=2, sort_keys=True) if as_json else render_summary(summary))
    click.echo(f"history: {out_dir / 'history.jsonl'} (replay with --replay)", err=True)
    sys.exit(ExitCode.FAILURE if summary["violations"] else ExitCode.OK)


if __name__ == "__main__":
    main()
