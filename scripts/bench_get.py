"""A/B of the get path: code trees side by side in one run, gets alternated, CPU-seconds per GiB.

Each code tree (a directory holding a ``p2pfs`` package, e.g. ``git archive COMMIT p2pfs | tar -x
-C DIR``) gets its own 3-node network (rf=3: every node holds every chunk), started with that
tree's code (``PYTHONPATH``), and the same file of random bytes put once. Then rounds of
``p2pfs get NAME -o FILE`` at node2 run through each tree's CLI in turn, the order reversed every
other round, so that what else loads the machine falls on both alike. Per get: wall time (CLI
start-up and the final fsync included), the CLI's CPU (``wait4``) and each daemon's CPU over the
get, per GiB. On a shared machine the CPU-seconds are the figure to judge by; MB/s move with the
load. ``bench.py data`` measures the same get against the machine's TLS ceiling.

``--cold`` drops the networks' files from the page cache before each get (``POSIX_FADV_DONTNEED``
on each file, not the machine's whole cache), so every get reads its chunks from the disk, as the
first get after a put does in ``bench.py data`` (chunks are written past the page cache); without
it, gets after the first read them from the cache.

Memory: after each get, each daemon's RSS and its peak since it started (``VmHWM``), and the CLI's
peak (``ru_maxrss``). The daemons' peaks are started afresh after the put, and the networks live on
through all the rounds, so the peaks show what repeated gets make a daemon keep; the last table says whether any stayed under ``DAEMON_RSS_MIB_MAX`` and
``CLI_RSS_MIB_MAX`` (the issue's targets).

Run it from a scratch directory, not a checkout: ``python -m p2pfs`` inside a checkout imports
that checkout's code whatever ``PYTHONPATH`` says. Byte-code caching is switched on for the
children (``PYTHONDONTWRITEBYTECODE`` removed): a CLI that compiles every module at each start
spends about 0.3 CPU-s more per command.

    cd "$(mktemp -d)" && .../.venv/bin/python .../scripts/bench_get.py --file-mib 1024 --rounds 3 \\
        before=/tmp/p2pfs-before after=/tmp/p2pfs-after
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_procs import cpu_s, status_mib

MIB = 1024 * 1024
GIB = 1024 * MIB
NODES = 3
NAME = "big"
# Time one command may take before the run is abandoned (a 4 GiB get at load 40 takes minutes).
COMMAND_TIMEOUT_S = 1800.0
# Attempts at the one put each network gets: at load 40 a put can miss its quorum (a replica
# that answered too late), which is not what this benchmark measures.
PUT_ATTEMPTS_MAX = 3
# The memory targets (issue 14): a daemon's and the CLI's peak RSS at any file size.
DAEMON_RSS_MIB_MAX = 150
CLI_RSS_MIB_MAX = 100


def tree_env(tree: Path, network: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("P2PFS_NODE", None)
    if network is not None:
        env["P2PFS_IDENTITY"] = str(network / "client")
    return env


def p2pfs(tree: Path, network: Path | None, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "p2pfs", *args], env=tree_env(tree, network), check=True,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S).stdout


def timed_cli(tree: Path, network: Path, *args: str) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MiB) of one CLI command."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "p2pfs", *args], env=tree_env(tree, network),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)  # the CLI has its own deadlines on every network wait
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"p2pfs {' '.join(args)}: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # ru_maxrss: KiB on Linux


def reset_peak_rss(pid: int) -> None:
    """Start the process's ``VmHWM`` afresh (Linux 4.0+), so that the peaks are the gets', not the put's."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _held(peak_mib: float, limit_mib: int) -> str:
    return f"{peak_mib:.0f}" if peak_mib < limit_mib else f"**{peak_mib:.0f}, over**"


def evict(directory: Path) -> None:
    """Drop the clean page-cache pages of every file under ``directory`` (this run's files only)."""
    for root, _, names in os.walk(directory):
        for name in names:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:  # a temp file gone meanwhile, a socket
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def nodes_of(tree: Path, network: Path) -> list[dict]:
    found = json.loads(p2pfs(tree, None, "testnet", "status", "--dir", str(network), "--json"))
    return found["nodes"] if isinstance(found, dict) else found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_get", description=__doc__.split("\n\n")[0])
    parser.add_argument("--file-mib", type=int, default=1024, metavar="MIB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the networks live (default: temp)")
    parser.add_argument("--cold", action="store_true",
                        help="drop the networks' files from the page cache before each get (reads from the disk)")
    parser.add_argument("trees", nargs="+", metavar="LABEL=DIR", help="a code tree to measure, by label")
    args = parser.parse_args(argv)
    trees = {label: Path(path).resolve() for label, path in (t.split("=", 1) for t in args.trees)}
    size_bytes = args.file_mib * MIB
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-get-", dir=args.dir) as work:
        work_dir = Path(work)
        source = work_dir / "source"
        with open(source, "wb") as f:
            for _ in range(args.file_mib):
                f.write(os.urandom(MIB))
        networks: dict[str, tuple[Path, list[dict]]] = {}
        try:
            for label, tree in trees.items():
                network = work_dir / f"net-{label}"
                networks[label] = (network, [])
                p2pfs(tree, None, "testnet", "up", "--dir", str(network), "--nodes", str(NODES), "--base-port", "0")
                nodes = nodes_of(tree, network)
                networks[label] = (network, nodes)
                for attempt in range(PUT_ATTEMPTS_MAX):
                    try:
                        timed_cli(tree, network, "--node", nodes[0]["address"], "put", str(source), "--name", NAME)
                        break
                    except RuntimeError as exc:
                        if attempt == PUT_ATTEMPTS_MAX - 1:
                            raise
                        print(f"{label}: the put failed, trying again: {exc}", file=sys.stderr)
            for _, nodes in networks.values():
                for node in nodes:
                    reset_peak_rss(node["pid"])
            print(f"{args.file_mib} MiB get at node2, {args.rounds} rounds{', from the disk (--cold)' if args.cold else ''}; "
                  f"load average {os.getloadavg()[0]:.1f}\n")
            print("| tree | round | load | seconds | MB/s | CPU-s/GiB, all | CLI | daemons "
                  "| daemons' RSS MiB, now (peak) | CLI peak RSS MiB |")
            print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
            for round_index in range(args.rounds):
                order = list(trees) if round_index % 2 == 0 else list(reversed(trees))
                for label in order:
                    tree, (network, nodes) = trees[label], networks[label]
                    output = work_dir / f"out-{label}"
                    if args.cold:
                        evict(network)
                    before = [cpu_s(n["pid"]) for n in nodes]
                    seconds, cli_cpu_s, cli_rss_mib = timed_cli(tree, network, "--node", nodes[1]["address"], "get", NAME,
                                                   "-o", str(output))
                    daemons = [(cpu_s(n["pid"]) - b) / (size_bytes / GIB) for n, b in zip(nodes, before)]
                    if output.stat().st_size != size_bytes:
                        raise RuntimeError(f"{label}: the get wrote {output.stat().st_size} of {size_bytes} bytes")
                    output.unlink()
                    row = {"tree": label, "round": round_index, "load": os.getloadavg()[0], "seconds": seconds,
                           "mb_s": size_bytes / seconds / 1e6, "cli": cli_cpu_s / (size_bytes / GIB),
                           "daemons": daemons, "cli_rss_mib": cli_rss_mib,
                           "rss_mib": [status_mib(n["pid"], "VmRSS") for n in nodes],
                           "peak_rss_mib": [status_mib(n["pid"], "VmHWM") for n in nodes]}
                    row["total"] = row["cli"] + sum(daemons)
                    rows.append(row)
                    print(f"| {label} | {round_index + 1} | {row['load']:.1f} | {seconds:.1f} | {row['mb_s']:.0f} "
                          f"| {row['total']:.2f} | {row['cli']:.2f} | {', '.join(f'{x:.2f}' for x in daemons)} "
                          f"| {', '.join(f'{now:.0f} ({peak:.0f})' for now, peak in zip(row['rss_mib'], row['peak_rss_mib']))} "
                          f"| {cli_rss_mib:.0f} |",
                          flush=True)
        finally:
            for label, (network, _) in networks.items():
                subprocess.run([sys.executable, "-m", "p2pfs", "testnet", "down", "--dir", str(network)],
                               env=tree_env(trees[label]), capture_output=True, timeout=COMMAND_TIMEOUT_S)
    print("\n| tree | gets | CPU-s/GiB, all: median (min-max) | CLI, median | MB/s, median "
          f"| daemon peak RSS MiB (< {DAEMON_RSS_MIB_MAX}) | CLI peak RSS MiB (< {CLI_RSS_MIB_MAX}) |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for label in trees:
        mine = [r for r in rows if r["tree"] == label]
        totals = [r["total"] for r in mine]
        print(f"| {label} | {len(mine)} | {statistics.median(totals):.2f} ({min(totals):.2f}-{max(totals):.2f}) "
              f"| {statistics.median(r['cli'] for r in mine):.2f} | {statistics.median(r['mb_s'] for r in mine):.0f} "
              f"| {_held(max(max(r['peak_rss_mib']) for r in mine), DAEMON_RSS_MIB_MAX)} "
              f"| {_held(max(r['cli_rss_mib'] for r in mine), CLI_RSS_MIB_MAX)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
