"""A real multi-process network on one machine, for trying, developing and testing p2pfs.

``up`` creates a CA, N node identities (``DIR/node1`` ... ``DIR/nodeN``) and a
client identity (``DIR/client``), starts N daemons as detached processes bound
to 127.0.0.1 (ports ``base_port`` ... ``base_port+N-1``), and waits until every
node sees every other as alive. Each node's log is ``DIR/nodeI/daemon.log``
and its pid ``DIR/nodeI/daemon.pid``. Running ``up`` again on the same
directory starts whichever nodes are not running, with their data.

Fixed ports sit below 32768 on purpose: Linux hands out 32768-60999 as
ephemeral source ports, and a fixed port there could be taken by any outgoing
connection on the machine. ``base_port`` 0 instead asks the operating system
for a free port per node (what tests do: several suites may share a machine,
and no fixed or random block is safe from the others); nodes added later get
OS-chosen ports too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import trio

from p2pfs import identity
from p2pfs.address import Address
from p2pfs.claims import NodeClaims
from p2pfs.client import Client
from p2pfs.config import CONFIG_FILE, NodeSettings
from p2pfs.errors import BadInput, P2pfsError, Unavailable
from p2pfs.node.config import load_node_config, render_node_config
from p2pfs.wire import Role

BASE_PORT_DEFAULT = 7001
NODES_DEFAULT = 5
NODES_MAX = 200
# Time for a freshly started network to converge before `up` gives up.
CONVERGE_TIMEOUT_S = 60.0
# Time a SIGTERMed daemon has to exit (it stops without leaving, in seconds) before it is killed.
STOP_TIMEOUT_S = 20.0
# Time a daemon asked to leave has to hand off its data, leave and exit before it is killed
# (the default leave_handoff_timeout_s plus the leave announcement).
LEAVE_TIMEOUT_S = 330.0
# Time `down` gives daemons to exit after SIGTERM.
DOWN_TIMEOUT_S = 20.0
PID_FILE = "daemon.pid"
# The config overrides the network was created with, applied to nodes added later.
OVERRIDES_FILE = "overrides.json"
# Present when the network's ports were chosen by the operating system (base port 0).
OS_PORTS_FILE = "os-ports"
LOG_FILE = "daemon.log"
CLIENT_DIR = "client"
CA_DIR = "ca"
# Each node's admin listener (status page, metrics) is on its node port plus this offset,
# or on a port the system chose (base port 0). Above NODES_MAX so the two ranges never meet.
ADMIN_PORT_OFFSET = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class NodeProcess:
    name: str
    directory: Path
    node_id: str
    address: Address
    pid: int | None
    running: bool
    admin: Address | None = None  # the admin listener, when the node has one
    admin_https: bool = False  # [admin] client_certificates

    @property
    def status_page(self) -> str | None:
        if self.admin is None:
            return None
        return f"{'https' if self.admin_https else 'http'}://{self.admin}/"

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "node_id": self.node_id,
            "address": str(self.address),
            "pid": self.pid,
            "running": self.running,
            "status_page": self.status_page,
        }


def _node_dirs(directory: Path) -> list[Path]:
    dirs = [p for p in directory.glob("node*") if (p / CONFIG_FILE).is_file()]
    return sorted(dirs, key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else 0)


def _pid_alive(pid: int, node_dir: Path) -> bool:
    """True if ``pid`` is a live daemon for ``node_dir`` (not a recycled pid)."""
    cmdline = _live_cmdline(pid)
    return cmdline is not None and b"daemon" in cmdline and str(node_dir.resolve()).encode() in cmdline


def _pid_exists(pid: int) -> bool:
    """True if ``pid`` is a live (not zombie) process, whatever it runs.

    For a moment after ``Popen`` returns, a just-started daemon's
    ``/proc/PID/cmdline`` can still read empty or as its parent's, so it does
    not look like a daemon yet; callers that just started it ask this instead.
    """
    return _live_cmdline(pid) is not None


def _live_cmdline(pid: int) -> list[bytes] | None:
    """The command line of a live (not zombie) process; None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie has exited
        return None
    return raw.split(b"\0")


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def _read_pid(node_dir: Path) -> int | None:
    try:
        return int((node_dir / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def node_process(node_dir: Path) -> NodeProcess:
    cfg = load_node_config(node_dir / CONFIG_FILE)
    ident = identity.load_identity(node_dir)
    pid = _read_pid(node_dir)
    return NodeProcess(
        name=node_dir.name,
        directory=node_dir,
        node_id=ident.node_id,
        address=cfg.node.advertise_address,
        pid=pid,
        running=pid is not None and _pid_alive(pid, node_dir),
        admin=cfg.admin.listen if cfg.admin.enabled else None,
        admin_https=cfg.admin.client_certificates,
    )


def status(directory: Path) -> list[NodeProcess]:
    _require_testnet(directory)
    return [node_process(d) for d in _node_dirs(directory)]


def _require_testnet(directory: Path) -> None:
    if not (directory / CA_DIR / identity.CA_CERT_FILE).is_file():
        raise BadInput(f"{directory} is not a test network (create one with `p2pfs testnet up --dir {directory}`)")


def _port_free(address: Address) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError:
            return False
    return True


def os_chosen_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports the operating system says are free on ``host`` now.

    The sockets are held open together so the ports differ, then closed for the
    daemons to bind. Another process could take one in between; the daemon then
    refuses to start with "already in use" and the caller can try again.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
    return ports


def create(directory: Path, nodes: int, base_port: int, overrides: dict[str, dict] | None = None) -> None:
    """Create the CA, node and client identities and node configs.

    ``base_port`` 0: each node gets a port the operating system chose.
    """
    if not 1 <= nodes <= NODES_MAX:
        raise BadInput(f"--nodes must be between 1 and {NODES_MAX}")
    if base_port != 0 and not 1024 <= base_port <= 65535 - nodes:
        raise BadInput("--base-port must be 0 (ports chosen by the system) or leave room for every "
                       "node's port (1024-65535)")
    if base_port == 0:
        chosen = os_chosen_ports(2 * nodes)
        ports, admin_ports = chosen[:nodes], chosen[nodes:]
    else:
        ports = [base_port + i for i in range(nodes)]
        admin_ports = [port + ADMIN_PORT_OFFSET for port in ports]
    addresses = [Address("127.0.0.1", port) for port in ports]
    admins = [Address("127.0.0.1", port) for port in admin_ports]
    busy = [str(a) for a in addresses + admins if not _port_free(a)]
    if busy:
        raise BadInput(
            f"port(s) already in use: {', '.join(busy)}; choose another --base-port"
        )
    render_node_config(NodeSettings(), overrides)  # check the overrides before creating anything
    directory.mkdir(parents=True, exist_ok=True)
    authority = identity.init_ca(directory / CA_DIR)
    (directory / OVERRIDES_FILE).write_text(json.dumps(overrides or {}, indent=2) + "\n")
    if base_port == 0:
        (directory / OS_PORTS_FILE).touch()
    for i, (address, admin) in enumerate(zip(addresses, admins), start=1):
        _create_node(directory, authority, i, address, admin, tuple(addresses[:2]), overrides)
    identity.create_identity(directory / CLIENT_DIR, authority, Role.CLIENT)


def _create_node(directory: Path, authority: identity.CertificateAuthority, index: int,
                 address: Address, admin: Address, seeds: tuple[Address, ...], overrides: dict | None) -> Path:
    node_dir = directory / f"node{index}"
    settings = NodeSettings(listen=address, seeds=tuple(s for s in seeds if s != address))
    # Every test node serves its status page and metrics on loopback.
    with_admin = dict(overrides or {})
    with_admin["admin"] = {"enabled": True, "listen": admin, **with_admin.get("admin", {})}
    node_dir.mkdir(parents=True, exist_ok=True)
    (node_dir / CONFIG_FILE).write_text(render_node_config(settings, with_admin))
    # As `node init` does: the CA signs what the node's config says it may announce.
    cfg = load_node_config(node_dir / CONFIG_FILE).node
    claims = NodeClaims(cfg.advertise_address, cfg.zone, cfg.capacity_bytes)
    identity.create_identity(node_dir, authority, Role.NODE, claims=claims)
    return node_dir


def add(directory: Path, count: int, progress: Callable[[str], None] = lambda s: None) -> list[NodeProcess]:
    """Add ``count`` nodes to a network (next names, next ports, same settings) and start them."""
    _require_testnet(directory)
    if not 1 <= count <= NODES_MAX:
        raise BadInput(f"--nodes must be between 1 and {NODES_MAX}")
    existing = status(directory)
    if not existing:
        raise BadInput(f"{directory} has no nodes")
    overrides = json.loads((directory / OVERRIDES_FILE).read_text())
    authority = identity.load_ca(directory / CA_DIR)
    last_index = max(int(p.name[4:]) for p in existing)
    last_port = max(p.address.port for p in existing)
    seeds = tuple(p.address for p in existing[:2])
    if (directory / OS_PORTS_FILE).exists():
        chosen = os_chosen_ports(2 * count)
        ports, admin_ports = chosen[:count], chosen[count:]
    else:
        ports = [last_port + offset for offset in range(1, count + 1)]
        admin_ports = [port + ADMIN_PORT_OFFSET for port in ports]
    new_dirs = []
    for offset, (port, admin_port) in enumerate(zip(ports, admin_ports), start=1):
        address, admin = Address("127.0.0.1", port), Address("127.0.0.1", admin_port)
        for wanted in (address, admin):
            if not _port_free(wanted):
                raise BadInput(f"port {wanted} is in use")
        new_dirs.append(_create_node(directory, authority, last_index + offset, address, admin, seeds,
                                     overrides))
    for node_dir in new_dirs:
        progress(f"starting {node_dir.name}")
        start_node(node_dir)
    trio.run(lambda: wait_converged(directory, timeout_s=CONVERGE_TIMEOUT_S, started=new_dirs,
                                    progress=progress))
    return [node_process(d) for d in new_dirs]


def start_node(node_dir: Path) -> int:
    """Start one daemon as a detached process; return its pid."""
    proc = node_process(node_dir)
    if proc.running:
        return proc.pid
    if not _port_free(proc.address):
        raise Unavailable(f"{proc.name}: port {proc.address} is in use by another program")
    log_file = open(node_dir / LOG_FILE, "ab")
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "p2pfs", "daemon", str(node_dir.resolve())],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,  # survives the CLI; not killed by the terminal's signals
            close_fds=True,
        )
    finally:
        log_file.close()
    (node_dir / PID_FILE).write_text(f"{child.pid}\n")
    return child.pid


def stop_node(node_dir: Path, *, kill: bool, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM (stop, still a member) or SIGKILL a daemon, and wait for it to exit.

    Returns False if it was not running.
    """
    proc = node_process(node_dir)
    if not proc.running:
        return False
    os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
    _wait_exit(proc, timeout_s)
    return True


def leave_node(node_dir: Path, timeout_s: float = LEAVE_TIMEOUT_S) -> bool:
    """Decommission a daemon (what `p2pfs leave` asks: hand off, leave), and wait for it to exit.

    Returns False if it was not running.
    """
    proc = node_process(node_dir)
    if not proc.running:
        return False
    client_ident = identity.load_identity(node_dir.parent / CLIENT_DIR)

    async def ask() -> None:
        with trio.fail_after(10.0):
            async with Client.connect(client_ident, proc.address) as client:
                await client.leave()

    trio.run(ask)
    _wait_exit(proc, timeout_s)
    return True


def _wait_exit(proc: NodeProcess, timeout_s: float) -> None:
    """Wait for a signalled or leaving daemon to exit; SIGKILL it past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while _pid_alive(proc.pid, proc.directory):
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
        _reap(proc.pid)
        time.sleep(0.02)  # polling a process we do not parent: no event to wait on


def _reap(pid: int) -> None:
    """Collect the exit status if the daemon happens to be our child (started by this process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def resolve_node(directory: Path, name: str) -> Path:
    _require_testnet(directory)
    node_dir = directory / name
    if name.isdigit():
        node_dir = directory / f"node{name}"
    if not (node_dir / CONFIG_FILE).is_file() or not node_dir.name.startswith("node"):
        names = ", ".join(d.name for d in _node_dirs(directory))
        raise BadInput(f"no node {name!r} in {directory} (nodes: {names})")
    return node_dir


async def wait_converged(directory: Path, *, timeout_s: float, started: Iterable[Path] = (),
                         progress: Callable[[str], None] | None = None) -> None:
    """Wait until every running or just ``started`` node sees all of them as alive.

    A just-started node whose process is still starting counts as lagging; one
    that has exited is an error naming its last log line.
    """
    started_names = {d.name for d in started}
    procs = [p for p in status(directory) if p.running or (p.name in started_names and p.pid is not None)]
    client_ident = identity.load_identity(directory / CLIENT_DIR)
    want = {p.node_id for p in procs}
    last_note = ""
    with trio.move_on_after(timeout_s) as scope:
        while True:
            starting = []
            for proc in procs:
                if _pid_alive(proc.pid, proc.directory):
                    continue
                if proc.name in started_names and _pid_exists(proc.pid):
                    starting.append(proc.name)
                    continue
                raise Unavailable(
                    f"{proc.name} exited: {_last_line(proc.directory / LOG_FILE)} "
                    f"(log: {proc.directory / LOG_FILE})"
                )
            lagging = list(starting)
            for proc in procs:
                if proc.name in starting:
                    continue
                try:
                    with trio.fail_after(3):
                        async with Client.connect(client_ident, proc.address) as client:
                            members = await client.members()
                except (P2pfsError, trio.TooSlowError):
                    lagging.append(proc.name)
                    continue
                alive = {mb.node_id for mb in members if mb.state == "alive"}
                if not want <= alive:
                    lagging.append(proc.name)
            if not lagging:
                return
            note = f"waiting for {', '.join(lagging)} to see all {len(want)} nodes"
            if progress and note != last_note:
                progress(note)
                last_note = note
            await trio.sleep(0.2)  # poll the cluster's own view again
    if scope.cancelled_caught:
        logs = ", ".join(str(directory / name / LOG_FILE) for name in lagging)
        raise Unavailable(
            f"the network did not converge within {timeout_s:.0f} s ({', '.join(lagging)} lagging); "
            f"see {logs}"
        )


def up(directory: Path, nodes: int, base_port: int, *, overrides: dict[str, dict] | None = None,
       progress: Callable[[str], None] = lambda s: None) -> list[NodeProcess]:
    if not (directory / CA_DIR / identity.CA_CERT_FILE).is_file():
        progress(f"creating a {nodes}-node network in {directory}")
        create(directory, nodes, base_port, overrides)
    else:
        progress(f"{directory} exists: starting whatever is not running")
    node_dirs = _node_dirs(directory)
    for node_dir in node_dirs:
        start_node(node_dir)
    trio.run(lambda: wait_converged(directory, timeout_s=CONVERGE_TIMEOUT_S, started=node_dirs,
                                    progress=progress))
    return status(directory)


def down(directory: Path, timeout_s: float = DOWN_TIMEOUT_S) -> list[str]:
    """Stop every node without leaving the cluster (SIGTERM), so that `up` brings the same
    cluster back with its data; SIGKILL whatever has not exited in time."""
    running = [p for p in status(directory) if p.running]
    for proc in running:
        os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in running:
        while _pid_alive(proc.pid, proc.directory):
            if time.monotonic() > deadline:
                os.kill(proc.pid, signal.SIGKILL)
            _reap(proc.pid)
            time.sleep(0.02)  # polling processes we do not parent, under a deadline
    return [p.name for p in running]
