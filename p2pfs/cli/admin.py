"""Identities (``ca init``, ``node init``, ``client init``, ``whoami``) and the daemon."""

from __future__ import annotations

import datetime
from pathlib import Path

import click

from p2pfs import errors
from p2pfs.address import Address
from p2pfs.config import CONFIG_FILE, NodeSettings, format_size_exact
from p2pfs.errors import BadInput
from p2pfs.cli.base import (
    ADDRESS, CLIENT_CONFIG_FILE, JSON_OPTION, SIZE, Context, cli, emit, pass_context, shown, time_facts,
)


@cli.group()
def ca() -> None:
    """The cluster's certificate authority."""


@ca.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="DIR")
@JSON_OPTION
def ca_init(directory: Path, as_json: bool) -> None:
    """Create a cluster CA in DIR (its private key is written 0600).

    Refuses to overwrite an existing CA. Keep DIR safe: whoever holds ca.key can
    admit nodes and clients to the cluster.
    """
    from p2pfs import identity

    authority = identity.init_ca(directory)
    if as_json:
        emit({"directory": str(directory), "cluster_id": authority.cluster_id.hex()})
        return
    click.echo(f"created CA in {shown(str(directory))}")
    click.echo(f"cluster id: {authority.cluster_id.hex()[:16]}")


_CA_OPTION = click.option(
    "--ca", "ca_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
    metavar="CA_DIR", help="The cluster CA directory (from `p2pfs ca init`).",
)


@cli.group()
def node() -> None:
    """Node identities."""


@node.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="DIR")
@_CA_OPTION
@click.option("--listen", required=True, type=ADDRESS, help="Address the node accepts connections on.")
@click.option("--seed", "seeds", multiple=True, type=ADDRESS,
              help="A member to join through (repeatable).")
@click.option("--zone", default="", help="Failure zone name (rack, machine, ...).")
@click.option("--capacity", "capacity_bytes", type=SIZE,
              default=str(format_size_exact(NodeSettings().capacity_bytes)), show_default=True,
              help="Disk space offered for chunks, e.g. 10GiB.")
@click.option("--capacity-max", "capacity_bytes_max", type=SIZE, default=None,
              help="Most capacity the certificate lets the node offer (default: --capacity); "
                   "peers refuse more.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("data"), show_default=True,
              help="Data directory (relative to DIR unless absolute).")
@JSON_OPTION
def node_init(directory: Path, ca_dir: Path, listen: Address, seeds: tuple[Address, ...],
              zone: str, capacity_bytes: int, capacity_bytes_max: int | None, data_dir: Path,
              as_json: bool) -> None:
    """Create a node identity and a documented config file DIR/p2pfs.toml.

    The CA signs the node's address, zone and capacity ceiling into its certificate;
    peers refuse announcements beyond them.
    """
    if listen.port == 0:
        raise BadInput("--listen needs a fixed port, not 0")
    if capacity_bytes <= 0:
        raise BadInput("--capacity must be more than 0")
    if capacity_bytes_max is not None and capacity_bytes_max < capacity_bytes:
        raise BadInput("--capacity-max must be at least --capacity")
    if (directory / CONFIG_FILE).exists():
        raise BadInput(f"{directory / CONFIG_FILE} already exists; refusing to overwrite it")
    try:
        settings = NodeSettings(listen=listen, seeds=seeds, zone=zone, capacity_bytes=capacity_bytes,
                                data_dir=data_dir)
    except ValueError as exc:  # checked before anything is written
        raise BadInput(str(exc)) from None
    from p2pfs import identity
    from p2pfs.claims import NodeClaims
    from p2pfs.node.config import render_node_config
    from p2pfs.wire import Role

    authority = identity.load_ca(ca_dir)
    claims = NodeClaims(listen, zone, capacity_bytes if capacity_bytes_max is None else capacity_bytes_max)
    ident = identity.create_identity(directory, authority, Role.NODE, claims=claims)
    (directory / CONFIG_FILE).write_text(render_node_config(settings))
    if as_json:
        emit({"node_id": ident.node_id, "directory": str(directory), "config": str(directory / CONFIG_FILE),
               "address": str(listen)})
        return
    click.echo(f"created node {ident.node_id} in {shown(str(directory))}")
    click.echo(f"start it with: p2pfs daemon {shown(str(directory))}")


@cli.group()
def client() -> None:
    """Client identities (for the CLI)."""


@client.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="DIR")
@_CA_OPTION
@click.option("--node", "node_address", type=ADDRESS, default=None,
              help="Node this client talks to by default.")
@JSON_OPTION
def client_init(directory: Path, ca_dir: Path, node_address: Address | None, as_json: bool) -> None:
    """Create a client identity in DIR for use with --identity."""
    from p2pfs import identity
    from p2pfs.wire import Role

    authority = identity.load_ca(ca_dir)
    ident = identity.create_identity(directory, authority, Role.CLIENT)
    if node_address is not None:
        import tomli_w

        (directory / CLIENT_CONFIG_FILE).write_text(
            "# Default node for this client; --node or P2PFS_NODE override it.\n"
            + tomli_w.dumps({"node": str(node_address)})
        )
    if as_json:
        emit({"node_id": ident.node_id, "directory": str(directory),
               "address": str(node_address) if node_address else None})
        return
    click.echo(f"created client {ident.node_id[:12]} in {shown(str(directory))}")
    click.echo(f"use it with: export P2PFS_IDENTITY={directory.resolve()}")


@cli.command("whoami")
@click.argument("directory", required=False, type=click.Path(path_type=Path, file_okay=False),
                metavar="[DIR]")
@JSON_OPTION
@pass_context
def whoami(ctx: Context, directory: Path | None, as_json: bool) -> None:
    """Show an identity: id, role, cluster and validity (DIR or --identity)."""
    directory = directory or ctx.identity_dir
    if directory is None:
        raise BadInput("give an identity DIR or --identity")
    from p2pfs import identity

    ident = identity.load_identity(directory)
    facts = {
        "node_id": ident.node_id,
        "role": ident.role.value,
        "cluster_id": ident.cluster_id.hex(),
        **time_facts("not_valid_before", int(ident.cert.not_valid_before_utc.timestamp() * 1000)),
        **time_facts("not_valid_after", int(ident.cert.not_valid_after_utc.timestamp() * 1000)),
        "directory": str(directory),
    }
    if as_json:
        emit(facts)
        return
    expires = ident.cert.not_valid_after_utc
    days = (expires - datetime.datetime.now(datetime.timezone.utc)).days
    click.echo(f"id:        {facts['node_id']}")
    click.echo(f"role:      {facts['role']}")
    click.echo(f"cluster:   {facts['cluster_id'][:16]}")
    click.echo(f"valid to:  {expires:%Y-%m-%d} ({days} days)")


# ---------------------------------------------------------------------------
# The daemon


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="DIR")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Config file (default: DIR/p2pfs.toml).")
def daemon(directory: Path, config_file: Path | None) -> None:
    """Run a node in the foreground, with its identity in DIR.

    Logs go to stderr. SIGTERM or SIGINT stop it within seconds without leaving
    the cluster (it rejoins with its data when started again); `p2pfs leave`
    decommissions it. SIGHUP reloads the config file.
    """
    import trio

    from p2pfs import identity
    from p2pfs.node.config import load_node_config
    from p2pfs.node.daemon import serve
    from p2pfs.observe import setup_logging
    from p2pfs.wire import Role

    cfg = load_node_config(config_file or directory / CONFIG_FILE)
    ident = identity.load_identity(directory)
    if ident.role is not Role.NODE:
        raise errors.AuthError(f"{directory} holds a client identity; a daemon needs a node's")
    ident.server_context()  # fail now, clearly, if the key or certificate cannot be loaded
    setup_logging(cfg.node.log_level, ident.node_id[:12], cfg.admin.log_format)
    trio.run(serve, cfg, ident)


