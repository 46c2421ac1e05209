"""The data path on a 3-node rf=3 test network, against the machine's own ceiling measured in the same run.

Measures:
- the ceiling: a stream over one mutually authenticated TLS 1.3 connection between two trio
  processes on loopback (identities from p2pfs.identity, plain trio.SSLStream, 1 MiB writes), and
  the same through p2pfs.net's streamed bodies (an upload in a request, a download in an answer);
- large files (default 1 GiB): put and get through the real CLI (``p2pfs put``, ``p2pfs get -o``),
  wall time of the command including interpreter start-up; peak RSS of each daemon (VmHWM, reset
  before each transfer) and of the CLI (ru_maxrss); CPU seconds per GiB of the CLI and the daemons;
- small files (4 KiB): 16 concurrent clients, each a trio task with its own connection, in one
  process through the client library (a CLI process per operation would measure Python start-up);
  puts, then gets of another client's files, per second, with p50 and p99 latency, and the CPU
  seconds each operation cost in the client process and in each daemon (``--small-only`` runs only
  this part, for A/B runs of the small-file path).
Every throughput is also printed as a ratio to the same-run TLS ceiling (the better of a run before
and one after the cluster measurements): this machine is shared and noisy, and ratios move far less
than MB/s from run to run. MB/s = 10^6 B/s.

Run standalone (.venv/bin/python scripts/bench_data.py --help) or as ``python scripts/bench.py data``.
A benchmark measures; it never fails on speed: a missed target is printed, not raised.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from p2pfs import identity, testnet
from p2pfs.address import Address
from p2pfs.client import Client

from bench_ceiling import best_tls_mb_s, ceiling_identities, measure_ceiling, transfer_deadline_s
from bench_procs import cpu_s, reset_peak_rss, running_testnet, status_mib

MIB = 1024 * 1024
GIB = 1024 * MIB
NODES = 3  # rf=3 (the default) on 3 nodes: every node stores every chunk
FILE_MIB_DEFAULT = (1024,)
CEILING_MIB_DEFAULT = 1024
SMALL_FILE_BYTES_DEFAULT = 4096
CLIENTS_DEFAULT = 16
SMALL_OPS_PER_CLIENT_DEFAULT = 64
# Deadline for each phase of the small-file run.
SMALL_PHASE_TIMEOUT_S = 600.0
# Seconds the daemons' CPU is measured with no client work before the small files: what they
# spend anyway (membership, background jobs) is subtracted from each phase's CPU per operation,
# which otherwise grows with the phase's length on a loaded machine rather than with its work.
SMALL_IDLE_S = 5.0
# Interval between checks on a running CLI process.
CLI_POLL_S = 0.05
# Free disk a large-file size needs, as a multiple of its size: the source, rf copies, the output.
DISK_NEEDED_MULTIPLE = NODES + 2.5

TARGET_GET_RATIO = 0.5  # issue 14
TARGET_PUT_RATIO = 0.15  # issue 14
TARGET_DAEMON_RSS_MIB = 150.0
TARGET_CLI_RSS_MIB = 100.0
# A get's CPU over the CLI and every daemon (issue 14).
TARGET_GET_CPU_S_PER_GIB = 3.5
# A put's CPU over the CLI and every daemon (issue 14).
TARGET_PUT_CPU_S_PER_GIB = 15.0


# ---------------------------------------------------------------------------
# Large files through the CLI


def run_cli(directory: Path, node: testnet.NodeProcess, args: list[str], size_bytes: int,
            daemons: list[testnet.NodeProcess], log_path: Path) -> dict:
    """Run one ``p2pfs`` command to completion; its wall time, and the peak RSS and CPU of the
    command and of every daemon while it ran.

    The daemons' RSS is also sampled every CLI_POLL_S: the largest in the first and in the second
    half of the transfer, so that memory growing with the file shows as a second half above the
    first."""
    env = dict(os.environ, P2PFS_IDENTITY=str(directory / testnet.CLIENT_DIR))
    env.pop("P2PFS_NODE", None)
    peaks_reset = all(reset_peak_rss(d.pid) for d in daemons)
    daemon_cpu_start = {d.pid: cpu_s(d.pid) for d in daemons}
    deadline = time.monotonic() + transfer_deadline_s(size_bytes)
    rss_samples: list[tuple[float, float]] = []  # (seconds since start, largest daemon RSS in MiB)
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "p2pfs", "--node", str(node.address), *args],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, for ru_maxrss
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"p2pfs {' '.join(args)} did not finish in {transfer_deadline_s(size_bytes):.0f} s")
                rss_samples.append((time.perf_counter() - start, max(status_mib(d.pid, "VmRSS") for d in daemons)))
                time.sleep(CLI_POLL_S)  # waiting for a child with a deadline
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait(10)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"p2pfs {' '.join(args)} exited {proc.returncode}: {log_path.read_text()[-2000:]}")
    gib = size_bytes / GIB
    halves = ([rss for t, rss in rss_samples if t < seconds / 2], [rss for t, rss in rss_samples if t >= seconds / 2])
    return {
        "daemon_rss_mib_max_by_half": [max(half, default=0.0) for half in halves],
        "seconds": seconds,
        "mb_s": size_bytes / seconds / 1e6,
        "cli_rss_mib_peak": usage.ru_maxrss / 1024,
        "cli_cpu_s_per_gib": (usage.ru_utime + usage.ru_stime) / gib,
        "daemon_rss_mib_peak": [status_mib(d.pid, "VmHWM") for d in daemons],
        "daemon_rss_peak_since": "transfer start" if peaks_reset else "daemon start",
        "daemon_cpu_s_per_gib": [(cpu_s(d.pid) - daemon_cpu_start[d.pid]) / gib for d in daemons],
    }


def write_random_file(path: Path, size_bytes: int) -> None:
    """Random bytes, synced to disk: the put that follows must not pay this file's writeback."""
    with open(path, "wb") as f:
        for _ in range(size_bytes // MIB):
            f.write(os.urandom(MIB))
        f.write(os.urandom(size_bytes % MIB))
        f.flush()
        os.fsync(f.fileno())


def set_put_shape(directory: Path, shape: str) -> None:
    """Restart node1, the put's coordinator (the node that picks a chunk write's shape), with
    ``[replication] chunk_write_shape = shape``; restarted before every put of an A/B run, so
    each shape is measured on an equally fresh process."""
    node_dir = directory / "node1"
    config = node_dir / testnet.CONFIG_FILE
    lines = [line for line in config.read_text().splitlines() if not line.startswith("chunk_write_shape")]
    setting = f'chunk_write_shape = "{shape}"'
    if "[replication]" in lines:
        lines.insert(lines.index("[replication]") + 1, setting)
    else:
        lines += ["", "[replication]", setting]
    config.write_text("\n".join(lines) + "\n")
    testnet.stop_node(node_dir, kill=False)
    testnet.start_node(node_dir)
    trio.run(lambda: testnet.wait_converged(directory, timeout_s=120.0, started=[node_dir]))


def measure_large(directory: Path, work_dir: Path, size_bytes: int, *, get: bool = True) -> dict:
    """Put a file of random bytes at node1, get it back from node2 (the get's coordinator fetches
    every chunk from the replicas it prefers, itself included) unless ``get`` is False."""
    daemons = testnet.status(directory)
    source = work_dir / f"large-{size_bytes}"
    output = work_dir / f"large-{size_bytes}.out"
    write_random_file(source, size_bytes)
    try:
        name = source.name
        put = run_cli(directory, daemons[0], ["put", str(source), "--name", name], size_bytes, daemons,
                      work_dir / "put.log")
        if not get:
            return {"size_bytes": size_bytes, "put": put}
        got = run_cli(directory, daemons[1], ["get", name, "-o", str(output)], size_bytes, daemons,
                      work_dir / "get.log")
        if output.stat().st_size != size_bytes:
            raise RuntimeError(f"get wrote {output.stat().st_size} of {size_bytes} bytes")
    finally:
        source.unlink(missing_ok=True)
        output.unlink(missing_ok=True)
    return {"size_bytes": size_bytes, "put": put, "get": got}


# ---------------------------------------------------------------------------
# Small files through the client library


def _percentile_ms(latencies_s: list[float], percent: int) -> float:
    return statistics.quantiles(latencies_s, n=100, method="inclusive")[percent - 1] * 1000


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


async def small_files(client_ident: identity.Identity, addresses: list[Address], clients: int,
                      ops_per_client: int, size_bytes: int, daemon_pids: list[int]) -> dict:
    """``clients`` tasks, each with its own connection (spread over the nodes), put then get."""
    latencies_s: dict[str, list[float]] = {"put": [], "get": []}
    seconds: dict[str, float] = {}
    client_cpu_s: dict[str, float] = {}
    daemon_cpu_s: dict[str, list[float]] = {}
    contents = {(i, j): os.urandom(size_bytes) for i in range(clients) for j in range(ops_per_client)}

    async with contextlib.AsyncExitStack() as stack:
        connections = [await stack.enter_async_context(Client.connect(client_ident, addresses[i % len(addresses)]))
                       for i in range(clients)]
        idle_start = [cpu_s(pid) for pid in daemon_pids]
        await trio.sleep(SMALL_IDLE_S)
        idle_cpu_s_per_s = [(cpu_s(pid) - before) / SMALL_IDLE_S for pid, before in zip(daemon_pids, idle_start)]

        async def putter(i: int) -> None:
            for j in range(ops_per_client):
                start = trio.current_time()
                await connections[i].put(io.BytesIO(contents[i, j]), f"small/{i}/{j}", size_bytes)
                latencies_s["put"].append(trio.current_time() - start)

        async def getter(i: int) -> None:
            owner = (i + 1) % clients  # another client's files, put through another node
            for j in range(ops_per_client):
                sink = io.BytesIO()
                start = trio.current_time()
                await connections[i].get(f"small/{owner}/{j}", sink)
                latencies_s["get"].append(trio.current_time() - start)
                if sink.getvalue() != contents[owner, j]:
                    raise RuntimeError(f"small/{owner}/{j} came back different")

        for op, worker in (("put", putter), ("get", getter)):
            start = trio.current_time()
            own_start, daemons_start = _own_cpu_s(), [cpu_s(pid) for pid in daemon_pids]
            with trio.fail_after(SMALL_PHASE_TIMEOUT_S):
                async with trio.open_nursery() as nursery:
                    for i in range(clients):
                        nursery.start_soon(worker, i)
            seconds[op] = trio.current_time() - start
            client_cpu_s[op] = _own_cpu_s() - own_start
            daemon_cpu_s[op] = [cpu_s(pid) - before - idle * seconds[op]
                                for pid, before, idle in zip(daemon_pids, daemons_start, idle_cpu_s_per_s)]
    return {
        op: {
            "ops": len(lat),
            "ops_per_s": len(lat) / seconds[op],
            "p50_ms": _percentile_ms(lat, 50),
            "p99_ms": _percentile_ms(lat, 99),
            "client_cpu_ms_per_op": client_cpu_s[op] / len(lat) * 1000,
            "daemon_cpu_ms_per_op": [x / len(lat) * 1000 for x in daemon_cpu_s[op]],
        }
        for op, lat in latencies_s.items()
    } | {"clients": clients, "size_bytes": size_bytes, "daemon_idle_cpu_s_per_s": idle_cpu_s_per_s}


# ---------------------------------------------------------------------------
# Report


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_report(report: dict) -> None:
    if "ceiling" in report:
        print_large(report)
    if "small" in report:
        print_small(report["small"])


def print_large(report: dict) -> None:
    before, after = report["ceiling"]["before"], report["ceiling"]["after"]
    tls_mb_s = best_tls_mb_s(report)
    print(f"### The machine's ceiling ({report['ceiling_mib']} MiB, one connection, loopback), "
          "before and after the cluster runs\n")
    print("| path | MB/s before | MB/s after | x TLS (best) | sender CPU-s/GiB | receiver CPU-s/GiB |")
    print("|---|--:|--:|--:|--:|--:|")
    for first, last in zip(before, after):
        best = max(first["mb_s"], last["mb_s"])
        sender = (first["sender_cpu_s_per_gib"] + last["sender_cpu_s_per_gib"]) / 2
        receiver = (first["receiver_cpu_s_per_gib"] + last["receiver_cpu_s_per_gib"]) / 2
        print(f"| {first['path']} | {first['mb_s']:,.0f} | {last['mb_s']:,.0f} | {best / tls_mb_s:.2f} "
              f"| {sender:.2f} | {receiver:.2f} |")
    print(f"\n### Large files through the CLI ({NODES} nodes, rf=3), ratios to the best TLS run "
          f"({tls_mb_s:,.0f} MB/s)\n")
    print("| file | op | seconds | MB/s | x TLS (target) | daemon peak RSS MiB, each "
          f"(< {TARGET_DAEMON_RSS_MIB:g}) | largest daemon RSS MiB, 1st / 2nd half "
          f"| CLI peak RSS MiB (< {TARGET_CLI_RSS_MIB:g}) | CPU-s/GiB: CLI; daemons |")
    print("|--:|---|--:|--:|--:|--:|--:|--:|--:|")
    for large in report["large"]:
        if "skipped" in large:
            print(f"| {large['size_bytes'] // MIB} MiB | - | skipped: {large['skipped']} | | | | | | |")
            continue
        for op, target in (("put", TARGET_PUT_RATIO), ("get", TARGET_GET_RATIO)):
            if op not in large:  # --put-only
                continue
            r = large[op]
            ratio = r["mb_s"] / tls_mb_s
            rss = r["daemon_rss_mib_peak"]
            op_label = op if large.get("shape") is None else f"{op} ({large['shape']})"
            print(f"| {large['size_bytes'] // MIB} MiB | {op_label} | {r['seconds']:.1f} | {r['mb_s']:,.0f} "
                  f"| {ratio:.2f} (>= {target}) {_verdict(ratio >= target)} "
                  f"| {', '.join(f'{x:.0f}' for x in rss)} {_verdict(max(rss) < TARGET_DAEMON_RSS_MIB)} "
                  f"| {' / '.join(f'{x:.0f}' for x in r['daemon_rss_mib_max_by_half'])} "
                  f"| {r['cli_rss_mib_peak']:.0f} {_verdict(r['cli_rss_mib_peak'] < TARGET_CLI_RSS_MIB)} "
                  f"| {r['cli_cpu_s_per_gib']:.1f}; {', '.join(f'{x:.1f}' for x in r['daemon_cpu_s_per_gib'])} |")
    print_cpu(report, "get", TARGET_GET_CPU_S_PER_GIB)
    print_cpu(report, "put", TARGET_PUT_CPU_S_PER_GIB)
    if any(large.get("put", {}).get("daemon_rss_peak_since") == "daemon start" for large in report["large"]):
        print("\n(daemon peaks are since each daemon started: resetting VmHWM was not permitted)")


def print_cpu(report: dict, kind: str, target_cpu_s_per_gib: float) -> None:
    """A put's or a get's CPU over all processes, the figure its target is set in."""
    for large in report["large"]:
        if kind in large:
            r = large[kind]
            total = r["cli_cpu_s_per_gib"] + sum(r["daemon_cpu_s_per_gib"])
            print(f"\n{large['size_bytes'] // MIB} MiB {kind}: {total:.1f} CPU-s/GiB over the CLI and the daemons "
                  f"(<= {target_cpu_s_per_gib:g}) {_verdict(total <= target_cpu_s_per_gib)}")


def print_small(small: dict) -> None:
    print(f"\n### Small files: {small['size_bytes']} B each, {small['clients']} concurrent clients "
          "(client library, one connection each, one process); daemon CPU net of their idle "
          f"{', '.join(f'{x:.3f}' for x in small['daemon_idle_cpu_s_per_s'])} CPU-s/s\n")
    print("| op | operations | ops/s | p50 ms | p99 ms | CPU ms per op: client; daemons |")
    print("|---|--:|--:|--:|--:|--:|")
    for op in ("put", "get"):
        r = small[op]
        print(f"| {op} | {r['ops']} | {r['ops_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
              f"| {r['client_cpu_ms_per_op']:.2f}; {', '.join(f'{x:.2f}' for x in r['daemon_cpu_ms_per_op'])} |")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file-mib", default=",".join(map(str, FILE_MIB_DEFAULT)), metavar="MIB,MIB,...",
                        help="large file sizes in MiB (default %(default)s; e.g. 1024,4096 to compare memory)")
    parser.add_argument("--ceiling-mib", type=int, default=CEILING_MIB_DEFAULT, metavar="MIB",
                        help="bytes streamed for the ceiling, in MiB (default %(default)s)")
    parser.add_argument("--clients", type=int, default=CLIENTS_DEFAULT, help="concurrent small-file clients")
    parser.add_argument("--small-ops", type=int, default=SMALL_OPS_PER_CLIENT_DEFAULT, metavar="COUNT",
                        help="puts (and gets) per small-file client (default %(default)s)")
    parser.add_argument("--small-bytes", type=int, default=SMALL_FILE_BYTES_DEFAULT, metavar="BYTES")
    parser.add_argument("--small-only", action="store_true",
                        help="only the small files (no ceiling, no large files): for A/B runs of that path")
    parser.add_argument("--put-shapes", default="", metavar="SHAPE,SHAPE,...",
                        help="A/B the chunk write shape: each large file is put once per entry, in this order "
                             "(e.g. chain,star,star,chain), node1 restarted with that shape before each")
    parser.add_argument("--put-only", action="store_true",
                        help="only the ceiling and the large puts (no get, no small files): for A/B runs of the put")
    parser.add_argument("--dir", type=Path, default=None, help="where the network and files live (default: temp)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the network's directory (the daemons' logs: nodeI/daemon.log) under --dir")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def run(args: argparse.Namespace) -> int:
    sizes_bytes = [int(x) * MIB for x in args.file_mib.split(",")]
    report: dict = {"ceiling_mib": args.ceiling_mib, "large": [], "load_average": os.getloadavg()[0],
                    "started": time.strftime("%Y-%m-%d %H:%M")}
    with contextlib.ExitStack() as stack:
        if args.keep:
            work = tempfile.mkdtemp(prefix="bench-data-", dir=args.dir)
            print(f"keeping {work}", file=sys.stderr)
        else:
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-data-", dir=args.dir))
        work_dir = Path(work)
        node_dir, ceiling_client = ceiling_identities(work_dir)
        if not args.small_only:
            report["ceiling"] = {"before": measure_ceiling(node_dir, ceiling_client, args.ceiling_mib * MIB)}
        directory = work_dir / "net"
        with running_testnet(directory, NODES) as procs:
            for size_bytes in [] if args.small_only else sizes_bytes:
                free_bytes = shutil.disk_usage(work_dir).free
                if free_bytes < size_bytes * DISK_NEEDED_MULTIPLE:
                    report["large"].append({"size_bytes": size_bytes,
                                            "skipped": f"{free_bytes / GIB:.0f} GiB free on disk"})
                    continue
                for shape in args.put_shapes.split(",") if args.put_shapes else [None]:
                    if shape is not None:
                        set_put_shape(directory, shape)
                    report["large"].append({**measure_large(directory, work_dir, size_bytes, get=not args.put_only),
                                            "shape": shape})
            if not args.put_only:
                client_ident = identity.load_identity(directory / testnet.CLIENT_DIR)
                procs = testnet.status(directory)  # node1 has a new pid if --put-shapes restarted it
                report["small"] = trio.run(small_files, client_ident, [p.address for p in procs], args.clients,
                                           args.small_ops, args.small_bytes, [p.pid for p in procs])
        if not args.small_only:
            report["ceiling"]["after"] = measure_ceiling(node_dir, ceiling_client, args.ceiling_mib * MIB)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"cpus: {os.cpu_count()}; started {report['started']}; load average at the start "
              f"{report['load_average']:.1f}\n")
        print_report(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_data", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on SIGTERM as on Ctrl-C
    sys.exit(main())
