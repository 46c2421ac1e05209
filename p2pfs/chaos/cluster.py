"""Real daemons inside the chaos sandbox: one per loopback address, as our own child processes.

``p2pfs.testnet`` binds every node to 127.0.0.1, which makes per-pair faults
impossible; here node I listens on 127.0.0.(I+1):``NODE_PORT`` and binds its
outgoing connections to that address too, so the packet filter can tell the
nodes apart. The namespace is ours alone, so a fixed port cannot collide with
anything else on the machine.

The daemons are children of the harness (not detached like testnet's): the
harness signals them by pid (SIGKILL, SIGSTOP, SIGCONT), reaps them, and the
pid namespace takes them down with it if the harness dies.

Every daemon's clock reads its wall-clock offset from ``DIR/clock-offset``
(``P2PFS_WALL_CLOCK_OFFSET_FILE``, see ``p2pfs.clock.SystemClock``), so the
nemesis can move a node's wall clock without restarting it; its monotonic
clock (trio's timers) is left alone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import trio

from p2pfs import identity
from p2pfs.address import Address
from p2pfs.client import Client
from p2pfs.errors import P2pfsError, Unavailable
from p2pfs.membership import MembershipConfig
from p2pfs.node.daemon import WALL_CLOCK_OFFSET_FILE_ENV
from p2pfs.wire import Role

log = logging.getLogger(__name__)

NODE_PORT = 7000
CA_DIR = "ca"
CLIENT_DIR = "client"
CONFIG_FILE = "p2pfs.toml"
DATA_DIR = "data"
LOG_FILE = "daemon.log"
CLOCK_FILE = "clock-offset"
# A daemon sees a new clock offset within this many seconds (its clock re-reads the
# file every OFFSET_FILE_REREAD_S; the rest is margin for a busy process).
CLOCK_SETTLE_S = 0.5
# Seconds a daemon has to exit after SIGKILL (it cannot refuse; this only bounds the reap).
REAP_TIMEOUT_S = 10.0
# Seconds a started daemon has to answer a status request. A daemon starts in about a
# second on an idle machine; on a shared one at a load of 30 a restart took 37 s before
# it even created its data dir, and a harness that gives up then ends the whole run.
START_TIMEOUT_S = 120.0
# Deadline of one status or members request made while polling the cluster.
POLL_REQUEST_TIMEOUT_S = 3.0
# Pause between two polls of the cluster's own view of itself.
POLL_INTERVAL_S = 0.25


@dataclasses.dataclass(frozen=True, slots=True)
class Timings:
    """Daemon timings for a chaos run, shortened so that faults heal within seconds.

    Each value is written into every node's p2pfs.toml; the comments say why it
    differs from the default.
    """

    probe_interval_s: float = 0.5  # detection in ~2 s instead of ~4 s
    probe_timeout_s: float = 0.25  # half the probe interval, as by default
    suspicion_max_timeout_mult: int = 3  # worst-case detection 10 s (5 nodes), so long pauses stay short
    push_pull_interval_s: float = 5.0  # a healed partition merges views within seconds
    reconnect_interval_s: float = 2.0  # a node declared dead by mistake hears of it quickly
    join_retry_interval_s: float = 0.5
    dead_grace_s: float = 120.0  # longer than any outage the nemesis makes: nodes stay in the ring
    hint_delivery_interval_s: float = 1.0  # hints reach owners that are back within a second
    anti_entropy_interval_s: float = 5.0  # a wiped node is refilled within seconds, not minutes
    gc_interval_s: float = 15.0  # garbage collection runs many times, under faults, in a run
    # Longer than any put can take (op timeout 20 s, plus a 12 s pause of its coordinator, plus
    # 8 s of skew), so GC racing a put in progress is a bug, not the configuration.
    chunk_gc_grace_s: float = 60.0
    replica_timeout_s: float = 3.0  # a frozen replica costs a put 3 s, not 10 s
    replica_backoff_s: float = 2.0
    chunk_size_bytes: int = 256 * 1024  # multi-chunk files without megabytes of traffic
    connect_timeout_s: float = 2.0
    handshake_timeout_s: float = 3.0
    send_timeout_s: float = 5.0
    stream_idle_timeout_s: float = 8.0

    def membership(self) -> MembershipConfig:
        return MembershipConfig(
            probe_interval_s=self.probe_interval_s,
            probe_timeout_s=self.probe_timeout_s,
            suspicion_max_timeout_mult=self.suspicion_max_timeout_mult,
            push_pull_interval_s=self.push_pull_interval_s,
            reconnect_interval_s=self.reconnect_interval_s,
            join_retry_interval_s=self.join_retry_interval_s,
        )

    def sections(self) -> dict[str, dict[str, object]]:
        return {
            "replication": {
                "dead_grace_s": self.dead_grace_s,
                "hint_delivery_interval_s": self.hint_delivery_interval_s,
                "anti_entropy_interval_s": self.anti_entropy_interval_s,
                "gc_interval_s": self.gc_interval_s,
                "chunk_gc_grace_s": self.chunk_gc_grace_s,
                "replica_timeout_s": self.replica_timeout_s,
                "replica_backoff_s": self.replica_backoff_s,
                "chunk_size_bytes": self.chunk_size_bytes,
            },
            "membership": {
                "probe_interval_s": self.probe_interval_s,
                "probe_timeout_s": self.probe_timeout_s,
                "suspicion_max_timeout_mult": self.suspicion_max_timeout_mult,
                "push_pull_interval_s": self.push_pull_interval_s,
                "reconnect_interval_s": self.reconnect_interval_s,
                "join_retry_interval_s": self.join_retry_interval_s,
            },
            "net": {
                "connect_timeout_s": self.connect_timeout_s,
                "handshake_timeout_s": self.handshake_timeout_s,
                "send_timeout_s": self.send_timeout_s,
                "stream_idle_timeout_s": self.stream_idle_timeout_s,
            },
        }


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise AssertionError(f"no TOML form for {value!r}")


def render_config(listen: Address, seeds: list[Address], timings: Timings) -> str:
    """A node's p2pfs.toml for the chaos run (only what differs from the defaults)."""
    sections: dict[str, dict[str, object]] = {
        "node": {
            "listen": str(listen),
            "seeds": [str(s) for s in seeds],
            "data_dir": DATA_DIR,
            "bind_outgoing": True,
            "log_level": "info",
        },
        **timings.sections(),
    }
    lines = ["# Written by the chaos suite (p2pfs/chaos/cluster.py)."]
    for section, values in sections.items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def user_error_in(exc: BaseException) -> P2pfsError | None:
    """The P2pfsError behind ``exc``, also when a nursery in the client wrapped it in a group."""
    if isinstance(exc, P2pfsError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        leaves = [user_error_in(e) for e in exc.exceptions]
        if leaves and all(leaves):
            return leaves[0]
    return None


class ChaosNode:
    """One daemon: its directory, address, identity and (while running) its process."""

    def __init__(self, index: int, directory: Path, address: Address, node_id: str) -> None:
        self.index = index
        self.name = f"n{index}"
        self.directory = directory
        self.address = address
        self.node_id = node_id
        self.process: trio.Process | None = None
        self.paused = False

    @property
    def host(self) -> str:
        return self.address.host

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Cluster:
    """N daemons on 127.0.0.2.. inside the sandbox; start, kill, pause, wipe, skew, converge."""

    def __init__(self, directory: Path, nodes: int, timings: Timings) -> None:
        assert 1 <= nodes <= 200
        self.directory = directory
        self.timings = timings
        self.nodes: list[ChaosNode] = []
        self.client_identity: identity.Identity | None = None
        self._count = nodes

    # -- setting up -------------------------------------------------------------

    def create(self) -> None:
        """CA, client identity, and per node: identity, config, zero clock offset."""
        self.directory.mkdir(parents=True, exist_ok=True)
        authority = identity.init_ca(self.directory / CA_DIR)
        self.client_identity = identity.create_identity(self.directory / CLIENT_DIR, authority, Role.CLIENT)
        addresses = [Address(f"127.0.0.{i + 1}", NODE_PORT) for i in range(1, self._count + 1)]
        seeds = addresses[:2]
        for index, address in enumerate(addresses, start=1):
            node_dir = self.directory / f"n{index}"
            ident = identity.create_identity(node_dir, authority, Role.NODE)
            (node_dir / CONFIG_FILE).write_text(
                render_config(address, [s for s in seeds if s != address], self.timings)
            )
            self.nodes.append(ChaosNode(index, node_dir, address, ident.node_id))
            self.write_clock_offset(self.nodes[-1], 0.0)

    def node(self, name: str) -> ChaosNode:
        return next(n for n in self.nodes if n.name == name)

    def _env(self, node: ChaosNode) -> dict[str, str]:
        env = dict(os.environ)
        env[WALL_CLOCK_OFFSET_FILE_ENV] = str(node.directory / CLOCK_FILE)
        return env

    # -- processes --------------------------------------------------------------

    async def start(self, node: ChaosNode) -> None:
        """Start the daemon (with whatever is in its data dir) and wait until it answers."""
        assert not node.running
        log_file = open(node.directory / LOG_FILE, "ab")
        try:
            node.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "p2pfs", "daemon", str(node.directory)],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=self._env(node),
            )
        finally:
            log_file.close()
        node.paused = False
        with trio.move_on_after(START_TIMEOUT_S):
            while node.running:
                if await self._answers(node):
                    return
                await trio.sleep(POLL_INTERVAL_S)  # polling the daemon, under a deadline
        raise Unavailable(f"{node.name} did not start: see {node.directory / LOG_FILE}")

    async def _answers(self, node: ChaosNode) -> bool:
        try:
            with trio.fail_after(POLL_REQUEST_TIMEOUT_S):
                async with Client.connect(self.client_identity, node.address) as client:
                    await client.status()
        except trio.TooSlowError:
            return False
        except (P2pfsError, BaseExceptionGroup) as exc:
            if user_error_in(exc) is None:
                raise
            return False
        return True

    async def kill(self, node: ChaosNode) -> None:
        """SIGKILL (a paused process dies too) and reap."""
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        with trio.fail_after(REAP_TIMEOUT_S):
            await node.process.wait()
        node.paused = False

    def pause(self, node: ChaosNode) -> None:
        assert node.running and not node.paused
        node.process.send_signal(signal.SIGSTOP)
        node.paused = True

    def resume(self, node: ChaosNode) -> None:
        assert node.running and node.paused
        node.process.send_signal(signal.SIGCONT)
        node.paused = False

    def wipe(self, node: ChaosNode) -> None:
        """Lose the node's data for good (its identity stays: the disk was replaced, not the node)."""
        assert not node.running
        shutil.rmtree(node.directory / DATA_DIR, ignore_errors=True)

    def write_clock_offset(self, node: ChaosNode, offset_s: float) -> None:
        """Set the node's wall-clock offset; the daemon sees it within CLOCK_SETTLE_S."""
        path = node.directory / CLOCK_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(f"{round(offset_s * 1000)}\n")
        os.replace(temporary, path)  # the daemon never reads a half-written file

    async def stop_all(self) -> None:
        """SIGKILL every daemon still running (the end of a run; nothing needs a graceful leave)."""
        for node in self.nodes:
            if node.running:
                await self.kill(node)

    # -- views ------------------------------------------------------------------

    async def members_seen_by(self, node: ChaosNode) -> dict[str, str] | None:
        """node id -> state as ``node`` sees it; None if it does not answer in time."""
        try:
            with trio.fail_after(POLL_REQUEST_TIMEOUT_S):
                async with Client.connect(self.client_identity, node.address) as client:
                    members = await client.members()
        except trio.TooSlowError:
            return None
        except (P2pfsError, BaseExceptionGroup) as exc:
            if user_error_in(exc) is None:
                raise
            return None
        return {m.node_id: m.state for m in members}

    async def lagging(self) -> list[str]:
        """Nodes that do not (yet) see every node alive."""
        want = {n.node_id: "alive" for n in self.nodes}
        return [n.name for n in self.nodes if await self.members_seen_by(n) != want]

    async def wait_converged(self, timeout_s: float) -> list[str]:
        """Poll until every node sees every node alive; return the laggards if time runs out."""
        lagging = [n.name for n in self.nodes]
        with trio.move_on_after(timeout_s):
            while lagging:
                lagging = await self.lagging()
                if lagging:
                    await trio.sleep(POLL_INTERVAL_S)  # polling the cluster's own view, under a deadline
        return lagging
