"""``testnet``: a real multi-process network on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from p2pfs.cli.base import JSON_OPTION, cli, emit, table
from p2pfs.errors import BadInput


@cli.group()
def testnet() -> None:
    """A real multi-process network on this machine (127.0.0.1)."""


_DIR_OPTION = click.option("--dir", "directory", required=True, metavar="DIR",
                           type=click.Path(path_type=Path, file_okay=False),
                           help="Directory holding the network's identities, data and logs.")


def _progress_printer(as_json: bool) -> Any:
    """Progress lines on stderr for people; none under --json, whose stderr is for an error object."""
    return (lambda text: None) if as_json else (lambda text: click.echo(text, err=True))


@testnet.command("up")
@_DIR_OPTION
@click.option("--nodes", default=5, show_default=True, help="Number of nodes.")
@click.option("--base-port", default=7001, show_default=True,
              help="Port of node1; node I listens on base-port + I - 1. 0: each node gets a "
                   "free port chosen by the system.")
@click.option("--dead-grace-s", type=float, default=None, metavar="SECONDS",
              help="How long a dead node stays in the ring before its data is re-replicated "
                   "(every node's [replication] dead_grace_s).")
@click.option("--set", "settings", multiple=True, metavar="SECTION.OPTION=VALUE",
              help="Any other node option, for every node (repeatable), e.g. "
                   "replication.anti_entropy_interval_s=5.")
@JSON_OPTION
def testnet_up(directory: Path, nodes: int, base_port: int, dead_grace_s: float | None,
               settings: tuple[str, ...], as_json: bool) -> None:
    """Create (if needed) and start a network; wait until every node sees every other.

    Prints the two environment lines that point the CLI at it. Options that shape
    the nodes (--dead-grace-s, --set) apply when the network is created.
    """
    from p2pfs import testnet as tn
    from p2pfs.node.config import parse_override

    overrides: dict[str, dict] = {}
    for text in settings:
        section, option, value = parse_override(text)
        overrides.setdefault(section, {})[option] = value
    if dead_grace_s is not None:
        if dead_grace_s < 0:
            raise BadInput("--dead-grace-s cannot be negative")
        overrides.setdefault("replication", {})["dead_grace_s"] = dead_grace_s
    procs = tn.up(directory, nodes, base_port, overrides=overrides, progress=_progress_printer(as_json))
    if as_json:
        emit({"nodes": [p.as_json() for p in procs],
               "env": {"P2PFS_IDENTITY": str((directory / tn.CLIENT_DIR).resolve()),
                       "P2PFS_NODE": str(procs[0].address)}})
        return
    click.echo(f"{len(procs)} nodes up; point the CLI at the network with:", err=True)
    click.echo(f"export P2PFS_IDENTITY={(directory / tn.CLIENT_DIR).resolve()}")
    click.echo(f"export P2PFS_NODE={procs[0].address}")
    if procs[0].status_page:
        click.echo(f"status page: {procs[0].status_page}", err=True)


@testnet.command("add")
@_DIR_OPTION
@click.option("--nodes", default=1, show_default=True, help="Number of nodes to add.")
@JSON_OPTION
def testnet_add(directory: Path, nodes: int, as_json: bool) -> None:
    """Add nodes to a running network (next names and ports, the same settings) and start them."""
    from p2pfs import testnet as tn

    added = tn.add(directory, nodes, progress=_progress_printer(as_json))
    if as_json:
        emit({"nodes": [p.as_json() for p in added]})
        return
    for proc in added:
        click.echo(f"{proc.name} {proc.node_id[:12]} {proc.address} running")


@testnet.command("status")
@_DIR_OPTION
@JSON_OPTION
def testnet_status(directory: Path, as_json: bool) -> None:
    """Each node: name, node id, address, pid, running."""
    from p2pfs import testnet as tn

    procs = tn.status(directory)
    if as_json:
        emit([p.as_json() for p in procs])
        return
    table([[p.name, p.node_id[:12], str(p.address), str(p.pid or "-"), "yes" if p.running else "no"]
            for p in procs], ["NAME", "NODE", "ADDRESS", "PID", "RUNNING"])


@testnet.command("stop")
@_DIR_OPTION
@click.argument("name")
@click.option("--kill", is_flag=True, help="SIGKILL instead of SIGTERM.")
@JSON_OPTION
def testnet_stop(directory: Path, name: str, kill: bool, as_json: bool) -> None:
    """Stop node NAME (e.g. node3) without leaving the cluster (SIGTERM), or SIGKILL it with --kill.

    To decommission it instead, `p2pfs --node ADDRESS leave`."""
    from p2pfs import testnet as tn

    node_dir = tn.resolve_node(directory, name)
    was_running = tn.stop_node(node_dir, kill=kill)
    if as_json:
        emit({"name": node_dir.name, "was_running": was_running, "killed": kill})
        return
    if was_running:
        click.echo(f"{node_dir.name} {'killed' if kill else 'stopped'}")
    else:
        click.echo(f"{node_dir.name} was not running")


@testnet.command("start")
@_DIR_OPTION
@click.argument("name")
@JSON_OPTION
def testnet_start(directory: Path, name: str, as_json: bool) -> None:
    """Start node NAME again, with its identity and data."""
    from p2pfs import testnet as tn

    node_dir = tn.resolve_node(directory, name)
    pid = tn.start_node(node_dir)
    if as_json:
        emit({"name": node_dir.name, "pid": pid})
        return
    click.echo(f"{node_dir.name} running (pid {pid})")


@testnet.command("down")
@_DIR_OPTION
@JSON_OPTION
def testnet_down(directory: Path, as_json: bool) -> None:
    """Stop every node; no process is left behind. Identities and data stay in DIR.

    Nodes stop without leaving the cluster, so `testnet up` brings the same cluster back.
    """
    from p2pfs import testnet as tn

    stopped = tn.down(directory)
    if as_json:
        emit({"stopped": stopped})
        return
    click.echo(f"stopped {len(stopped)} node(s)")
