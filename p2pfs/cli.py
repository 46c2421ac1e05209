"""The ``p2pfs`` command line: a thin shell over the rooms and the client library.

Output for people goes to stdout via ``click.echo``; ``--json`` gives machines
the same facts. Errors go to stderr as one line with an exit code from
``p2pfs.errors.ExitCode``; a traceback only ever means a bug.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import click

from p2pfs import __version__, identity
from p2pfs.address import Address, parse_address
from p2pfs.config import CONFIG_FILE, NodeSettings, format_size, parse_size
from p2pfs.errors import ExitCode, UserError
from p2pfs.node.config import render_node_config
from p2pfs.wire import Role

CLIENT_CONFIG_FILE = "client.toml"


@dataclasses.dataclass(slots=True)
class Context:
    """What the global options select: who speaks, and to which node."""

    identity_dir: Path | None
    node: Address | None

    def client_identity(self) -> identity.Identity:
        if self.identity_dir is None:
            raise UserError(
                "no identity given: pass --identity DIR or set P2PFS_IDENTITY "
                "(create one with `p2pfs client init DIR --ca CA_DIR`)",
                ExitCode.BAD_INPUT,
            )
        return identity.load_identity(self.identity_dir)

    def node_address(self) -> Address:
        if self.node is not None:
            return self.node
        if self.identity_dir is not None:
            saved = _read_client_config(self.identity_dir).get("node")
            if saved:
                return parse_address(saved)
        raise UserError(
            "no node given: pass --node HOST:PORT or set P2PFS_NODE", ExitCode.BAD_INPUT
        )


def _read_client_config(directory: Path) -> dict[str, Any]:
    import tomllib

    path = directory / CLIENT_CONFIG_FILE
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}", ExitCode.BAD_INPUT) from None


class AddressType(click.ParamType):
    name = "HOST:PORT"

    def convert(self, value: Any, param: Any, ctx: Any) -> Address:
        if isinstance(value, Address):
            return value
        try:
            return parse_address(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


ADDRESS = AddressType()
SIZE = SizeType()
pass_context = click.make_pass_decorator(Context)


class _Group(click.Group):
    """Turns UserError into a one-line message on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(int(exc.exit_code))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="p2pfs")
@click.option(
    "--identity", "identity_dir", type=click.Path(path_type=Path, file_okay=False),
    envvar="P2PFS_IDENTITY", metavar="DIR",
    help="Client identity directory to speak with (env P2PFS_IDENTITY).",
)
@click.option(
    "--node", type=ADDRESS, envvar="P2PFS_NODE", metavar="HOST:PORT",
    help="Node to talk to (env P2PFS_NODE; default: the one saved by `client init --node`).",
)
@click.pass_context
def cli(ctx: click.Context, identity_dir: Path | None, node: Address | None) -> None:
    """p2pfs: a peer-to-peer, gossip-based file store.

    Set up a cluster with `ca init`, `node init` and `client init`, run nodes
    with `daemon`, or start a whole local network with `testnet up`.
    """
    ctx.obj = Context(identity_dir, node)


# ---------------------------------------------------------------------------
# Identities


@cli.group()
def ca() -> None:
    """The cluster's certificate authority."""


@ca.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="DIR")
def ca_init(directory: Path) -> None:
    """Create a cluster CA in DIR (its private key is written 0600).

    Refuses to overwrite an existing CA. Keep DIR safe: whoever holds ca.key can
    admit nodes and clients to the cluster.
    """
    authority = identity.init_ca(directory)
    click.echo(f"created CA in {directory}")
    click.echo(f"cluster id: {authority.cluster_id.hex()[:16]}")


@cli.group()
def node() -> None:
    """Node identities."""


@node.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="DIR")
@click.option("--ca", "ca_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              metavar="CA_DIR", help="The cluster CA directory (from `p2pfs ca init`).")
@click.option("--listen", required=True, type=ADDRESS, help="Address the node accepts connections on.")
@click.option("--seed", "seeds", multiple=True, type=ADDRESS,
              help="A member to join through (repeatable).")
@click.option("--zone", default="", help="Failure zone name (rack, machine, ...).")
@click.option("--capacity", "capacity_bytes", type=SIZE, default=NodeSettings().capacity_bytes,
              show_default="10GiB", help="Disk space offered for chunks, e.g. 10GiB.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("data"), show_default=True,
              help="Data directory (relative to DIR unless absolute).")
def node_init(directory: Path, ca_dir: Path, listen: Address, seeds: tuple[Address, ...],
              zone: str, capacity_bytes: int, data_dir: Path) -> None:
    """Create a node identity and a documented config file DIR/p2pfs.toml."""
    if listen.port == 0:
        raise UserError("--listen needs a fixed port, not 0", ExitCode.BAD_INPUT)
    if capacity_bytes <= 0:
        raise UserError("--capacity must be more than 0", ExitCode.BAD_INPUT)
    if (directory / CONFIG_FILE).exists():
        raise UserError(f"{directory / CONFIG_FILE} already exists; refusing to overwrite it",
                        ExitCode.BAD_INPUT)
    authority = identity.load_ca(ca_dir)
    ident = identity.create_identity(directory, authority, Role.NODE)
    settings = NodeSettings(listen=listen, seeds=seeds, zone=zone, capacity_bytes=capacity_bytes,
                            data_dir=data_dir)
    (directory / CONFIG_FILE).write_text(render_node_config(settings))
    click.echo(f"created node {ident.node_id} in {directory}")
    click.echo(f"start it with: p2pfs daemon {directory}")


@cli.group()
def client() -> None:
    """Client identities (for the CLI)."""


@client.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="DIR")
@click.option("--ca", "ca_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              metavar="CA_DIR", help="The cluster CA directory (from `p2pfs ca init`).")
@click.option("--node", "node_address", type=ADDRESS, default=None,
              help="Node this client talks to by default.")
def client_init(directory: Path, ca_dir: Path, node_address: Address | None) -> None:
    """Create a client identity in DIR for use with --identity."""
    authority = identity.load_ca(ca_dir)
    ident = identity.create_identity(directory, authority, Role.CLIENT)
    if node_address is not None:
        (directory / CLIENT_CONFIG_FILE).write_text(
            "# Default node for this client; --node or P2PFS_NODE override it.\n"
            f'node = "{node_address}"\n'
        )
    click.echo(f"created client {ident.node_id[:12]} in {directory}")
    click.echo(f"use it with: export P2PFS_IDENTITY={directory.resolve()}")


@cli.command("whoami")
@click.argument("directory", required=False, type=click.Path(path_type=Path, file_okay=False),
                metavar="[DIR]")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def whoami(ctx: Context, directory: Path | None, as_json: bool) -> None:
    """Show an identity: id, role, cluster and validity (DIR or --identity)."""
    directory = directory or ctx.identity_dir
    if directory is None:
        raise UserError("give an identity DIR or --identity", ExitCode.BAD_INPUT)
    ident = identity.load_identity(directory)
    facts = {
        "id": ident.node_id,
        "role": ident.role.value,
        "cluster_id": ident.cluster_id.hex(),
        "not_valid_before": ident.cert.not_valid_before_utc.isoformat(),
        "not_valid_after": ident.cert.not_valid_after_utc.isoformat(),
        "directory": str(directory),
    }
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    expires = ident.cert.not_valid_after_utc
    days = (expires - datetime.datetime.now(datetime.timezone.utc)).days
    click.echo(f"id:        {facts['id']}")
    click.echo(f"role:      {facts['role']}")
    click.echo(f"cluster:   {facts['cluster_id'][:16]}")
    click.echo(f"valid to:  {expires:%Y-%m-%d} ({days} days)")


def main() -> None:
    cli(prog_name="p2pfs")


if __name__ == "__main__":
    sys.exit(main())
