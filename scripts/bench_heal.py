"""Benchmark: how fast a cluster restores full replication after losing a node.

On a real 5-node testnet (rf=3) holding ``--gib`` GiB of files, SIGKILL one node
for good and measure:

* the time from the kill until ``fsck`` reports nothing under-replicated, missing
  or misplaced (the dead node's grace period is set short, ``--dead-grace-s``, and
  counted separately: it is a policy wait, not repair work);
* the bytes the survivors gained, against the ideal (what the dead node held);
* foreground get throughput while repair runs, as a ratio to the same get before.

Run: ``python scripts/bench.py heal [--gib 1] [--dead-grace-s 5]`` (or this file).
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pfs import identity, testnet  # noqa: E402
from p2pfs.client import Client  # noqa: E402
from p2pfs.errors import BadInput  # noqa: E402

FILE_BYTES = 16 * 1024 * 1024
PROBE_FILE = "probe"
PROBE_BYTES = 128 * 1024 * 1024
FSCK_POLL_S = 1.0
REPAIR_TIMEOUT_S = 1800.0


def pick_base_port(nodes: int) -> int:
    rng = random.Random()
    return rng.randrange(20000, 32000 - nodes)


async def put_files(ident, address, count: int, rng: random.Random) -> None:
    limiter = trio.CapacityLimiter(4)

    async def one(i: int) -> None:
        async with limiter:
            data = rng.randbytes(FILE_BYTES)
            async with Client.connect(ident, address) as client:
                await client.put(io.BytesIO(data), f"bulk/{i:05d}", len(data))

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)


async def timed_get_mb_s(ident, address) -> float:
    sink = _NullSink()
    start = time.perf_counter()
    async with Client.connect(ident, address) as client:
        await client.get(PROBE_FILE, sink)
    return sink.size / (time.perf_counter() - start) / 1e6


class _NullSink:
    """Counts bytes: the benchmark measures the network path, not the local disk."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)


async def used_bytes(ident, procs) -> dict[str, int]:
    used = {}
    for proc in procs:
        async with Client.connect(ident, proc.address) as client:
            used[proc.name] = (await client.status()).used_bytes
    return used


def healthy(report) -> bool:
    return not (report.names_under_replicated or report.chunks_under_replicated or report.chunks_missing
                or report.chunks_misplaced or report.names_misplaced or report.nodes_unreachable)


async def run(directory: Path, gib: float, dead_grace_s: float) -> dict:
    procs = testnet.status(directory)
    ident = identity.load_identity(directory / testnet.CLIENT_DIR)
    entry = procs[0].address
    rng = random.Random(1)
    count = max(1, int(gib * 1024**3 // FILE_BYTES))
    start = time.perf_counter()
    await put_files(ident, entry, count, rng)
    put_s = time.perf_counter() - start
    probe = rng.randbytes(PROBE_BYTES)
    async with Client.connect(ident, entry) as client:
        await client.put(io.BytesIO(probe), PROBE_FILE, len(probe))
    baseline_mb_s = max([await timed_get_mb_s(ident, entry) for _ in range(2)])
    before = await used_bytes(ident, procs)

    victim = procs[-1]
    testnet.stop_node(victim.directory, kill=True)
    killed_at = time.perf_counter()
    during: list[float] = []
    report = None
    with trio.fail_after(REPAIR_TIMEOUT_S):
        while True:
            during.append(await timed_get_mb_s(ident, entry))
            async with Client.connect(ident, entry) as client:
                report = await client.fsck()
            if time.perf_counter() - killed_at > dead_grace_s and healthy(report):
                break
            await trio.sleep(FSCK_POLL_S)
    restored_s = time.perf_counter() - killed_at
    survivors = [p for p in procs if p.name != victim.name]
    after = await used_bytes(ident, survivors)
    gained = sum(after[p.name] - before[p.name] for p in survivors)
    return {
        "files": count + 1,
        "data_bytes": count * FILE_BYTES + PROBE_BYTES,
        "put_mb_s": count * FILE_BYTES / put_s / 1e6,
        "restored_s": restored_s,
        "repair_s": restored_s - dead_grace_s,
        "dead_grace_s": dead_grace_s,
        "moved_bytes": gained,
        "ideal_bytes": before[victim.name],
        "get_mb_s_before": baseline_mb_s,
        "get_mb_s_during": sum(during) / len(during),
        "gets_during": len(during),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="data to store before the kill, GiB")
    parser.add_argument("--dead-grace-s", type=float, default=5.0,
                        help="how long the dead node stays in the ring before repair starts")
    parser.add_argument("--anti-entropy-interval-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    overrides = {"replication": {"dead_grace_s": args.dead_grace_s,
                                 "anti_entropy_interval_s": args.anti_entropy_interval_s}}
    with tempfile.TemporaryDirectory(prefix="p2pfs-bench-heal-") as tmp:
        directory = Path(tmp) / "net"
        for _ in range(20):
            try:
                testnet.create(directory, 5, pick_base_port(5), overrides)
                break
            except BadInput as exc:
                if "in use" not in str(exc):
                    raise
        try:
            testnet.up(directory, 5, 0)
            result = trio.run(run, directory, args.gib, args.dead_grace_s)
        finally:
            testnet.down(directory)
    print(f"heal: 5 nodes, rf=3, {result['data_bytes'] / 1024**3:.2f} GiB in {result['files']} files "
          f"(put at {result['put_mb_s']:.0f} MB/s)")
    print(f"  full replication restored {result['restored_s']:.1f} s after the kill "
          f"({result['dead_grace_s']:.0f} s grace + {result['repair_s']:.1f} s repair)")
    print(f"  bytes moved {result['moved_bytes'] / 1e6:.0f} MB vs ideal {result['ideal_bytes'] / 1e6:.0f} MB "
          f"({result['moved_bytes'] / max(1, result['ideal_bytes']):.2f}x)")
    print(f"  foreground get {result['get_mb_s_during']:.0f} MB/s during repair vs "
          f"{result['get_mb_s_before']:.0f} MB/s before "
          f"({result['get_mb_s_during'] / result['get_mb_s_before']:.2f}x, {result['gets_during']} gets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
