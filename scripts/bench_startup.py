"""Start-up time of the CLI: `p2pfs --help` and `p2pfs ls`, wall clock and CPU.

    python scripts/bench.py startup [--runs 20] [--source DIR] [--nodes 3]

Runs each command ``--runs`` times, interleaved (so that a burst of load hits all
alike), against a small test network started from the same source tree, and prints
the median and the minimum of the wall time and of the CPU time (user + system) of
each. On a shared machine the wall time is mostly waiting for a core; the CPU time is
what the command would take on an idle one. ``python -c pass`` is the floor: the
interpreter's own start-up. ``--source`` measures another checkout (say, a
`git archive` of main) the same way; its p2pfs is put first on PYTHONPATH.

Then, once, where an `ls` spends its import time (`python -X importtime`): the
packages it loads, largest first, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Each command is run this long at most (a hung CLI must not hang the benchmark).
COMMAND_TIMEOUT_S = 60.0
# Packages the import breakdown groups modules into (first match wins), largest costs of `ls`.
GROUPS = ("trio", "cryptography", "ssl", "_ssl", "click", "attr", "msgpack", "blake3", "p2pfs.net", "p2pfs.identity",
          "p2pfs.replication", "p2pfs.membership", "p2pfs.storage", "p2pfs.node", "p2pfs.client", "p2pfs.cli",
          "p2pfs.wire", "p2pfs")


def run_once(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run; fails loudly on a non-zero exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start_s = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, timeout=COMMAND_TIMEOUT_S)
    wall_s = time.perf_counter() - start_s
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}: {result.stderr.decode()[-2000:]}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall_s, cpu_s


def import_breakdown(command: list[str], env: dict[str, str]) -> list[tuple[str, float]]:
    """Milliseconds of import time per package group (self times summed), largest first."""
    result = subprocess.run([command[0], "-X", "importtime", *command[1:]], env=env, capture_output=True,
                            text=True, timeout=COMMAND_TIMEOUT_S)
    totals: dict[str, float] = {}
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        self_us, _, module = line[len("import time:"):].split("|")
        module = module.strip()
        group = next((g for g in GROUPS if module == g or module.startswith(g + ".")), "other")
        totals[group] = totals.get(group, 0.0) + int(self_us) / 1000
    return sorted(totals.items(), key=lambda item: -item[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.py startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose p2pfs to measure")
    parser.add_argument("--nodes", type=int, default=3, help="nodes in the test network (default 3)")
    args = parser.parse_args(argv)
    source = args.source.resolve()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(source), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("P2PFS_NODE", None)
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="p2pfs-bench-startup-") as temp:
        network = Path(temp) / "net"
        p2pfs = [python, "-m", "p2pfs"]
        subprocess.run([*p2pfs, "testnet", "up", "--dir", str(network), "--nodes", str(args.nodes),
                        "--base-port", "0"], env=env, check=True, capture_output=True, timeout=300)
        try:
            status = subprocess.run([*p2pfs, "testnet", "status", "--dir", str(network), "--json"], env=env,
                                    check=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
            node = json.loads(status.stdout)[0]["address"]
            env["P2PFS_IDENTITY"] = str(network / "client")
            for i in range(10):
                subprocess.run([*p2pfs, "--node", node, "put", "-", "--name", f"bench/{i}"], input=b"x" * i,
                               env=env, check=True, capture_output=True, timeout=COMMAND_TIMEOUT_S)
            commands = {
                "python -c pass": [python, "-c", "pass"],
                "p2pfs --help": [*p2pfs, "--help"],
                "p2pfs ls --help": [*p2pfs, "ls", "--help"],
                "p2pfs ls (10 files)": [*p2pfs, "--node", node, "ls"],
            }
            load_before = os.getloadavg()[0]
            times: dict[str, list[tuple[float, float]]] = {label: [] for label in commands}
            for _ in range(args.runs):
                for label, command in commands.items():
                    times[label].append(run_once(command, env))
            load_after = os.getloadavg()[0]
            breakdown = import_breakdown(commands["p2pfs ls (10 files)"], env)
        finally:
            subprocess.run([*p2pfs, "testnet", "down", "--dir", str(network)], env=env, capture_output=True,
                           timeout=300)
    print(f"source {source}, {args.runs} runs each, load average {load_before:.1f} before, {load_after:.1f} after\n")
    print("| command | wall median (ms) | wall min (ms) | CPU median (ms) | CPU min (ms) |")
    print("|---|---|---|---|---|")
    for label, samples in times.items():
        walls = [w * 1000 for w, _ in samples]
        cpus = [c * 1000 for _, c in samples]
        print(f"| `{label}` | {statistics.median(walls):.0f} | {min(walls):.0f} | "
              f"{statistics.median(cpus):.0f} | {min(cpus):.0f} |")
    print("\nimport time of `p2pfs ls`, self times by package (one run, ms):\n")
    print(", ".join(f"{group} {ms:.0f}" for group, ms in breakdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
