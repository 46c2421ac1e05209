"""What the benchmarks read of real processes: CPU time, memory, TCP bytes; test networks
that are always stopped; a CPU hog. Shared by bench_cluster.py and bench_data.py."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from p2pfs import testnet

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# /proc readings


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # utime, stime: fields 14, 15


def status_mib(pid: int, field: str) -> float:
    """A memory figure from /proc/PID/status (VmRSS, VmHWM, ...) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(f"{field} not in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (Linux clear_refs 5); False if not permitted,
    in which case VmHWM is the peak since the process started."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class SocketBytes:
    sent: int
    received: int


_SS_USER = re.compile(r"pid=(\d+)")
_SS_SENT = re.compile(r"\bbytes_sent:(\d+)")
_SS_RECEIVED = re.compile(r"\bbytes_received:(\d+)")


def tcp_bytes_by_socket(pids: set[int]) -> dict[tuple[int, str, str], SocketBytes]:
    """Kernel TCP payload counters of every established socket owned by ``pids``.

    Keyed by (pid, local address, peer address). These are bytes of TLS records as TCP carries
    them (no IP/TCP headers); a socket closed before the next reading takes its bytes with it.
    """
    out = subprocess.run(
        ["ss", "-tinpH", "state", "established"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    found: dict[tuple[int, str, str], SocketBytes] = {}
    key: tuple[int, str, str] | None = None
    for line in out.splitlines():
        if not line[:1].isspace():  # a socket's first line: queues, addresses, owner
            parts = line.split()
            owner = _SS_USER.search(line)
            key = None
            if owner and int(owner.group(1)) in pids and len(parts) >= 4:
                key = (int(owner.group(1)), parts[2], parts[3])
        elif key is not None:  # its tcp_info line
            sent, received = _SS_SENT.search(line), _SS_RECEIVED.search(line)
            found[key] = SocketBytes(int(sent.group(1)) if sent else 0, int(received.group(1)) if received else 0)
            key = None
    return found


def connections_per_pair(sockets: dict[tuple[int, str, str], SocketBytes]) -> dict[frozenset[int], int]:
    """Connections between each pair of the processes in ``sockets`` (a reading of
    ``tcp_bytes_by_socket``): a connection is counted once, from its two ends, matched by both
    addresses (Linux gives one local port to connections to different peers, so a local address
    alone does not name a socket). A pair holding more than one has a spare (both dialled at once,
    say); connections to processes outside are left out."""
    owner = {(local, peer): pid for pid, local, peer in sockets}
    pairs: dict[frozenset[int], int] = {}
    for pid, local, peer in sockets:
        other = owner.get((peer, local))
        if other is None or other == pid or local > peer:  # outside, or the other end counts it
            continue
        pair = frozenset((pid, other))
        pairs[pair] = pairs.get(pair, 0) + 1
    return pairs


def traffic_bytes_per_s(before: dict, after: dict, seconds: float) -> tuple[dict[int, SocketBytes], int]:
    """Per-pid bytes per second between two readings, and how many sockets closed in between."""
    rates: dict[int, list[float]] = {}
    for key, now in after.items():
        then = before.get(key, SocketBytes(0, 0))  # opened during the window: counted from zero
        rate = rates.setdefault(key[0], [0.0, 0.0])
        rate[0] += (now.sent - then.sent) / seconds
        rate[1] += (now.received - then.received) / seconds
    closed = sum(1 for key in before if key not in after)
    return {pid: SocketBytes(round(s), round(r)) for pid, (s, r) in rates.items()}, closed


# ---------------------------------------------------------------------------
# A test network that is always stopped


def create_on_free_ports(directory: Path, nodes: int) -> int:
    """Create a test network with default settings on ports the system chose; returns its base port (0)."""
    testnet.create(directory, nodes, 0)
    return 0


@contextlib.contextmanager
def stopped_at_exit(directory: Path) -> Iterator[None]:
    """Stop every daemon of the network on the way out, whatever happened (Ctrl-C included)."""
    try:
        yield
    finally:
        testnet.down(directory)


@contextlib.contextmanager
def running_testnet(directory: Path, nodes: int) -> Iterator[list[testnet.NodeProcess]]:
    """A converged network of ``nodes`` daemons with default settings, stopped on exit."""
    base_port = create_on_free_ports(directory, nodes)
    with stopped_at_exit(directory):
        testnet.up(directory, nodes, base_port)
        yield testnet.status(directory)


@contextlib.contextmanager
def cpu_hog(core: int) -> Iterator[int]:
    """A process spinning on one core; killed on exit."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
    try:
        os.sched_setaffinity(hog.pid, {core})
        yield hog.pid
    finally:
        hog.kill()
        hog.wait(timeout=10)
