"""Measure the storage room: hash functions, and chunk sizes end to end on real disk.

Run: .venv/bin/python scripts/bench_storage.py [--file-mib 256] [--dir /var/tmp]

Prints two tables (markdown) to stdout. Never fails on speed; shared machines are
noisy, so compare rows within one run, as ratios. MB/s = 10^6 bytes per second.

1. Hashing 1 MiB and 64 MiB buffers with SHA-256 (hashlib) and BLAKE3 (one thread,
   and all threads), median of several rounds.
2. For each chunk size: stream a file of random bytes through iter_chunks, hash each
   chunk and the whole file, and put the chunks into a fresh ChunkStore (temp file,
   fsync, rename, dir fsync) from one thread, then from two (as the replication layer
   will, via worker threads); then read every chunk back with verification (warm page
   cache). Also the encoded manifest size of a 4 GiB file at that chunk size.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import blake3

from p2pfs.storage import (
    CHUNK_ID_BYTES,
    ChunkStore,
    FileHasher,
    ManifestBuilder,
    chunk_id_of,
    iter_chunks,
)

MIB = 1024 * 1024
CHUNK_SIZES_BYTES = (256 * 1024, 1 * MIB, 4 * MIB)
HASH_ROUNDS = 7
GIB_4_BYTES = 4 * 1024 * MIB


def _median_mb_s(run: Callable[[], None], size_bytes: int, rounds: int) -> float:
    run()  # warm up: allocations, imports, CPU frequency
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return size_bytes / statistics.median(seconds) / 1e6


def bench_hashes() -> None:
    print("| buffer | SHA-256 MB/s | BLAKE3 1 thread MB/s | BLAKE3 all threads MB/s | BLAKE3 / SHA-256 |")
    print("|---|---:|---:|---:|---:|")
    for buffer_bytes, repeats in ((1 * MIB, 64), (64 * MIB, 1)):
        data = os.urandom(buffer_bytes)
        total_bytes = buffer_bytes * repeats

        def sha256() -> None:
            for _ in range(repeats):
                hashlib.sha256(data).digest()

        def blake3_one() -> None:
            for _ in range(repeats):
                blake3.blake3(data).digest()

        def blake3_all() -> None:
            for _ in range(repeats):
                blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()

        sha_mb_s = _median_mb_s(sha256, total_bytes, HASH_ROUNDS)
        one_mb_s = _median_mb_s(blake3_one, total_bytes, HASH_ROUNDS)
        all_mb_s = _median_mb_s(blake3_all, total_bytes, HASH_ROUNDS)
        print(
            f"| {buffer_bytes // MIB} MiB | {sha_mb_s:,.0f} | {one_mb_s:,.0f} | {all_mb_s:,.0f} "
            f"| {one_mb_s / sha_mb_s:.1f}x |"
        )


def _put_file(source: Path, store: ChunkStore, chunk_size_bytes: int, threads: int) -> int:
    """Chunk, hash and store ``source`` with ``threads`` putters; returns the chunk count."""
    hasher = FileHasher()
    builder = ManifestBuilder(chunk_size_bytes)
    in_flight: deque[Future[bool]] = deque()
    with ThreadPoolExecutor(max_workers=threads) as pool, open(source, "rb") as f:
        for data in iter_chunks(f, chunk_size_bytes):
            chunk_id = chunk_id_of(data)
            hasher.update(data)
            builder.add(chunk_id, len(data))
            if len(in_flight) >= 2 * threads:  # bound memory: a few chunks in flight
                in_flight.popleft().result()
            in_flight.append(pool.submit(store.put, chunk_id, data))
        for future in in_flight:
            future.result()
    return len(builder.finish(hasher.digest(), created_ms=0).chunks)


def bench_chunk_sizes(file_bytes: int, work_dir: Path, rounds: int) -> None:
    source = work_dir / "source.bin"
    with open(source, "wb") as f:
        for _ in range(file_bytes // MIB):
            f.write(os.urandom(MIB))
    print(
        f"median of {rounds} rounds, {file_bytes // MIB} MiB file\n\n"
        "| chunk size | chunks | put MB/s, 1 thread | put MB/s, 2 threads | get MB/s (warm) | manifest of 4 GiB |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for chunk_size_bytes in CHUNK_SIZES_BYTES:
        put_mb_s: dict[int, list[float]] = {1: [], 2: []}
        get_mb_s: list[float] = []
        for round_index in range(rounds):
            for threads in (1, 2):
                store_dir = work_dir / f"store-{chunk_size_bytes}-{threads}-{round_index}"
                store = ChunkStore(store_dir, capacity_bytes=2 * file_bytes)
                start = time.perf_counter()
                chunks = _put_file(source, store, chunk_size_bytes, threads)
                put_mb_s[threads].append(file_bytes / (time.perf_counter() - start) / 1e6)
            start = time.perf_counter()
            for chunk_id in store.iter_ids():
                store.get(chunk_id)
            get_mb_s.append(file_bytes / (time.perf_counter() - start) / 1e6)
            for threads in (1, 2):
                shutil.rmtree(work_dir / f"store-{chunk_size_bytes}-{threads}-{round_index}")
        chunks_4gib = -(-GIB_4_BYTES // chunk_size_bytes)
        manifest_4gib_bytes = chunks_4gib * CHUNK_ID_BYTES + 60  # ids plus a few small fields
        print(
            f"| {chunk_size_bytes // 1024} KiB | {chunks} | {statistics.median(put_mb_s[1]):,.0f} "
            f"| {statistics.median(put_mb_s[2]):,.0f} | {statistics.median(get_mb_s):,.0f} "
            f"| {manifest_4gib_bytes / 1024:,.0f} KiB |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file-mib", type=int, default=256, help="size of the test file in MiB")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per chunk size (median reported)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: system temp dir)")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, blake3 package {blake3.__version__}\n")
    bench_hashes()
    print()
    with tempfile.TemporaryDirectory(dir=args.dir) as work_dir:
        bench_chunk_sizes(args.file_mib * MIB, Path(work_dir), args.rounds)


if __name__ == "__main__":
    main()
