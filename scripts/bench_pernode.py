"""Benchmark: data per node. A real 3-node network (rf=3) whose nodes each hold ``--names``
names of two chunks each, and what its background jobs cost at that size.

The stores are written directly, not put through the network (a million puts would
take hours): one SQLite transaction of rows for the name index, copied to every
node, and chunk files in the store's layout without fsync, hard-linked into every
node's store (every node holds every chunk at rf=3 on 3 nodes; a link saves the
disk, and a chunk a node loses or gains is its own file). Each name is a file of a
minimum-size chunk (4 KiB) and a 16-byte tail: the count is the point, not the bytes.

Then, on the running network:

* anti-entropy: the round time each node logs, and the TCP bytes the daemons sent
  (``ss``, summed over their sockets) while rounds ran with nothing to repair;
* GC: the round time each node logs (every chunk referenced: nothing removed, and since
  no chunk is a candidate, no other node's names read);
* fsck and a paged ``ls`` of every name, through one node: time and bytes;
* a node that lost 10% of its chunks (stopped, files removed, started): the time from
  its start until its store is whole again, and the bytes that moved;
* with ``--leave``, a graceful leave of one node: the hand-off's time and bytes (chunks
  1,024 ids to a HasChunks, names a page of each owner's index per batch);
* throughout, every daemon's peak RSS (``VmHWM``), and its highest RSS in each phase.

Run: ``python scripts/bench.py pernode [--names 1000000]`` (develop with ``--names 50000``).
Everything it creates is under one temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pfs import identity, testnet  # noqa: E402
from p2pfs.client import Client  # noqa: E402
from p2pfs.storage import CHUNK_SIZE_BYTES_MIN, ChunkRef, Manifest, NameIndex, chunk_id_of  # noqa: E402
from p2pfs.storage.names import NAMES_FILE_NAME  # noqa: E402

NODES = 3
# Name rows per executemany (one transaction for all of them).
INSERT_BATCH_ROWS = 10_000
TAIL_BYTES = 16
WRITER = "e" * 64
SAMPLE_INTERVAL_S = 1.0
HEAL_TIMEOUT_S = 7200.0
ROUNDS_TIMEOUT_S = 7200.0
LOSS_FRACTION = 0.10
# The traffic samples, kept beside the logs (``--logs``): a line a second, every daemon's bytes sent.
SERIES_FILE_NAME = "traffic.tsv"
# How long the daemons may take to start and see each other: a daemon opening two million
# chunks on a loaded machine passed testnet's 60 s before its membership started.
CONVERGE_TIMEOUT_S = 1800.0
# GC's interval in anti-entropy intervals: its first round (at 0.75 of it at the soonest) comes
# after two anti-entropy rounds, so their traffic is measured alone.
GC_INTERVALS = 6
# The round's own traffic, at the end of its line (p2pfs/net/traffic.py); absent from the logs of
# daemons before it, whose fields read None.
_TRAFFIC = r"(?:, (\d+) bytes sent and (\d+) received in (\d+) requests)?"
AE_ROUND = re.compile(r"^(\S+) .*anti-entropy round: ([\d.]+) s, (\d+) chunks and (\d+) names walked, (\d+) peers, "
                      r"(\d+) chunks pulled, (\d+) keys short(?:, exchanges from the walks of (\d+) rounds)?"
                      + _TRAFFIC)
# A round whose ring holds its node alone does not walk, and says so in a line of its own
# (antientropy.py): no time, its chunks held; parsed into AE_ROUND's fields (0 s, 0 names, 0 peers).
AE_SKIPPED = re.compile(r"^(\S+) .*anti-entropy round: skipped, the ring has no member but this node; "
                        r"(\d+) chunks held")
# A round cut in its walk says so in a line of its own (antientropy.py): its time and traffic,
# its keys unknown ("-").
AE_WALK_CUT = re.compile(r"^(\S+) .*anti-entropy round: ([\d.]+) s, cut in its walk[^,]*" + _TRAFFIC)
# A round cut by its deadline (background.py) logs this after its own line. Daemons before
# AE_WALK_CUT logged no line of their own for a round cut in its walk: that round is read from
# this line alone (its deadline's seconds, its keys unknown: "-").
AE_CUT = re.compile(r"^(\S+) .*anti-entropy round cut at its deadline of ([\d.]+) s")
GC_ROUND = re.compile(r"^(\S+) .*gc round: ([\d.]+) s, (\d+) references from (\d+) nodes, (\d+) chunks judged, "
                      r"(\d+) removed(?:, (\S+(?: \d+)?) candidates" + _TRAFFIC + ")?")


def build_stores(node_dirs: list[Path], names: int) -> float:
    """Write every node's chunk store and name index directly; returns the seconds it took."""
    start = time.perf_counter()
    first = node_dirs[0] / "data"
    chunks_dirs = [d / "data" / "chunks" for d in node_dirs]
    for chunks_dir in chunks_dirs:
        for prefix in range(256):
            (chunks_dir / f"{prefix:02x}").mkdir(parents=True, exist_ok=True)
    NameIndex(first / NAMES_FILE_NAME).close()  # its schema
    conn = sqlite3.connect(first / NAMES_FILE_NAME, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    now_ms = int(time.time() * 1000) - 3_600_000
    rows = []
    for i in range(names):
        head = i.to_bytes(8, "big") * (CHUNK_SIZE_BYTES_MIN // 8)
        tail = b"tail" + i.to_bytes(12, "big")
        ids = []
        for data in (head, tail):
            chunk_id = chunk_id_of(data)
            hex_id = chunk_id.hex()
            paths = [d / hex_id[:2] / hex_id[2:] for d in chunks_dirs]
            with open(paths[0], "wb") as f:
                f.write(data)
            for path in paths[1:]:
                os.link(paths[0], path)
            ids.append(ChunkRef(chunk_id, len(data)))
        manifest = Manifest(tuple(ids), len(head) + len(tail), chunk_id_of(head + tail), now_ms,
                            CHUNK_SIZE_BYTES_MIN)
        rows.append((f"bench/{i:08d}".encode(), now_ms, i, WRITER, manifest.encode()))
        if len(rows) == INSERT_BATCH_ROWS:
            conn.executemany("INSERT INTO names (name, wall_ms, logical, writer, manifest) VALUES (?, ?, ?, ?, ?)",
                             rows)
            rows = []
    conn.executemany("INSERT INTO names (name, wall_ms, logical, writer, manifest) VALUES (?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for node_dir in node_dirs[1:]:
        shutil.copyfile(first / NAMES_FILE_NAME, node_dir / "data" / NAMES_FILE_NAME)
    return time.perf_counter() - start


def stores_from(template: Path, names: int, node_dirs: list[Path]) -> float:
    """Every node's stores from ``template`` (built there first if it holds no store of ``names``):
    chunk files hard-linked, the name index copied. Returns the seconds it took."""
    start = time.perf_counter()
    marker = template / f"built-{names}"
    if not marker.exists():
        shutil.rmtree(template, ignore_errors=True)
        (template / "data").mkdir(parents=True)
        build_stores([template], names)
        marker.touch()
    for node_dir in node_dirs:
        chunks_dir = node_dir / "data" / "chunks"
        for prefix in range(256):
            source = template / "data" / "chunks" / f"{prefix:02x}"
            (chunks_dir / source.name).mkdir(parents=True, exist_ok=True)
            for entry in os.scandir(source):
                os.link(entry.path, chunks_dir / source.name / entry.name)
        shutil.copyfile(template / "data" / NAMES_FILE_NAME, node_dir / "data" / NAMES_FILE_NAME)
    return time.perf_counter() - start


def chunk_count(node_dir: Path) -> int:
    chunks_dir = node_dir / "data" / "chunks"
    return sum(sum(1 for _ in os.scandir(chunks_dir / f"{p:02x}")) for p in range(256))


class Sampler:
    """Every daemon's peak RSS and the TCP bytes its sockets sent, read once a second.

    With ``series``, each sample's time and every daemon's bytes sent so far (over every
    socket it had, closed ones included: ``sent_total``) go to that file, a line a sample,
    so that each round's traffic is read off its window afterwards (``report``).
    """

    def __init__(self, directory: Path, series: Path | None = None) -> None:
        self._directory = directory
        self._series = series
        # Per daemon, the bytes sent by every socket seen so far: a socket's bytes_sent when
        # last seen, summed (sockets that close keep what they sent until then).
        self.sent_total: dict[str, int] = {}
        self._socket_sent: dict[tuple[str, str, str], int] = {}
        self._sent_lock = threading.Lock()  # the sampling thread and the phases' reads both count
        self.peak_rss_kib: dict[str, int] = {}
        # The highest RSS (VmRSS) each daemon had while each phase of the run was under way.
        self.phase = "start"
        self.phase_rss_kib: dict[str, dict[str, int]] = {}
        # Each daemon's sockets' sent bytes at the last sample (a leaving daemon's last figure
        # survives its exit, when its sockets and its peers' sockets to it are gone).
        self.last_sent: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def pids(self) -> dict[int, str]:
        return {p.pid: p.name for p in testnet.status(self._directory) if p.pid and p.running}

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            for pid, name in self.pids().items():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
                self.peak_rss_kib[name] = max(self.peak_rss_kib.get(name, 0), hwm)
                rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
                in_phase = self.phase_rss_kib.setdefault(self.phase, {})
                in_phase[name] = max(in_phase.get(name, 0), rss)
            self.last_sent.update(self.sent_by_daemon())
            if self._series is not None:
                with open(self._series, "a") as f:
                    f.write(f"{time.time():.3f}\t" + "\t".join(f"{n}={b}" for n, b in sorted(self.sent_total.items()))
                            + "\n")

    def sent_bytes(self) -> int:
        """TCP bytes sent so far by every daemon's open sockets (loopback: each byte once)."""
        return sum(self.sent_by_daemon().values())

    def sent_by_daemon(self) -> dict[str, int]:
        pids = self.pids()
        out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, check=True).stdout
        with self._sent_lock:
            return self._count_sent(pids, out)

    def _count_sent(self, pids: dict[int, str], out: str) -> dict[str, int]:
        sent_by: dict[str, int] = dict.fromkeys(pids.values(), 0)
        owner = socket = None
        for line in out.splitlines():
            found = re.search(r"pid=(\d+)", line)
            if found:
                owner = int(found.group(1))
                fields = line.split()
                socket = (fields[3], fields[4])  # local and peer address
            sent = re.search(r"bytes_sent:(\d+)", line)
            if sent and owner in pids:
                name, sent_bytes = pids[owner], int(sent.group(1))
                sent_by[name] += sent_bytes
                before = self._socket_sent.get((name, *socket), 0)
                self.sent_total[name] = self.sent_total.get(name, 0) + max(0, sent_bytes - before)
                self._socket_sent[(name, *socket)] = sent_bytes
        return sent_by

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def rounds(node_dir: Path, pattern: re.Pattern) -> list[tuple]:
    return rounds_in((node_dir / "daemon.log").read_text(errors="replace"), pattern)


def rounds_in(log: str, pattern: re.Pattern) -> list[tuple]:
    """Each round's fields, in the log's order; for AE_ROUND, a skipped round's line too (as a
    round of 0 s that walked and pulled nothing, and ``"skipped"`` last)."""
    found = []
    logged = False  # whether the round now ending logged its own line
    for line in log.splitlines():
        m = pattern.match(line)
        if m:
            found.append(m.groups())
            logged = True
        elif pattern is AE_ROUND and (m := AE_SKIPPED.match(line)):
            found.append((m.group(1), "0", m.group(2), "0", "0", "0", "0", "skipped", None, None, None))
        elif pattern is AE_ROUND and (m := AE_WALK_CUT.match(line)):
            found.append((m.group(1), m.group(2), "-", "-", "-", "0", "-", "cut in its walk", *m.groups()[2:]))
            logged = True
        elif pattern is AE_ROUND and (m := AE_CUT.match(line)):
            if not logged:
                found.append((m.group(1), m.group(2), "-", "-", "-", "0", "-", "cut in its walk", None, None, None))
            logged = False
    return found


def wait_rounds(node_dirs: list[Path], pattern: re.Pattern, count: int, skip: dict[Path, int]) -> dict:
    deadline = time.monotonic() + ROUNDS_TIMEOUT_S
    while time.monotonic() < deadline:
        found = {d: rounds(d, pattern)[skip.get(d, 0):] for d in node_dirs}
        if all(len(f) >= count for f in found.values()):
            return found
        time.sleep(SAMPLE_INTERVAL_S)
    raise TimeoutError(f"fewer than {count} rounds in {ROUNDS_TIMEOUT_S} s")


async def fsck_and_ls(ident, address) -> dict:
    # fsck takes as many requests as it needs (each answered within a minute, FsckPending
    # while the node's check runs), so the client's own deadlines hold at any size.
    async with Client.connect(ident, address) as client:
        start, listed, after, pages = time.perf_counter(), 0, "", 0
        while True:
            page = await client.ls("", after=after)
            listed, pages = listed + len(page.files), pages + 1
            after = page.next_after
            if not after:
                break
        ls_s = time.perf_counter() - start
        print(f"ls: {listed} names in {pages} pages, {ls_s:.1f} s", flush=True)
        start = time.perf_counter()
        report = await client.fsck()
        fsck_s = time.perf_counter() - start
    return {"fsck_s": fsck_s, "report": report, "ls_s": ls_s, "listed": listed, "pages": pages}


def lose_chunks(victim: Path) -> int:
    """Remove LOSS_FRACTION of a stopped node's chunk files; returns how many it held."""
    files = sorted(p for sub in (victim / "data" / "chunks").iterdir() for p in sub.iterdir())
    for path in random.Random(1).sample(files, int(len(files) * LOSS_FRACTION)):
        path.unlink()
    return len(files)


def run(directory: Path, names: int, interval_s: float, leave: bool, template: Path | None,
        skip_rounds: bool, heal_first: bool, series: Path | None = None, fsck_during_heal: bool = False) -> None:
    overrides = {"replication": {"anti_entropy_interval_s": interval_s, "gc_interval_s": GC_INTERVALS * interval_s,
                                 "leave_handoff_timeout_s": 3600.0}}
    testnet.create(directory, NODES, 0, overrides)
    node_dirs = sorted(p.directory for p in testnet.status(directory))
    build_s = build_stores(node_dirs, names) if template is None else stores_from(template, names, node_dirs)
    print(f"built {names:,} names and {2 * names:,} chunks per node in {build_s:.0f} s", flush=True)
    ident = identity.load_identity(directory / testnet.CLIENT_DIR)
    victim = node_dirs[-1]
    if heal_first:
        whole = lose_chunks(victim)
        print(f"{victim.name} lost {int(whole * LOSS_FRACTION):,} of its {whole:,} chunks before the start", flush=True)
    with Sampler(directory, series) as sampler:
        start = time.perf_counter()
        sampler.phase = "start-up"
        testnet.CONVERGE_TIMEOUT_S = CONVERGE_TIMEOUT_S
        procs = testnet.up(directory, NODES, 0)
        sampler.phase = "anti-entropy"
        print(f"3 daemons up and converged in {time.perf_counter() - start:.0f} s", flush=True)
        result = None
        if heal_first:
            sampler.phase = "heal (every node's first rounds)"
            sent0 = sampler.sent_bytes()
            if fsck_during_heal:
                # ls and fsck through the first node while the last one heals: at full scale each
                # takes minutes, and one after the other they would not fit a working session.
                sampler.phase = "heal, with ls and fsck through node1"
                beside_result: dict = {}
                beside = threading.Thread(
                    target=lambda: beside_result.update(trio.run(fsck_and_ls, ident, procs[0].address)), daemon=True)
                beside.start()
            wait_whole(victim, whole, start)
            heal_s = time.perf_counter() - start
            heal_rounds = rounds(victim, AE_ROUND)
            print(f"| heal: {int(whole * LOSS_FRACTION):,} of {whole:,} chunks lost before the start | {victim.name} | "
                  f"{len(heal_rounds)} | whole {heal_s:.0f} s after the start | "
                  f"{sum(int(r[5]) for r in heal_rounds)} pulled by its rounds | "
                  f"{(sampler.sent_bytes() - sent0) / 1e6:.1f} MB |", flush=True)
            print_peak_rss(sampler.peak_rss_kib, "so far")
            print_phase_rss(sampler.phase_rss_kib)
            if fsck_during_heal:
                sampler.phase = "ls and fsck through node1, after the heal"
                beside.join()
                if not beside_result:
                    raise RuntimeError("ls or fsck during the heal failed (see above)")
                result = beside_result
            sampler.phase = "anti-entropy"
        if not skip_rounds:
            sent0, t0 = sampler.sent_bytes(), time.perf_counter()
            ae = wait_rounds(node_dirs, AE_ROUND, 2, {})
            sent1, t1 = sampler.sent_bytes(), time.perf_counter()
            gc_early = sum(len(rounds(d, GC_ROUND)) for d in node_dirs)
            ae_before_gc = {d: len(rounds(d, AE_ROUND)) for d in node_dirs}
            sampler.phase = "gc (and anti-entropy)"
            gcs = wait_rounds(node_dirs, GC_ROUND, 1, {})
            sent2 = sampler.sent_bytes()
            ae_during_gc = sum(len(rounds(d, AE_ROUND)) - ae_before_gc[d] for d in node_dirs)
            print("\n| job | node | rounds | time per round, s | walked | traffic |", flush=True)
            print("|---|---|---|---|---|---|")
            ae_rounds = sum(len(r) for r in ae.values())
            for d, found in ae.items():
                times = sorted(float(r[1]) for r in found)
                print(f"| anti-entropy, nothing to repair | {d.name} | {len(found)} | {times[0]:.1f} to {times[-1]:.1f} "
                      f"| {found[-1][2]} chunks, {found[-1][3]} names | "
                      f"{(sent1 - sent0) / max(1, ae_rounds) / 1e3:.0f} kB a round (all daemons, {t1 - t0:.0f} s, "
                      f"{gc_early} gc rounds in it) |", flush=True)
            ae_round_bytes = (sent1 - sent0) / max(1, ae_rounds)
            gc_rounds = sum(len(r) for r in gcs.values())
            gc_bytes = (sent2 - sent1 - ae_during_gc * ae_round_bytes) / max(1, gc_rounds)
            for d, found in gcs.items():
                print(f"| gc | {d.name} | {len(found)} | {float(found[0][1]):.1f} | {found[0][4]} chunks judged, "
                      f"{found[0][2]} references from {found[0][3]} nodes, {found[0][6]} candidates | {gc_bytes / 1e6:.1f} MB a round (all daemons; {ae_during_gc} "
                      f"anti-entropy rounds' share taken off) |", flush=True)
        sent0 = sampler.sent_bytes()
        if result is None:
            sampler.phase = "fsck, ls"
            result = trio.run(fsck_and_ls, ident, procs[0].address)
        sent1 = sampler.sent_bytes()
        checked = result["report"]
        print(f"| fsck | {procs[0].name} | 1 | {result['fsck_s']:.1f} | {checked.names_checked} names, "
              f"{checked.chunks_checked} chunks, {checked.chunks_under_replicated} under-replicated | "
              + ("traffic: see the rounds' table |" if fsck_during_heal else
                 f"ls and fsck together {(sent1 - sent0) / 1e6:.1f} MB |"), flush=True)
        print(f"| ls, paged | {procs[0].name} | {result['pages']} pages | {result['ls_s']:.1f} | "
              f"{result['listed']} names | - |", flush=True)

        print_peak_rss(sampler.peak_rss_kib, "so far")
        print_phase_rss(sampler.phase_rss_kib)
        if not heal_first:
            testnet.stop_node(victim, kill=False)
            whole = lose_chunks(victim)
            skip = {victim: len(rounds(victim, AE_ROUND))}
            sent0 = sampler.sent_bytes()
            start = time.perf_counter()
            sampler.phase = "heal"
            testnet.start_node(victim)
            wait_whole(victim, whole, start)
            heal_s = time.perf_counter() - start
            sent1 = sampler.sent_bytes()
            heal_rounds = rounds(victim, AE_ROUND)[skip[victim]:]
            print(f"| heal: {int(whole * LOSS_FRACTION):,} of {whole:,} chunks lost | {victim.name} | "
                  f"{len(heal_rounds)} | whole {heal_s:.0f} s after its start | "
                  f"{sum(int(r[5]) for r in heal_rounds)} pulled by its rounds | {(sent1 - sent0) / 1e6:.1f} MB |",
                  flush=True)
            print_peak_rss(sampler.peak_rss_kib, "so far")
            print_phase_rss(sampler.phase_rss_kib)
        if leave:
            leaving = node_dirs[0].name
            start = time.perf_counter()
            sent0 = sampler.sent_by_daemon()[leaving]
            sampler.phase = "hand-off"
            testnet.leave_node(node_dirs[0], timeout_s=HEAL_TIMEOUT_S)
            sent1 = sampler.last_sent[leaving]
            print(f"| hand-off (graceful leave) | {leaving} | 1 | {time.perf_counter() - start:.0f} | "
                  f"{2 * names:,} chunks, {names:,} names | {(sent1 - sent0) / 1e6:.1f} MB (sent by the leaving "
                  f"node, sampled each second until it exited) |", flush=True)
        print_peak_rss(sampler.peak_rss_kib, "over the run")
        print_phase_rss(sampler.phase_rss_kib)


def log_time_s(stamp: str) -> float:
    """A daemon log line's UTC time (``2026-11-27T16:18:50.772Z``) in seconds since the epoch."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def read_series(path: Path) -> list[tuple[float, dict[str, int]]]:
    series = []
    for line in path.read_text().splitlines():
        if not line.endswith(tuple("0123456789\t")):
            continue  # the line being written when the file was read
        t, *fields = line.split("\t")
        series.append((float(t), {k: int(v) for k, v in (f.split("=") for f in fields if f)}))
    return series


def sent_between(series: list[tuple[float, dict[str, int]]], name: str | None, t0: float, t1: float) -> int:
    """Bytes ``name`` (every daemon if None) sent between t0 and t1, from the samples nearest."""
    times = [t for t, _ in series]

    def at(t: float) -> dict[str, int]:
        i = bisect.bisect_right(times, t) - 1
        return series[max(i, 0)][1] if series else {}

    before, after = at(t0), at(t1)
    names = [name] if name is not None else sorted(after)
    return sum(max(0, after.get(n, 0) - before.get(n, 0)) for n in names)


def own_traffic(fields: tuple) -> str:
    """A round's own traffic from its line's last three fields: what its requests sent and their
    answers brought, MB, and how many; "-" for a line of a daemon that did not count it."""
    sent, received, requests = fields[-3:]
    if sent is None:
        return "-"
    return f"{int(sent) / 1e6:.1f} / {int(received) / 1e6:.1f} ({int(requests):,})"


def report(logs: Path) -> None:
    """Every anti-entropy and GC round of each node's kept log, with its time, its own traffic as
    the daemon counted it (its requests and their answers, alone), and the bytes sent during it
    (the node's own, and every daemon's: rounds, heals and requests overlap), from the traffic
    samples kept beside the logs (``traffic.tsv``)."""
    series_path = logs / SERIES_FILE_NAME
    series = read_series(series_path) if series_path.exists() else []
    print("\n| job | node | ended (UTC) | time, s | walked | peers | chunks pulled | keys short | "
          "the round's own requests: sent / received, MB (requests) | "
          "sent by the node in the round, MB | sent by every daemon in the round, MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for log_path in sorted(logs.glob("node*.log")):
        text = log_path.read_text(errors="replace")
        for r in rounds_in(text, AE_ROUND):
            end = log_time_s(r[0])
            seconds = float(r[1])
            kind = ("anti-entropy, skipped (ring of itself alone)" if r[7] == "skipped"
                    else "anti-entropy, cut in its walk (no line of its own)" if r[7] == "cut in its walk"
                    else f"anti-entropy, exchanges from the walks of {r[7]} rounds" if r[7] else "anti-entropy")
            walked = "-" if r[2] == "-" else f"{int(r[2]):,} chunks, {int(r[3]):,} names"
            short = "-" if r[6] == "-" else f"{int(r[6]):,}"
            mine = sent_between(series, log_path.stem, end - seconds, end) / 1e6 if series else float("nan")
            every = sent_between(series, None, end - seconds, end) / 1e6 if series else float("nan")
            print(f"| {kind} | {log_path.stem} | {r[0][11:19]} | {seconds:.1f} | {walked} "
                  f"| {r[4]} | {int(r[5]):,} | {short} | {own_traffic(r)} | {mine:.1f} | {every:.1f} |", flush=True)
        for r in rounds_in(text, GC_ROUND):
            end, seconds = log_time_s(r[0]), float(r[1])
            mine = sent_between(series, log_path.stem, end - seconds, end) / 1e6 if series else float("nan")
            every = sent_between(series, None, end - seconds, end) / 1e6 if series else float("nan")
            print(f"| gc | {log_path.stem} | {r[0][11:19]} | {seconds:.1f} | {int(r[4]):,} chunks judged, "
                  f"{int(r[2]):,} references from {r[3]} nodes, {r[6]} candidates | - | - | - | {own_traffic(r)} "
                  f"| {mine:.1f} | {every:.1f} |",
                  flush=True)


def wait_whole(victim: Path, whole: int, start: float) -> None:
    """Until ``victim`` holds ``whole`` chunk files again (counted every 5 s), within HEAL_TIMEOUT_S."""
    while chunk_count(victim) < whole:
        if time.perf_counter() > start + HEAL_TIMEOUT_S:
            raise TimeoutError("the node did not heal")
        time.sleep(5 * SAMPLE_INTERVAL_S)


def print_peak_rss(peak_kib: dict[str, int], when: str) -> None:
    print(f"peak RSS (VmHWM) per daemon {when}, MiB: "
          + ", ".join(f"{name} {kib / 1024:.0f}" for name, kib in sorted(peak_kib.items())), flush=True)


def print_phase_rss(phase_kib: dict[str, dict[str, int]]) -> None:
    daemons = sorted({name for found in phase_kib.values() for name in found})
    print("\n| phase | " + " | ".join(f"{name} RSS, MiB" for name in daemons) + " |")
    print("|---|" + "---|" * len(daemons))
    for phase, found in phase_kib.items():
        print(f"| {phase} | " + " | ".join(f"{found[n] / 1024:.0f}" if n in found else "-" for n in daemons) + " |",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=1_000_000, help="names per node (two chunks each)")
    parser.add_argument("--anti-entropy-interval-s", type=float, default=30.0)
    parser.add_argument("--leave", action="store_true",
                        help="end with a graceful leave of one node (its hand-off of every chunk and name)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the network (a temporary dir in it)")
    parser.add_argument("--skip-rounds", action="store_true",
                        help="do not wait for and report the anti-entropy and GC rounds (they run all the same)")
    parser.add_argument("--stores", type=Path, default=None,
                        help="a directory kept between runs: the stores are built there once per --names and "
                             "hard-linked into the nodes (runs at several sizes then skip the build)")
    parser.add_argument("--heal-first", action="store_true",
                        help="the last node loses its chunks before the network starts, and the heal is timed from "
                             "the start (at full scale the heal then does not wait for the other phases)")
    parser.add_argument("--logs", type=Path, default=None,
                        help="copy every daemon's log here at the end (each round's line: time, keys, pulls), "
                             f"keep the traffic samples there ({SERIES_FILE_NAME}), and end with every round's "
                             "time and traffic")
    parser.add_argument("--fsck-during-heal", action="store_true",
                        help="with --heal-first: the paged ls and fsck run while the node heals, not after")
    parser.add_argument("--report", type=Path, default=None, metavar="LOGS",
                        help="only print every round's time and traffic from the logs kept in LOGS by --logs")
    args = parser.parse_args(argv)
    if args.report is not None:
        report(args.report)
        return 0
    series = None
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        series = args.logs / SERIES_FILE_NAME
        series.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="p2pfs-bench-pernode-", dir=args.dir) as tmp:
        directory = Path(tmp) / "net"
        try:
            run(directory, args.names, args.anti_entropy_interval_s, args.leave, args.stores, args.skip_rounds,
                args.heal_first, series, args.fsck_during_heal)
        finally:
            if directory.exists():
                testnet.down(directory)
                if args.logs is not None:
                    for status in testnet.status(directory):
                        shutil.copyfile(status.directory / "daemon.log", args.logs / f"{status.name}.log")
    if args.logs is not None:
        report(args.logs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
