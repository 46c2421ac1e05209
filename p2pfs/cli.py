"""The ``p2pfs`` command line: a thin shell over the rooms and the client library.

Output for people goes to stdout via ``click.echo``; ``--json`` gives machines
the same facts. Errors go to stderr as one line with an exit code from
``p2pfs.errors.ExitCode``; a traceback only ever means a bug.
"""

from __future__ import annotations

import contextlib
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
from p2pfs import errors
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


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


# Exit codes for the library's error classes, most specific first (documented in README.md).
_EXIT_CODES: tuple[tuple[type[errors.P2pfsError], ExitCode], ...] = (
    (errors.StorageFull, ExitCode.STORAGE_FULL),
    (errors.BadInput, ExitCode.BAD_INPUT),
    (errors.NotFound, ExitCode.NOT_FOUND),
    (errors.Unavailable, ExitCode.UNAVAILABLE),
    (errors.AuthError, ExitCode.AUTH),
)


def exit_code_for(exc: errors.P2pfsError) -> ExitCode:
    if isinstance(exc, UserError):
        return exc.exit_code
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return ExitCode.FAILURE


class _Group(click.Group):
    """Turns P2pfsError into a one-line message on stderr and its exit code.

    trio's nurseries wrap what escapes them in exception groups; a group made
    only of P2pfsErrors (or interrupts) is reported like a single one.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.P2pfsError as exc:
            self._fail(ctx, exc)
        except KeyboardInterrupt:
            self._interrupted(ctx)
        except BaseExceptionGroup as group:
            leaves = _leaves(group)
            if leaves and all(isinstance(e, KeyboardInterrupt) for e in leaves):
                self._interrupted(ctx)
            failures = [e for e in leaves if isinstance(e, errors.P2pfsError)]
            if len(failures) != len(leaves):
                raise
            self._fail(ctx, failures[0])

    @staticmethod
    def _fail(ctx: click.Context, exc: errors.P2pfsError) -> None:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(int(exit_code_for(exc)))

    @staticmethod
    def _interrupted(ctx: click.Context) -> None:
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
@_CA_OPTION
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

    from p2pfs.node.config import load_node_config
    from p2pfs.node.daemon import serve
    from p2pfs.observe import setup_logging

    cfg = load_node_config(config_file or directory / CONFIG_FILE)
    ident = identity.load_identity(directory)
    if ident.role is not Role.NODE:
        raise UserError(f"{directory} holds a client identity; a daemon needs a node's", ExitCode.AUTH)
    ident.server_context()  # fail now, clearly, if the key or certificate cannot be loaded
    setup_logging(cfg.node.log_level, ident.node_id[:12], cfg.admin.log_format)
    trio.run(serve, cfg, ident)


# ---------------------------------------------------------------------------
# Cluster views


def _call(ctx: Context, method: str, *args: Any) -> Any:
    from p2pfs.client import Client, run

    ident, node_address = ctx.client_identity(), ctx.node_address()

    async def go() -> Any:
        async with Client.connect(ident, node_address) as c:
            return await getattr(c, method)(*args)

    return run(go)


def _table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    for row in [headers, *rows]:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def members(ctx: Context, as_json: bool) -> None:
    """List the cluster's members as the node sees them."""
    found = _call(ctx, "members")
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(mb) for mb in found], indent=2))
        return
    _table(
        [[mb.node_id[:12], f"{mb.host}:{mb.port}", mb.state, str(mb.incarnation), mb.zone or "-",
          format_size(mb.capacity_bytes)] for mb in found],
        ["NODE", "ADDRESS", "STATE", "INCARNATION", "ZONE", "CAPACITY"],
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Show the node: id, address, uptime, members by state, version."""
    reply = _call(ctx, "status")
    facts = dataclasses.asdict(reply)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    click.echo(f"node:     {reply.node_id}")
    click.echo(f"address:  {reply.host}:{reply.port}")
    click.echo(f"version:  {reply.version}")
    click.echo(f"uptime:   {reply.uptime_s:.0f} s")
    click.echo(f"zone:     {reply.zone or '-'}")
    click.echo(f"storage:  {format_size(reply.used_bytes)} of {format_size(reply.capacity_bytes)}")
    click.echo(
        f"members:  {reply.members_alive} alive, {reply.members_suspect} suspect, "
        f"{reply.members_dead} dead, {reply.members_left} left"
    )


# ---------------------------------------------------------------------------
# Files


def _check_name(name: str) -> str:
    from p2pfs.storage import BadName, validate_name

    try:
        return validate_name(name)
    except BadName as exc:
        raise UserError(f"bad name {name!r}: {exc}", ExitCode.BAD_INPUT) from None


def _open_source(path: str) -> tuple[Any, int]:
    """The file to put and its size (-1 for stdin), with errors a person can act on."""
    import os

    if path == "-":
        return sys.stdin.buffer, -1
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file", ExitCode.BAD_INPUT) from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory; put takes one file", ExitCode.BAD_INPUT) from None
    except PermissionError:
        raise UserError(f"{path}: permission denied", ExitCode.BAD_INPUT) from None
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}", ExitCode.BAD_INPUT) from None
    info = os.fstat(f.fileno())
    import stat as stat_module

    if stat_module.S_ISDIR(info.st_mode):
        f.close()
        raise UserError(f"{path} is a directory; put takes one file", ExitCode.BAD_INPUT)
    size = info.st_size if stat_module.S_ISREG(info.st_mode) else -1
    return f, size


@cli.command()
@click.argument("path", metavar="PATH")
@click.option("--name", help="Name to store it under (default: PATH's file name; required for stdin).")
@pass_context
def put(ctx: Context, path: str, name: str | None) -> None:
    """Store a file (PATH, or - for stdin) in the cluster.

    Succeeds only when every chunk and the name are stored at the write quorum;
    otherwise the name is left as it was.
    """
    from p2pfs.client import Client, run
    from p2pfs.progress import Progress

    if name is None and path == "-":
        raise UserError("reading stdin needs --name NAME", ExitCode.BAD_INPUT)
    ident, node_address = ctx.client_identity(), ctx.node_address()
    source, size = _open_source(path)
    try:
        name = _check_name(Path(path).name if name is None else name)
    except UserError:
        source.close()
        raise
    progress = Progress(f"put {name}", size)

    async def go():
        async with Client.connect(ident, node_address) as c:
            return await c.put(source, name, size, progress)

    try:
        reply = run(go)
    finally:
        progress.finish()
        if source is not sys.stdin.buffer:
            source.close()
    click.echo(f"stored {reply.name}: {format_size(reply.size_bytes)} in {reply.chunks} chunk(s), "
               f"blake3 {reply.file_hash.hex()[:16]}")


def _default_output(name: str) -> Path:
    """``get NAME`` without -o writes the last part of NAME in the current directory.

    Only the part after the last '/' is used, and never '.', '..' or an empty
    string, so no name can lead a get outside the current directory.
    """
    base = name.rsplit("/", 1)[-1]
    if base in ("", ".", "..") or "\0" in base:
        raise UserError(f"cannot make a file name from {name!r}; give -o PATH", ExitCode.BAD_INPUT)
    return Path(base)


@cli.command()
@click.argument("name")
@click.option("-o", "--output", metavar="PATH",
              help="Where to write (default: NAME's last part, in this directory; - for stdout).")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@pass_context
def get(ctx: Context, name: str, output: str | None, force: bool) -> None:
    """Fetch a file, verified against its hash.

    The file is written to a temporary file beside PATH and renamed into place
    only when every byte has arrived and matched, so a failed get leaves nothing.
    """
    import os
    import tempfile

    from p2pfs.client import Client, run
    from p2pfs.progress import Progress

    name = _check_name(name)
    ident, node_address = ctx.client_identity(), ctx.node_address()
    progress = Progress(f"get {name}", None)

    async def fetch(sink) -> Any:
        async with Client.connect(ident, node_address) as c:
            return await c.get(name, sink, progress, on_size=progress.set_total)

    if output == "-":
        try:
            run(fetch, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        finally:
            progress.finish()
        return
    target = Path(output) if output else _default_output(name)
    if target.is_dir():
        raise UserError(f"{target} is a directory; give a file path with -o", ExitCode.BAD_INPUT)
    if target.exists() and not force:
        raise UserError(f"{target} exists; use --force to overwrite it", ExitCode.BAD_INPUT)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".p2pfs-part", dir=directory)
    except FileNotFoundError:
        raise UserError(f"directory {directory} does not exist", ExitCode.BAD_INPUT) from None
    except PermissionError:
        raise UserError(f"cannot write in {directory}: permission denied", ExitCode.BAD_INPUT) from None
    try:
        with os.fdopen(fd, "wb") as sink:
            header = run(fetch, sink)
            sink.flush()
            os.fsync(sink.fileno())
        if target.exists() and not force:
            raise UserError(f"{target} appeared meanwhile; use --force to overwrite it", ExitCode.BAD_INPUT)
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    finally:
        progress.finish()
    click.echo(f"wrote {target}: {format_size(header.size_bytes)}, verified", err=True)


def _version_text(wall_ms: int, logical: int) -> str:
    stamp = datetime.datetime.fromtimestamp(wall_ms / 1000, datetime.timezone.utc)
    return f"{stamp:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + f"Z+{logical}"


@cli.command()
@click.argument("prefix", default="")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def ls(ctx: Context, prefix: str, as_json: bool) -> None:
    """List stored files (optionally those whose name starts with PREFIX)."""
    reply = _call(ctx, "ls", prefix)
    if as_json:
        click.echo(json.dumps({"complete": reply.complete,
                               "files": [dataclasses.asdict(f) for f in reply.files]}, indent=2))
    else:
        _table([[format_size(f.size_bytes), _version_text(f.version_wall_ms, f.version_logical), f.name]
                for f in reply.files], ["SIZE", "VERSION", "NAME"])
    if not reply.complete:
        click.echo("warning: some nodes could not be asked; the list may be incomplete", err=True)


@cli.command()
@click.argument("name")
@pass_context
def rm(ctx: Context, name: str) -> None:
    """Delete a file (a tombstone that wins over older versions everywhere)."""
    name = _check_name(name)
    _call(ctx, "rm", name)
    click.echo(f"removed {name}")


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def stat(ctx: Context, name: str, as_json: bool) -> None:
    """Show a file: size, hash, version, and each chunk with the nodes holding it."""
    name = _check_name(name)
    reply = _call(ctx, "stat", name)
    facts = {
        "name": reply.name,
        "size_bytes": reply.size_bytes,
        "file_hash": reply.file_hash.hex(),
        "created_ms": reply.created_ms,
        "version": {"wall_ms": reply.version_wall_ms, "logical": reply.version_logical,
                    "writer": reply.writer},
        "chunks": [{"chunk_id": c.chunk_id.hex(), "size_bytes": c.size_bytes, "replicas": list(c.replicas)}
                   for c in reply.chunks],
    }
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    click.echo(f"name:     {reply.name}")
    click.echo(f"size:     {format_size(reply.size_bytes)} ({reply.size_bytes} bytes)")
    click.echo(f"blake3:   {reply.file_hash.hex()}")
    click.echo(f"version:  {_version_text(reply.version_wall_ms, reply.version_logical)} "
               f"by {reply.writer[:12]}")
    click.echo(f"chunks:   {len(reply.chunks)}")
    for index, chunk in enumerate(reply.chunks):
        holders = " ".join(r[:12] for r in chunk.replicas) or "NONE"
        click.echo(f"  {index:5d} {chunk.chunk_id.hex()[:16]} {format_size(chunk.size_bytes):>10}  {holders}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def fsck(ctx: Context, as_json: bool) -> None:
    """Check the cluster's replication health (as the node's ring sees it).

    Counts names and chunks checked, under-replicated (fewer than rf live
    copies), misplaced (enough copies, not yet on the nodes that own them),
    over-replicated, missing and corrupt. Exits 1 when data is at risk
    (anything under-replicated, missing or corrupt, or a node that did not
    answer); 0 otherwise.
    """
    reply = _call(ctx, "fsck")
    at_risk = bool(
        reply.names_under_replicated or reply.chunks_under_replicated or reply.chunks_missing
        or reply.chunks_corrupt or reply.nodes_unreachable
    )
    facts = dataclasses.asdict(reply)
    facts["at_risk"] = at_risk
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        click.echo(f"nodes asked:        {reply.nodes_asked} ({len(reply.nodes_unreachable)} unreachable)")
        click.echo(f"names checked:      {reply.names_checked}")
        click.echo(f"chunks checked:     {reply.chunks_checked}")
        click.echo(f"under-replicated:   {reply.names_under_replicated} names, "
                   f"{reply.chunks_under_replicated} chunks")
        click.echo(f"over-replicated:    {reply.names_over_replicated} names, "
                   f"{reply.chunks_over_replicated} chunks")
        click.echo(f"misplaced:          {reply.names_misplaced} names, "
                   f"{reply.chunks_misplaced} chunks (enough copies; moving to their owners)")
        click.echo(f"missing chunks:     {reply.chunks_missing}")
        click.echo(f"corrupt chunks:     {reply.chunks_corrupt}")
        for problem in reply.problems:
            click.echo(f"  {problem.kind} {problem.what[:-1]} {problem.key[:40]} "
                       f"held by [{' '.join(h[:12] for h in problem.holders)}] "
                       f"wanted on [{' '.join(w[:12] for w in problem.wanted)}]")
        click.echo("status:             " + ("DATA AT RISK" if at_risk else "healthy"))
    if at_risk:
        ctx_exit = click.get_current_context()
        ctx_exit.exit(int(ExitCode.FAILURE))


@cli.command()
@pass_context
def leave(ctx: Context) -> None:
    """Ask the node to hand its data to the other nodes, leave the cluster and exit."""
    _call(ctx, "leave")
    click.echo(f"{ctx.node_address()} is handing off its data and will leave (see its log)")


# ---------------------------------------------------------------------------
# The local test network


@cli.group()
def testnet() -> None:
    """A real multi-process network on this machine (127.0.0.1)."""


_DIR_OPTION = click.option("--dir", "directory", required=True, metavar="DIR",
                           type=click.Path(path_type=Path, file_okay=False),
                           help="Directory holding the network's identities, data and logs.")


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
def testnet_up(directory: Path, nodes: int, base_port: int, dead_grace_s: float | None,
               settings: tuple[str, ...]) -> None:
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
            raise UserError("--dead-grace-s cannot be negative", ExitCode.BAD_INPUT)
        overrides.setdefault("replication", {})["dead_grace_s"] = dead_grace_s
    procs = tn.up(directory, nodes, base_port, overrides=overrides,
                  progress=lambda s: click.echo(s, err=True))
    click.echo(f"{len(procs)} nodes up; point the CLI at the network with:", err=True)
    click.echo(f"export P2PFS_IDENTITY={(directory / tn.CLIENT_DIR).resolve()}")
    click.echo(f"export P2PFS_NODE={procs[0].address}")
    if procs[0].status_page:
        click.echo(f"status page: {procs[0].status_page}", err=True)


@testnet.command("add")
@_DIR_OPTION
@click.option("--nodes", default=1, show_default=True, help="Number of nodes to add.")
def testnet_add(directory: Path, nodes: int) -> None:
    """Add nodes to a running network (next names and ports, the same settings) and start them."""
    from p2pfs import testnet as tn

    added = tn.add(directory, nodes, progress=lambda s: click.echo(s, err=True))
    for proc in added:
        click.echo(f"{proc.name} {proc.node_id[:12]} {proc.address} running")


@testnet.command("status")
@_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def testnet_status(directory: Path, as_json: bool) -> None:
    """Each node: name, node id, address, pid, running."""
    from p2pfs import testnet as tn

    procs = tn.status(directory)
    if as_json:
        click.echo(json.dumps([p.as_json() for p in procs], indent=2))
        return
    _table([[p.name, p.node_id[:12], str(p.address), str(p.pid or "-"), "yes" if p.running else "no"]
            for p in procs], ["NAME", "NODE", "ADDRESS", "PID", "RUNNING"])


@testnet.command("stop")
@_DIR_OPTION
@click.argument("name")
@click.option("--kill", is_flag=True, help="SIGKILL instead of SIGTERM.")
def testnet_stop(directory: Path, name: str, kill: bool) -> None:
    """Stop node NAME (e.g. node3) without leaving the cluster (SIGTERM), or SIGKILL it with --kill.

    To decommission it instead, `p2pfs --node ADDRESS leave`."""
    from p2pfs import testnet as tn

    node_dir = tn.resolve_node(directory, name)
    if tn.stop_node(node_dir, kill=kill):
        click.echo(f"{node_dir.name} {'killed' if kill else 'stopped'}")
    else:
        click.echo(f"{node_dir.name} was not running")


@testnet.command("start")
@_DIR_OPTION
@click.argument("name")
def testnet_start(directory: Path, name: str) -> None:
    """Start node NAME again, with its identity and data."""
    from p2pfs import testnet as tn

    node_dir = tn.resolve_node(directory, name)
    pid = tn.start_node(node_dir)
    click.echo(f"{node_dir.name} running (pid {pid})")


@testnet.command("down")
@_DIR_OPTION
def testnet_down(directory: Path) -> None:
    """Stop every node; no process is left behind. Identities and data stay in DIR.

    Nodes stop without leaving the cluster, so `testnet up` brings the same cluster back.
    """
    from p2pfs import testnet as tn

    stopped = tn.down(directory)
    click.echo(f"stopped {len(stopped)} node(s)")


def main() -> None:
    cli(prog_name="p2pfs")


if __name__ == "__main__":
    sys.exit(main())
