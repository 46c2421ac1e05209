"""Start-up time of the CLI: `p2pfs --help`, `p2pfs ls` (and stat, members), wall clock and CPU.

    python scripts/bench.py startup [--runs 20] [--source DIR [--source DIR2]] [--nodes 3] [--instructions]

Runs each command ``--runs`` times, interleaved (so that a burst of load hits all
alike), against a small test network started from the same source tree, and prints
the median and the minimum of the wall time and of the CPU time (user + system) of
each. On a shared machine the wall time is mostly waiting for a core; the CPU time is
what the command would take on an idle one. ``python -c pass`` is the floor: the
interpreter's own start-up. ``--source DIR`` measures another checkout (say, a
`git archive` of main; its p2pfs is put first on PYTHONPATH, and every command runs in a
scratch directory, since `python -m` and `-c` put the current directory ahead of
PYTHONPATH); given twice, both are measured in the same run, turn about, each against a
network of its own.

Then where `ls` spends its import time: the CPU each stage of its imports adds,
in the order it loads them (the least of ``--runs`` fresh interpreters each).

``--instructions``: also the instructions each command executes, once, under
``valgrind --tool=callgrind`` (the ``Ir`` total). Unlike time, the count does not move
with the machine's load, so it compares two sources on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
# What `p2pfs ls` imports, in the order it needs them: each stage is timed after the ones
# before it are loaded, so a stage's figure is what it adds. `ls` runs on the blocking driver
# (p2pfs.client.blocking, no trio, no cryptography, only the client's data messages); the
# last four stages are what other commands add to it (a CRL beside the identity, the
# daemon's messages, put and get). A stage a source does not have (an older checkout) is
# shown as "-".
STAGES = ("click", "p2pfs.cli", "p2pfs.cli.files", "ssl", "p2pfs.wire", "p2pfs.membership.messages",
          "p2pfs.replication.fields", "p2pfs.replication.client_messages", "p2pfs.identity", "p2pfs.net.trust",
          "p2pfs.net.mux", "p2pfs.node.messages", "p2pfs.client.blocking",
          "cryptography.x509", "p2pfs.replication.messages", "trio", "p2pfs.client.failover")
# Each command under callgrind is given this long (it runs some 50 times slower).
CALLGRIND_TIMEOUT_S = 600.0


def run_once(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run; fails loudly on a non-zero exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start_s = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, timeout=COMMAND_TIMEOUT_S, cwd=cwd)
    wall_s = time.perf_counter() - start_s
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}: {result.stderr.decode()[-2000:]}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall_s, cpu_s


def instructions(command: list[str], env: dict[str, str], cwd: Path) -> int:
    """Instructions one run of ``command`` executes (callgrind's ``Ir`` total)."""
    with tempfile.TemporaryDirectory(prefix="p2pfs-bench-callgrind-") as temp:
        out = Path(temp) / "callgrind.out"
        result = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command], env=env,
                                capture_output=True, timeout=CALLGRIND_TIMEOUT_S, cwd=cwd)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} under callgrind exited {result.returncode}: "
                             f"{result.stderr.decode()[-2000:]}")
        found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        if found is None:
            raise SystemExit(f"no instruction total in callgrind's output for {' '.join(command)}")
        return int(found[1])


def stage_once(python: str, env: dict[str, str], index: int, cwd: Path) -> float | None:
    """CPU seconds importing ``STAGES[index]`` adds, in a fresh interpreter with the ones before it
    loaded (None if this source lacks one of them).

    CPU time, in-process (``time.process_time``): unlike ``-X importtime``'s wall clock it
    barely moves with the machine's load.
    """
    code = "import importlib.util, sys, time\n"
    code += f"names = {STAGES[:index + 1]!r}\n"
    code += "if not all(importlib.util.find_spec(n) for n in names): sys.exit(3)\n"
    code += "".join(f"import {before}\n" for before in STAGES[:index])
    code += f"start = time.process_time()\nimport {STAGES[index]}\nprint(time.process_time() - start)"
    result = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                            cwd=cwd)
    if result.returncode == 3:
        return None
    if result.returncode != 0:
        raise SystemExit(f"importing {STAGES[index]} failed: {result.stderr[-2000:]}")
    return float(result.stdout)


def start_network(python: str, env: dict[str, str], directory: Path, nodes: int) -> str:
    """A test network of ``nodes`` from ``env``'s source, 10 small files in it; the first node's address."""
    p2pfs = [python, "-m", "p2pfs"]
    subprocess.run([*p2pfs, "testnet", "up", "--dir", str(directory), "--nodes", str(nodes), "--base-port", "0"],
                   env=env, check=True, capture_output=True, timeout=300, cwd=directory.parent)
    status = subprocess.run([*p2pfs, "testnet", "status", "--dir", str(directory), "--json"], env=env,
                            check=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, cwd=directory.parent)
    node = json.loads(status.stdout)[0]["address"]
    env["P2PFS_IDENTITY"] = str(directory / "client")
    for i in range(10):
        subprocess.run([*p2pfs, "--node", node, "put", "-", "--name", f"bench/{i}"], input=b"x" * i,
                       env=env, check=True, capture_output=True, timeout=COMMAND_TIMEOUT_S, cwd=directory.parent)
    return node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.py startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    parser.add_argument("--source", type=Path, action="append",
                        help="checkout whose p2pfs to measure (repeat to compare, runs interleaved; "
                             "default: this one)")
    parser.add_argument("--nodes", type=int, default=3, help="nodes in each test network (default 3)")
    parser.add_argument("--instructions", action="store_true",
                        help="also count each command's instructions once under valgrind's callgrind")
    args = parser.parse_args(argv)
    sources = [s.resolve() for s in (args.source or [ROOT])]
    python = sys.executable
    envs = []
    for source in sources:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(source), *filter(None, [env.get("PYTHONPATH")])])
        env.pop("P2PFS_NODE", None)
        envs.append(env)
    p2pfs = [python, "-m", "p2pfs"]
    with tempfile.TemporaryDirectory(prefix="p2pfs-bench-startup-") as temp:
        networks = [Path(temp) / f"net{i}" for i in range(len(sources))]
        try:
            nodes = [start_network(python, env, network, args.nodes) for env, network in zip(envs, networks)]
            commands = {
                "python -c pass": lambda node: [python, "-c", "pass"],
                "p2pfs --help": lambda node: [*p2pfs, "--help"],
                "p2pfs ls --help": lambda node: [*p2pfs, "ls", "--help"],
                "p2pfs ls (10 files)": lambda node: [*p2pfs, "--node", node, "ls"],
                "p2pfs stat": lambda node: [*p2pfs, "--node", node, "stat", "bench/9"],
                "p2pfs members": lambda node: [*p2pfs, "--node", node, "members"],
            }
            counts = {}
            if args.instructions:
                for label, command in commands.items():
                    for i, (env, node) in enumerate(zip(envs, nodes)):  # turn about, as the timed runs
                        counts[(i, label)] = instructions(command(node), env, Path(temp))
            load_before = os.getloadavg()[0]
            times = {(i, label): [] for i in range(len(sources)) for label in commands}
            stages = {(i, stage): [] for i in range(len(sources)) for stage in STAGES}
            for _ in range(args.runs):  # every source and command in turn, so load hits all alike
                for i, (env, node) in enumerate(zip(envs, nodes)):
                    for label, command in commands.items():
                        times[(i, label)].append(run_once(command(node), env, Path(temp)))
                    for index, stage in enumerate(STAGES):
                        stages[(i, stage)].append(stage_once(python, env, index, Path(temp)))
            load_after = os.getloadavg()[0]
        finally:
            for env, network in zip(envs, networks):
                subprocess.run([*p2pfs, "testnet", "down", "--dir", str(network)], env=env, capture_output=True,
                               timeout=300, cwd=temp)
    print(f"{args.runs} runs each, interleaved; load average {load_before:.1f} before, {load_after:.1f} after")
    if counts:
        print("\ninstructions executed, millions (callgrind, one run each):\n")
        print("| command | " + " | ".join(str(s) for s in sources) + " |" + (" ratio |" if len(sources) == 2 else ""))
        print("|---|" + "---|" * (len(sources) + (len(sources) == 2)))
        for label in commands:
            row = [counts[(i, label)] for i in range(len(sources))]
            ratio = f" {row[1] / row[0]:.2f} |" if len(row) == 2 else ""
            print(f"| `{label}` | " + " | ".join(f"{n / 1e6:,.0f}" for n in row) + " |" + ratio)
    for i, source in enumerate(sources):
        print(f"\nsource {source}:\n")
        print("| command | wall median (ms) | wall min (ms) | CPU median (ms) | CPU min (ms) |")
        print("|---|---|---|---|---|")
        for label in commands:
            walls = [w * 1000 for w, _ in times[(i, label)]]
            cpus = [c * 1000 for _, c in times[(i, label)]]
            print(f"| `{label}` | {statistics.median(walls):.0f} | {min(walls):.0f} | "
                  f"{statistics.median(cpus):.0f} | {min(cpus):.0f} |")
        print(f"\nwhat each import of `p2pfs ls` adds, CPU ms (median and least of {args.runs}):\n")
        print("| import | CPU median (ms) | CPU min (ms) |")
        print("|---|---|---|")
        for stage in STAGES:
            samples = [x * 1000 for x in stages[(i, stage)] if x is not None]
            if samples:
                print(f"| `{stage}` | {statistics.median(samples):.1f} | {min(samples):.1f} |")
            else:
                print(f"| `{stage}` | - | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
