"""Membership of real daemon processes on loopback: convergence, join, failure detection, idle cost.

For each process count (default 5 and 20), on a fresh test network (p2pfs.testnet, a free block of
ports below 32768, default membership settings: probe interval 1 s):
- converge: N-1 daemons are started at once; seconds from the first start until every one of them
  sees all N-1 alive;
- join: the N-th daemon is started; seconds from its start (Popen) until every other member sees it
  alive, and the same from the moment it first answers a client (interpreter start-up excluded);
- idle cost per daemon over ``--idle-s`` seconds with nobody talking to the cluster: CPU % of one
  core (utime + stime from /proc/PID/stat), RSS (VmRSS), and TCP payload bytes per second sent and
  received (kernel per-socket counters, ``ss -tinp``, summed per daemon pid; loopback, so iptables
  accounting would need the host's netfilter, which is off limits);
- detection: ``--kills`` times, a daemon other than the seeds is SIGKILLed; every live member is
  polled (client library, ``members()``, one persistent connection each) until it marks the victim
  suspect and dead. The same moments are also read from each member's log (millisecond timestamps,
  no polling delay). The victim is restarted, and the seconds until all see it alive again are the
  rejoin time.
With ``--idle-minutes M`` the largest network is then left idle for M minutes, and again for M
minutes with a CPU hog pinned to core 0 (``--hog`` picks either or both); suspicions, deaths and
refutations in the logs during each window count as false alarms (every member was alive
throughout), and each one is listed: observer, subject, accuser, incarnation, seconds into the window.
``--loss FRACTION`` adds one more such window with that fraction of all packets dropped at random:
the whole run then happens in a network namespace of its own (``p2pfs.chaos.netns``: the chaos
run's sandbox and its nft loss rule; needs root, nft and unshare), whose loopback the rule drops
from, only during that window. ``--kills-after-soak`` moves that network's kills after those windows. Each idle window also counts
the spare connections: daemon pairs joined by more than one TCP connection.

Each kill's detection is compared with ``MembershipConfig.detection_bound_s(N)``, the configured
worst case (every live member must log DEAD within it). The machine's load average is read at every
phase and printed beside each figure, since other work on a shared machine distorts timings.
``--keep-logs DIR`` copies every daemon's log there before the network's temp dir is removed.

Also the home of the helpers every real-process benchmark uses: a test network on free ports that is
always stopped, and per-process CPU, RSS and peak-RSS readings from /proc.

Run standalone (.venv/bin/python scripts/bench_cluster.py --help) or as
``python scripts/bench.py membership``. A benchmark measures; it never fails on speed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import trio

from p2pfs import identity, testnet
from p2pfs.address import Address
from p2pfs.chaos import netns
from p2pfs.client import Client
from p2pfs.errors import P2pfsError
from p2pfs.membership import MembershipConfig

from bench_procs import (
    SocketBytes, connections_per_pair, cpu_hog, cpu_s, create_on_free_ports, status_mib,
    stopped_at_exit, tcp_bytes_by_socket, traffic_bytes_per_s,
)

NODES_DEFAULT = (5, 20)
KILLS_DEFAULT = 3
IDLE_S_DEFAULT = 60.0
POLL_S_DEFAULT = 0.2
# Deadline for one members() call while polling; a member that does not answer is asked again.
VIEW_TIMEOUT_S = 3.0
# Deadline for a network to converge, a join to be seen, or a victim to come back: at least this,
# more for big networks (N Python daemons starting at once share the machine's cores).
CONVERGE_TIMEOUT_S = 120.0
CONVERGE_TIMEOUT_S_PER_NODE = 3.0
# After a kill, polling stops this long after the worst-case detection bound.
DETECTION_MARGIN_S = 30.0
# Quiet time after the last join before an idle window, for the join's gossip to die out.
SETTLE_S = 10.0
# During a long idle window the load average is sampled this often.
LOAD_SAMPLE_S = 30.0

# Median over the kills of the seconds until every live member has the victim dead, by network size:
# HashiCorp Serf's own figures on this machine kind (issue 14 at 5 and 20, issue 16 at 50).
TARGET_DEAD_EVERYWHERE_S_MEDIAN = {5: 5.4, 20: 6.1, 50: 9.1}
TARGET_JOIN_SEEN_S = 1.0
TARGET_IDLE_CPU_PERCENT = 0.5
TARGET_IDLE_RSS_MIB = 60.0
TARGET_IDLE_TRAFFIC_BYTES_PER_S = 1024.0

# "<observer>: <subject> is DEAD (incarnation 7, by <accuser>)", from membership/view.py.
_STATE_LINE = re.compile(r"^(\S+) INFO node=\S+ p2pfs\.membership\.view: \w+: (\w+) is (SUSPECT|DEAD) ")
_REFUTE_LINE = re.compile(r"^(\S+) INFO node=\S+ p2pfs\.membership\.state: \w+: refuting ")
# A state change with what a false alarm's report needs: incarnation and accuser.
_ALARM_LINE = re.compile(
    r"^(\S+) INFO node=\S+ p2pfs\.membership\.view: \w+: (\w+) is (SUSPECT|DEAD|ALIVE) "
    r"\(incarnation (\d+)(?:, by (\w+))?\)"
)


# ---------------------------------------------------------------------------
# Views of the cluster, read through the client library


class MemberViews:
    """One persistent client connection per member, to read its view of the cluster cheaply.

    A fresh mutual-TLS handshake per poll would cost more CPU than the membership protocol itself;
    a connection that fails is dropped and opened again on the next read.
    """

    def __init__(self, ident: identity.Identity, nursery: trio.Nursery) -> None:
        self._ident = ident
        self._nursery = nursery
        self._held: dict[Address, tuple[Client, trio.CancelScope]] = {}

    async def _hold(self, address: Address, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            async with Client.connect(self._ident, address) as client:
                self._held[address] = (client, scope)
                task_status.started()
                await trio.sleep_forever()

    def drop(self, address: Address) -> None:
        held = self._held.pop(address, None)
        if held is not None:
            held[1].cancel()

    async def view(self, address: Address) -> dict[str, str] | None:
        """node id -> state ("alive", "suspect", "dead", "left") as ``address`` sees it; None if
        it does not answer within VIEW_TIMEOUT_S."""
        try:
            with trio.fail_after(VIEW_TIMEOUT_S):
                if address not in self._held:
                    await self._nursery.start(self._hold, address)
                members = await self._held[address][0].members()
        except (P2pfsError, trio.TooSlowError):
            self.drop(address)
            return None
        return {mb.node_id: mb.state for mb in members}


async def first_times(
    views: MemberViews,
    observers: list[Address],
    conditions: dict[str, Callable[[dict[str, str]], bool]],
    *,
    timeout_s: float,
    poll_s: float,
) -> dict[Address, dict[str, float | None]]:
    """For each observer and each named condition on its view, the trio time it first held.

    Every observer is polled in its own task every ``poll_s``; None where a condition never held
    within ``timeout_s``.
    """
    found: dict[Address, dict[str, float | None]] = {a: dict.fromkeys(conditions) for a in observers}

    async def watch(address: Address) -> None:
        mine = found[address]
        while any(t is None for t in mine.values()):
            view = await views.view(address)
            now = trio.current_time()
            if view is not None:
                for name, holds in conditions.items():
                    if mine[name] is None and holds(view):
                        mine[name] = now
            await trio.sleep(poll_s)

    with trio.move_on_after(timeout_s):
        async with trio.open_nursery() as nursery:
            for address in observers:
                nursery.start_soon(watch, address)
    return found


def sees_all_alive(node_ids: set[str]) -> Callable[[dict[str, str]], bool]:
    return lambda view: all(view.get(n) == "alive" for n in node_ids)


def converge_timeout_s(nodes: int) -> float:
    return max(CONVERGE_TIMEOUT_S, CONVERGE_TIMEOUT_S_PER_NODE * nodes)


# ---------------------------------------------------------------------------
# Logs


def _log_time_s(stamp: str) -> float:
    moment = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


@dataclasses.dataclass(slots=True)
class LogEvents:
    """Membership alarms logged by one daemon: (wall time s, subject short id, state)."""

    states: list[tuple[float, str, str]]
    refutations: list[float]


def read_log_events(node_dir: Path) -> LogEvents:
    events = LogEvents([], [])
    try:
        text = (node_dir / testnet.LOG_FILE).read_text(errors="replace")
    except FileNotFoundError:
        return events
    for line in text.splitlines():
        if match := _STATE_LINE.match(line):
            events.states.append((_log_time_s(match.group(1)), match.group(2), match.group(3)))
        elif match := _REFUTE_LINE.match(line):
            events.refutations.append(_log_time_s(match.group(1)))
    return events


def alarm_details(procs: list[testnet.NodeProcess], start_wall_s: float, end_wall_s: float,
                  also_named: tuple[testnet.NodeProcess, ...] = ()) -> list[dict]:
    """Every SUSPECT, DEAD and ALIVE-again line ``procs`` logged in a window, with who said what
    about whom: what a false alarm's report needs (member names, from ``procs`` and ``also_named``,
    instead of short ids)."""
    names = {p.node_id[:12]: p.name for p in (*procs, *also_named)}
    found = []
    for proc in procs:
        try:
            text = (proc.directory / testnet.LOG_FILE).read_text(errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            match = _ALARM_LINE.match(line)
            if match is None:
                continue
            when = _log_time_s(match.group(1))
            if start_wall_s <= when <= end_wall_s:
                subject, state, incarnation, accuser = match.group(2, 3, 4, 5)
                found.append({"at_s": round(when - start_wall_s, 3), "observer": proc.name,
                              "subject": names.get(subject, subject), "state": state,
                              "incarnation": int(incarnation),
                              "accuser": names.get(accuser, accuser) if accuser else None})
    return sorted(found, key=lambda alarm: alarm["at_s"])


def load_1m() -> float:
    return round(os.getloadavg()[0], 1)


def keep_logs(directory: Path, into: Path) -> None:
    """Copy each daemon's log to ``into``/<network>/<node>.log (the network's dir is temporary)."""
    target = into / directory.name
    target.mkdir(parents=True, exist_ok=True)
    for node_dir in directory.glob("node*"):
        log_file = node_dir / testnet.LOG_FILE
        if log_file.is_file():
            shutil.copyfile(log_file, target / f"{node_dir.name}.log")


def alarms_between(node_dirs: list[Path], start_wall_s: float, end_wall_s: float) -> dict[str, int]:
    """Suspicions, deaths and refutations logged by any of the daemons in a time window."""
    counts = {"suspect": 0, "dead": 0, "refuted": 0}
    for node_dir in node_dirs:
        events = read_log_events(node_dir)
        for when, _subject, state in events.states:
            if start_wall_s <= when <= end_wall_s:
                counts[state.lower()] += 1
        counts["refuted"] += sum(1 for when in events.refutations if start_wall_s <= when <= end_wall_s)
    return counts


# ---------------------------------------------------------------------------
# Measurements


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None}
    return {"median": statistics.median(values), "max": max(values)}


def idle_cost(procs: list[testnet.NodeProcess], idle_s: float) -> dict:
    """CPU, RSS and traffic of each daemon over ``idle_s`` seconds in which nobody talks to them."""
    pids = {p.pid for p in procs}
    cpu_before = {pid: cpu_s(pid) for pid in pids}
    sockets_before = tcp_bytes_by_socket(pids)
    start = time.monotonic()
    time.sleep(idle_s)  # the measurement is of doing nothing
    elapsed_s = time.monotonic() - start
    sockets_after = tcp_bytes_by_socket(pids)
    cpu_percent = {pid: 100 * (cpu_s(pid) - cpu_before[pid]) / elapsed_s for pid in pids}
    rss_mib = {pid: status_mib(pid, "VmRSS") for pid in pids}
    # What RSS is made of: the daemon's own heap (RssAnon; the rest is code and libraries mapped
    # from files, the same at any size), and the connections it holds, about one per member.
    rss_anon_mib = [status_mib(pid, "RssAnon") for pid in pids]
    open_sockets = {pid: 0 for pid in pids}
    for pid, _local, _peer in sockets_after:
        open_sockets[pid] += 1
    traffic, closed = traffic_bytes_per_s(sockets_before, sockets_after, elapsed_s)
    pairs_before, pairs_after = connections_per_pair(sockets_before), connections_per_pair(sockets_after)
    sent = [traffic.get(pid, SocketBytes(0, 0)).sent for pid in pids]
    received = [traffic.get(pid, SocketBytes(0, 0)).received for pid in pids]
    return {
        "seconds": elapsed_s,
        "cpu_percent": {"median": statistics.median(cpu_percent.values()), "max": max(cpu_percent.values())},
        "rss_mib": {"median": statistics.median(rss_mib.values()), "max": max(rss_mib.values())},
        "rss_anon_mib": _stats(rss_anon_mib),
        "tcp_connections": _stats(list(open_sockets.values())),
        "sent_bytes_per_s": {"median": statistics.median(sent), "max": max(sent)},
        "received_bytes_per_s": {"median": statistics.median(received), "max": max(received)},
        "sockets_closed_during": closed,
        # Daemon pairs joined by more than one connection (both dialled at once, say), at the
        # window's start and end: each spare costs a connection's memory until it is closed.
        "pairs_with_spare_connections": [sum(1 for n in pairs_before.values() if n > 1),
                                         sum(1 for n in pairs_after.values() if n > 1)],
        "spare_connections": [sum(n - 1 for n in pairs_before.values()),
                              sum(n - 1 for n in pairs_after.values())],
    }


async def _converge(views: MemberViews, procs: list[testnet.NodeProcess], since: float,
                    poll_s: float) -> float | None:
    """Seconds from the trio time ``since`` until every process sees every process alive."""
    found = await first_times(
        views, [p.address for p in procs], {"all": sees_all_alive({p.node_id for p in procs})},
        timeout_s=converge_timeout_s(len(procs)), poll_s=poll_s,
    )
    times = [t["all"] for t in found.values()]
    return None if None in times else max(times) - since


async def _start_and_converge(directory: Path, views: MemberViews, poll_s: float) -> dict:
    """Start N-1 daemons at once, time their convergence, then time the N-th one's join."""
    dirs = [directory / p.name for p in testnet.status(directory)]
    first, newcomer = dirs[:-1], dirs[-1]
    start = trio.current_time()
    for node_dir in first:
        testnet.start_node(node_dir)
    procs = [testnet.node_process(d) for d in first]
    converged = await _converge(views, procs, start, poll_s)
    if converged is None:
        raise RuntimeError(f"{len(first)} daemons did not converge within {converge_timeout_s(len(first))} s")
    join = await _time_join(views, procs, newcomer, poll_s)
    return {"converge_s": converged, "join": join}


async def _time_join(views: MemberViews, others: list[testnet.NodeProcess], node_dir: Path,
                     poll_s: float) -> dict:
    """Start one daemon and time how long until it answers, and until every other sees it alive."""
    timeout_s = converge_timeout_s(len(others) + 1)
    started = trio.current_time()
    testnet.start_node(node_dir)
    new = testnet.node_process(node_dir)
    answering = await first_times(views, [new.address], {"up": lambda view: True},
                                  timeout_s=timeout_s, poll_s=0.05)
    found = await first_times(
        views, [p.address for p in others], {"seen": lambda view: view.get(new.node_id) == "alive"},
        timeout_s=timeout_s, poll_s=poll_s,
    )
    up = answering[new.address]["up"]
    seen = [t["seen"] for t in found.values()]
    if up is None or None in seen:
        raise RuntimeError(f"{node_dir.name} was not seen by every member within {timeout_s} s")
    return {"answering_s": up - started, "seen_by_all_s": max(seen) - started,
            "seen_by_all_after_answering_s": max(seen) - up}


async def _time_kill(directory: Path, views: MemberViews, victim: testnet.NodeProcess,
                     config: MembershipConfig, nodes: int, poll_s: float) -> dict:
    """SIGKILL one daemon; when does each live member mark it suspect, then dead?"""
    live = [p for p in testnet.status(directory) if p.running and p.name != victim.name]
    views.drop(victim.address)
    load_at_kill = load_1m()
    killed_wall_s = time.time()
    killed = trio.current_time()
    await trio.to_thread.run_sync(lambda: testnet.stop_node(victim.directory, kill=True))
    found = await first_times(
        views, [p.address for p in live],
        {"suspect": lambda view: view.get(victim.node_id) in ("suspect", "dead"),
         "dead": lambda view: view.get(victim.node_id) == "dead"},
        timeout_s=config.detection_bound_s(nodes) + DETECTION_MARGIN_S, poll_s=poll_s,
    )
    polled_suspect = [t["suspect"] - killed for t in found.values() if t["suspect"] is not None]
    polled_dead = [t["dead"] - killed for t in found.values() if t["dead"] is not None]
    logged_dead = []
    for proc in live:
        times = [when for when, subject, state in read_log_events(proc.directory).states
                 if subject == victim.node_id[:12] and state == "DEAD" and when >= killed_wall_s]
        if times:
            logged_dead.append(min(times) - killed_wall_s)
    bound_s = config.detection_bound_s(nodes)
    # Anyone else suspected or killed meanwhile is a false alarm under the load of a detection.
    others = [a for a in alarm_details(live, killed_wall_s, time.time(), also_named=(victim,))
              if a["subject"] != victim.name and a["state"] != "ALIVE"]
    load_after = load_1m()
    rejoin = await _time_join(views, live, victim.directory, poll_s)
    return {
        "victim": victim.name,
        "observers": len(live),
        "undetected": len(live) - len(polled_dead),
        "suspect_s": _stats(polled_suspect),
        "dead_s": _stats(polled_dead),
        "dead_logged_s": _stats(logged_dead),
        # Time until every live member had logged DEAD (None if one never did).
        "dead_everywhere_logged_s": max(logged_dead) if len(logged_dead) == len(live) else None,
        "bound_s": bound_s,
        "outside_bound": len(live) - sum(1 for t in logged_dead if t <= bound_s),
        "other_alarms": others,
        "load_1m": [load_at_kill, load_after],
        "rejoin_answering_s": rejoin["answering_s"],
        "rejoin_seen_by_all_s": rejoin["seen_by_all_s"],
    }


def measure_network(work_dir: Path, nodes: int, kills: int, idle_s: float, idle_minutes: float,
                    windows: tuple[tuple[bool, float], ...], poll_s: float, result: dict,
                    logs_to: Path | None, kills_after_soak: bool = False,
                    firewall: netns.Firewall | None = None) -> None:
    """Every figure for one network size, filled into ``result`` as it is taken (so that a run cut
    short still reports what it measured); the network is stopped on the way out."""
    directory = work_dir / f"net{nodes}"
    create_on_free_ports(directory, nodes)
    client_ident = identity.load_identity(directory / testnet.CLIENT_DIR)
    config = MembershipConfig()  # the test network runs the defaults
    result.update({"nodes": nodes, "probe_interval_s": config.probe_interval_s,
                   "detection_bound_s": config.detection_bound_s(nodes),
                   "suspicion_timeout_s": [config.suspicion_timeout_s_min(nodes),
                                           config.suspicion_timeout_s_max(nodes)],
                   "load_1m": {"start": load_1m()}})
    try:
        with stopped_at_exit(directory):
            _measure_running(directory, client_ident, config, nodes, kills, idle_s, idle_minutes, windows,
                             poll_s, result, kills_after_soak, firewall)
    finally:
        if logs_to is not None:
            keep_logs(directory, logs_to)


def _measure_running(directory: Path, client_ident: identity.Identity, config: MembershipConfig,
                     nodes: int, kills: int, idle_s: float, idle_minutes: float,
                     windows: tuple[tuple[bool, float], ...], poll_s: float, result: dict,
                     kills_after_soak: bool, firewall: netns.Firewall | None) -> None:
    """The phases of ``measure_network`` on the created network, in order."""

    async def start_phase() -> None:
        async with trio.open_nursery() as nursery:
            views = MemberViews(client_ident, nursery)
            result.update(await _start_and_converge(directory, views, poll_s))
            nursery.cancel_scope.cancel()

    start_wall_s = time.time()
    trio.run(start_phase)
    result["load_1m"]["converged"] = load_1m()
    # N-1 Python daemons starting at once starve each other of CPU: count the alarms that causes,
    # and name every death (suspicions there are many, each refuted).
    everyone = testnet.status(directory)
    result["start_alarms"] = alarms_between([p.directory for p in everyone], start_wall_s, time.time())
    result["start_deaths"] = [a for a in alarm_details(everyone, start_wall_s, time.time())
                              if a["state"] == "DEAD"]
    time.sleep(SETTLE_S)  # let the join's gossip die out before measuring idleness
    procs = testnet.status(directory)
    idle_start_wall_s = time.time()
    load_before = load_1m()
    idle = idle_cost(procs, idle_s)
    idle["load_1m"] = [load_before, load_1m()]
    idle["alarms"] = alarms_between([p.directory for p in procs], idle_start_wall_s, time.time())
    idle["alarm_details"] = alarm_details(procs, idle_start_wall_s, time.time())
    result["idle"] = idle

    async def kill_phase() -> None:
        async with trio.open_nursery() as nursery:
            views = MemberViews(client_ident, nursery)
            result["kills"] = []
            victims = [p for p in procs if p.name not in ("node1", "node2")]  # keep the seeds
            for victim in victims[-kills:] if kills else []:
                result["kills"].append(await _time_kill(directory, views, victim, config, nodes, poll_s))
            nursery.cancel_scope.cancel()

    if not kills_after_soak:
        trio.run(kill_phase)
    if idle_minutes > 0:
        result["long_idle"] = []
        long_idle(directory, idle_minutes, windows, firewall, result["long_idle"])
    if kills_after_soak:
        trio.run(kill_phase)


def long_idle(directory: Path, minutes: float, windows: tuple[tuple[bool, float], ...],
              firewall: netns.Firewall | None, runs: list[dict]) -> None:
    """False alarms over ``minutes`` idle, once per entry of ``windows``, (hog, loss): with a CPU
    hog on core 0 or not, and with that fraction of packets dropped (through ``firewall``),
    appended to ``runs`` as each window ends."""
    time.sleep(SETTLE_S)
    procs = testnet.status(directory)
    for hog, loss in windows:
        start_wall_s = time.time()
        loads = [load_1m()]
        segments_before = tcp_segments()
        with cpu_hog(0) if hog else contextlib.nullcontext(), packet_loss(firewall, loss):
            end_s = time.monotonic() + minutes * 60
            while (left_s := end_s - time.monotonic()) > 0:
                time.sleep(min(LOAD_SAMPLE_S, left_s))  # the measurement is of doing nothing
                loads.append(load_1m())
        end_wall_s = time.time()
        segments = {key: count - segments_before[key] for key, count in tcp_segments().items()}
        still = sum(1 for p in testnet.status(directory) if p.running)
        runs.append({"minutes": minutes, "cpu_hog": hog, "loss_fraction": loss, "running_at_end": still,
                     "nodes": len(procs), "tcp_segments": segments,
                     "load_1m": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
                     **alarms_between([p.directory for p in procs], start_wall_s, end_wall_s),
                     "alarm_details": alarm_details(procs, start_wall_s, end_wall_s)})


def tcp_segments() -> dict[str, int]:
    """TCP segments sent and retransmitted so far in this network namespace (/proc/net/snmp):
    under packet loss, the retransmissions show the rule at work."""
    header, values = [line.split()[1:] for line in Path("/proc/net/snmp").read_text().splitlines()
                      if line.startswith("Tcp:")]
    counts = dict(zip(header, map(int, values)))
    return {"sent": counts["OutSegs"], "retransmitted": counts["RetransSegs"]}


@contextlib.contextmanager
def packet_loss(firewall: netns.Firewall | None, fraction: float):
    """Drop ``fraction`` of the sandbox's loopback packets while the block runs (0: nothing)."""
    if fraction == 0:
        yield
        return
    assert firewall is not None, "packet loss needs the run's own network namespace"
    trio.run(firewall.set_loss, fraction)
    try:
        yield
    finally:
        trio.run(firewall.heal)


# ---------------------------------------------------------------------------
# Report


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_report(results: list[dict]) -> None:
    """Tables of whatever ``results`` hold (a run cut short has some phases missing)."""
    print("### Convergence and join (seconds)\n")
    print("| processes | N-1 converge | join: answering | join: seen by all | seen by all after answering "
          f"| target (<= {TARGET_JOIN_SEEN_S:g} s) | load (1 min) at start / converged |")
    print("|--:|--:|--:|--:|--:|---|--:|")
    for r in results:
        if "join" not in r:
            continue
        join, load = r["join"], r["load_1m"]
        print(f"| {r['nodes']} | {_fmt(r['converge_s'])} | {_fmt(join['answering_s'])} "
              f"| {_fmt(join['seen_by_all_s'])} | {_fmt(join['seen_by_all_after_answering_s'])} "
              f"| {_verdict(join['seen_by_all_after_answering_s'] <= TARGET_JOIN_SEEN_S)} (after answering) "
              f"| {load['start']:g} / {load.get('converged', float('nan')):g} |")
    for r in results:
        if "start_alarms" in r:
            print(f"\n{r['nodes']} processes, from the first start until the join was seen by all: "
                  f"{_alarms(r['start_alarms'])}")
            for alarm in r["start_deaths"]:
                print(f"- {_alarm_line(alarm)}")
    print("\n### Detection of a SIGKILLed daemon (seconds after the kill, over every live member)\n")
    print("| processes | kill | observers | suspect: median / max | dead: median / max "
          "| dead in logs: median / max (everywhere) | bound | restarted: answering / seen by all "
          "| within bound | load (1 min) at kill / after |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|")
    for r in results:
        for i, k in enumerate(r.get("kills", []), start=1):
            print(f"| {r['nodes']} | {i} | {k['observers']} "
                  f"| {_fmt(k['suspect_s']['median'])} / {_fmt(k['suspect_s']['max'])} "
                  f"| {_fmt(k['dead_s']['median'])} / {_fmt(k['dead_s']['max'])} "
                  f"| {_fmt(k['dead_logged_s']['median'])} / {_fmt(k['dead_logged_s']['max'])} "
                  f"({_fmt(k['dead_everywhere_logged_s'])}) | {k['bound_s']:.1f} "
                  f"| {_fmt(k['rejoin_answering_s'])} / {_fmt(k['rejoin_seen_by_all_s'])} "
                  f"| {_verdict(k['outside_bound'] == 0)} ({k['outside_bound']} outside) "
                  f"| {k['load_1m'][0]:g} / {k['load_1m'][1]:g} |")
    everywhere = {r["nodes"]: [k["dead_everywhere_logged_s"] for k in r.get("kills", [])] for r in results}
    for nodes, times in everywhere.items():
        if times and None not in times:
            median = statistics.median(times)
            target = TARGET_DEAD_EVERYWHERE_S_MEDIAN.get(nodes)
            verdict = "" if target is None else f"; target <= {target:g} s (Serf): {_verdict(median <= target)}"
            print(f"\n{nodes} processes: median over the kills of the time until every member logged DEAD: "
                  f"{median:.2f} s ({', '.join(f'{t:.2f}' for t in times)}){verdict}")
    others = [(r["nodes"], i, a) for r in results for i, k in enumerate(r.get("kills", []), start=1)
              for a in k["other_alarms"]]
    if others:
        print("\nOther members suspected or declared dead during a detection (false alarms):")
        for nodes, i, alarm in others:
            print(f"- {nodes} processes, kill {i}: {_alarm_line(alarm)}")
    print("\n### Idle cost per daemon (median / max over the daemons)\n")
    print(f"| processes | window | CPU % of a core (<= {TARGET_IDLE_CPU_PERCENT:g}) "
          f"| RSS MiB (<= {TARGET_IDLE_RSS_MIB:g}) | sent B/s | received B/s "
          f"| sent + received (<= {TARGET_IDLE_TRAFFIC_BYTES_PER_S:g}) | alarms in window "
          "| load (1 min) before / after |")
    print("|--:|--:|--:|--:|--:|--:|--:|---|--:|")
    for r in results:
        if "idle" not in r:
            continue
        idle = r["idle"]
        cpu, rss = idle["cpu_percent"], idle["rss_mib"]
        sent, received = idle["sent_bytes_per_s"], idle["received_bytes_per_s"]
        total_max = sent["max"] + received["max"]
        print(f"| {r['nodes']} | {idle['seconds']:.0f} s | {cpu['median']:.2f} / {cpu['max']:.2f} "
              f"{_verdict(cpu['max'] <= TARGET_IDLE_CPU_PERCENT)} "
              f"| {rss['median']:.1f} / {rss['max']:.1f} {_verdict(rss['max'] <= TARGET_IDLE_RSS_MIB)} "
              f"| {sent['median']:,.0f} / {sent['max']:,.0f} | {received['median']:,.0f} / {received['max']:,.0f} "
              f"| {sent['median'] + received['median']:,.0f} / {total_max:,.0f} "
              f"{_verdict(total_max <= TARGET_IDLE_TRAFFIC_BYTES_PER_S)} "
              f"| {_alarms(idle['alarms'])} | {idle['load_1m'][0]:g} / {idle['load_1m'][1]:g} |")
    for r in results:
        if "idle" in r:
            anon, conns = r["idle"]["rss_anon_mib"], r["idle"]["tcp_connections"]
            print(f"\n{r['nodes']} processes: heap (RssAnon) {anon['median']:.1f} / {anon['max']:.1f} MiB, "
                  f"TCP connections open {conns['median']:g} / {conns['max']:g} per daemon (median / max); "
                  f"spare connections between daemons at the window's start / end: "
                  f"{' / '.join(map(str, r['idle']['spare_connections']))} "
                  f"(pairs with more than one: {' / '.join(map(str, r['idle']['pairs_with_spare_connections']))})")
    closed = [r["idle"]["sockets_closed_during"] for r in results if "idle" in r]
    if any(closed):
        print(f"\n(sockets closed during the idle windows, whose bytes are not counted: {closed})")
    long_runs = [(r["nodes"], run) for r in results for run in r.get("long_idle", [])]
    if long_runs:
        print("\n### Long idle runs: false alarms (every member alive throughout)\n")
        print("| processes | minutes | CPU hog on core 0 | packets dropped | TCP segments retransmitted "
              "| suspicions | deaths | refutations | daemons running at end | target (0 deaths) "
              "| load (1 min) min / median / max |")
        print("|--:|--:|---|--:|--:|--:|--:|--:|--:|---|--:|")
        for nodes, run in long_runs:
            load = run["load_1m"]
            print(f"| {nodes} | {run['minutes']:g} | {'yes' if run['cpu_hog'] else 'no'} "
                  f"| {run['loss_fraction']:.0%} "
                  f"| {run['tcp_segments']['retransmitted']:,} of {run['tcp_segments']['sent']:,} "
                  f"| {run['suspect']} "
                  f"| {run['dead']} | {run['refuted']} | {run['running_at_end']} / {run['nodes']} "
                  f"| {_verdict(run['dead'] == 0)} | {load['min']:g} / {load['median']:g} / {load['max']:g} |")
        for nodes, run in long_runs:
            for alarm in run["alarm_details"]:
                print(f"- {nodes} processes, {'with' if run['cpu_hog'] else 'without'} the hog, "
                      f"{run['loss_fraction']:.0%} loss: {_alarm_line(alarm)}")
    for r in results:
        if "error" in r:
            print(f"\n{r['nodes']} processes: cut short: {r['error']}")


def _alarm_line(alarm: dict) -> str:
    by = f", by {alarm['accuser']}" if alarm["accuser"] else ""
    return (f"{alarm['at_s']:.3f} s: {alarm['observer']} logged {alarm['subject']} {alarm['state']} "
            f"(incarnation {alarm['incarnation']}{by})")


def _alarms(counts: dict[str, int]) -> str:
    return f"{counts['suspect']} suspect, {counts['dead']} dead, {counts['refuted']} refuted"


HOGS = {"both": (False, True), "no": (False,), "only": (True,), "none": ()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", default=",".join(map(str, NODES_DEFAULT)), metavar="N,N,...",
                        help="process counts (default %(default)s)")
    parser.add_argument("--kills", type=int, default=KILLS_DEFAULT, metavar="COUNT",
                        help="daemons SIGKILLed one after another per network (default %(default)s)")
    parser.add_argument("--idle-s", type=float, default=IDLE_S_DEFAULT, metavar="SECONDS",
                        help="idle window for CPU, RSS and traffic (default %(default)s)")
    parser.add_argument("--idle-minutes", type=float, default=0.0, metavar="MINUTES",
                        help="also count false alarms over MINUTES idle, then MINUTES with a CPU hog, "
                             "on the largest network (default 0: skip)")
    parser.add_argument("--hog", choices=sorted(HOGS), default="both",
                        help="which long idle windows: without the CPU hog, with it, both in that "
                             "order, or none of these (the --loss window only) (default %(default)s)")
    parser.add_argument("--loss", type=float, default=0.0, metavar="FRACTION",
                        help="also a long idle window with FRACTION (0..1) of all packets dropped; runs "
                             "everything in a network namespace of its own (root) (default 0: none)")
    parser.add_argument("--kills-after-soak", action="store_true",
                        help="on the largest network, SIGKILL after the long idle windows rather than "
                             "before them (detection on a cluster that has idled that long)")
    parser.add_argument("--poll-s", type=float, default=POLL_S_DEFAULT, metavar="SECONDS",
                        help="interval between reads of each member's view (default %(default)s)")
    parser.add_argument("--dir", type=Path, default=None, help="where the networks live (default: a temp dir)")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                        help="copy every daemon's log to DIR/net<N>/ before its network is removed")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def run(args: argparse.Namespace) -> int:
    """Measure each size in turn and print what was measured, even when a size fails or the run is
    interrupted (Ctrl-C, SIGTERM): every network is stopped and its temp dir removed on the way out.
    Exit status 0 when every size was measured, 1 when one failed, 130 when interrupted."""
    sizes = [int(n) for n in args.nodes.split(",")]
    if any(n < 4 for n in sizes):
        raise SystemExit("--nodes: at least 4 processes (two seeds, a victim, an observer)")
    if not 0 <= args.loss < 1:
        raise SystemExit("--loss: a fraction, 0 to below 1")
    windows = tuple((hog, 0.0) for hog in HOGS[args.hog]) + (((False, args.loss),) if args.loss else ())
    if args.loss and not netns.inside_sandbox():
        # Loss is a rule on a loopback of our own, never the host's: run again in a sandbox.
        netns.enter_sandbox([sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]])
    results: list[dict] = []
    load_average = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M")
    status = 0
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-", dir=args.dir) as work_dir:
            firewall = None
            if netns.inside_sandbox():
                firewall = netns.Firewall(Path(work_dir))
                trio.run(netns.bring_up_loopback)
                trio.run(firewall.setup)
            for nodes in sizes:
                long_minutes = args.idle_minutes if nodes == max(sizes) else 0.0
                result: dict = {"nodes": nodes}
                results.append(result)
                try:
                    measure_network(Path(work_dir), nodes, args.kills, args.idle_s, long_minutes,
                                    windows, args.poll_s, result, args.keep_logs,
                                    args.kills_after_soak, firewall)
                except (RuntimeError, P2pfsError, OSError) as exc:
                    result["error"] = f"{type(exc).__name__}: {exc}"
                    status = 1
    except KeyboardInterrupt:
        if results:
            results[-1]["error"] = "interrupted"
        status = 130
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        config = MembershipConfig()
        print(f"cpus: {os.cpu_count()}; started {started}; ended {time.strftime('%H:%M')}; load average at "
              f"the start {load_average:.1f}; probe interval {config.probe_interval_s:g} s; "
              f"poll every {args.poll_s:g} s")
        for r in results:
            if "detection_bound_s" in r:
                low, high = r["suspicion_timeout_s"]
                print(f"{r['nodes']} processes: suspicion timeout {low:.2f} s (floor) to {high:.2f} s "
                      f"(ceiling); configured detection bound {r['detection_bound_s']:.2f} s")
        print()
        print_report(results)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_cluster", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on SIGTERM as on Ctrl-C
    sys.exit(main())
