"""The ``p2pfs`` command line: a thin shell over the rooms and the client library.

Output for people goes to stdout via ``click.echo``; ``--json`` gives machines
the same facts. Errors go to stderr as one line with an exit code from
``ExitCode``: the library raises the classes of ``p2pfs.errors`` and only this
module knows exit codes. A traceback only ever means a bug.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import errno
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from p2pfs import __version__, errors
from p2pfs.address import Address, parse_address
from p2pfs.config import CONFIG_FILE, NodeSettings, format_size, format_size_exact, parse_size
from p2pfs.errors import BadInput

# Start-up time: `p2pfs --help` and the cluster commands must feel instant, so this
# module imports only click and the small modules above. trio, cryptography (via
# p2pfs.identity), the network and the daemon's rooms are imported inside the
# commands that need them.
if TYPE_CHECKING:
    from p2pfs import identity

CLIENT_CONFIG_FILE = "client.toml"


class ExitCode(enum.IntEnum):
    """The CLI's exit statuses, documented in README.md."""

    OK = 0
    FAILURE = 1
    BAD_INPUT = 2
    NOT_FOUND = 3
    UNAVAILABLE = 4
    AUTH = 5
    STORAGE_FULL = 6
    LOCAL_DISK = 7


@dataclasses.dataclass(slots=True)
class Context:
    """What the global options select: who speaks, and to which node."""

    identity_dir: Path | None
    node: Address | None

    def client_identity(self) -> "identity.Identity":
        from p2pfs import identity

        if self.identity_dir is None:
            raise BadInput(
                "no identity given: pass --identity DIR or set P2PFS_IDENTITY "
                "(create one with `p2pfs client init DIR --ca CA_DIR`)"
            )
        return identity.load_identity(self.identity_dir)

    def node_address(self) -> Address:
        if self.node is not None:
            return self.node
        if self.identity_dir is not None:
            saved = _read_client_config(self.identity_dir).get("node")
            if saved:
                return parse_address(saved)
        raise BadInput("no node given: pass --node HOST:PORT or set P2PFS_NODE")


def _read_client_config(directory: Path) -> dict[str, Any]:
    import tomllib

    path = directory / CLIENT_CONFIG_FILE
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"cannot read {path}: {exc}") from None


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


def _escaped(text: str) -> str:
    """``text`` with every non-printable character (control characters, terminal escape
    sequences, invisible formatting like U+202E) written as a Python escape, so that
    nothing a name or a peer's message holds can move the cursor or recolour the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _shown(text: str) -> str:
    """A name or path for text output: as it is if that is unambiguous, else a quoted
    Python string literal (control characters escaped, and backslashes, so that a
    literal backslash is not mistaken for an escape)."""
    if text.isprintable() and "\\" not in text and text[:1] not in ("'", '"'):
        return text
    return repr(text)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


# Exit codes for the library's error classes, most specific first (documented in README.md).
_EXIT_CODES: tuple[tuple[type[errors.P2pfsError], ExitCode], ...] = (
    (errors.StorageFull, ExitCode.STORAGE_FULL),
    (errors.LocalStorageError, ExitCode.LOCAL_DISK),
    (errors.BadInput, ExitCode.BAD_INPUT),
    (errors.NotFound, ExitCode.NOT_FOUND),
    (errors.Unavailable, ExitCode.UNAVAILABLE),
    (errors.AuthError, ExitCode.AUTH),
)


def exit_code_for(exc: errors.P2pfsError) -> ExitCode:
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return ExitCode.FAILURE


_JSON_META_KEY = "p2pfs.json"


def _remember_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[_JSON_META_KEY] = True  # ctx.meta is shared with the group, which reports errors
    return value


# Every command's --json: its answer as one JSON object on stdout (docs/CLI.md gives each
# command's), and an error as one object on stderr. Eager, so that it is known before
# any other option can fail.
_JSON_OPTION = click.option(
    "--json", "as_json", is_flag=True, is_eager=True, callback=_remember_json,
    help="Machine-readable output: one JSON object (an error too, on stderr).",
)


def _emit(facts: Any, *, err: bool = False) -> None:
    click.echo(json.dumps(facts, indent=2, ensure_ascii=True), err=err)


def _time_facts(prefix: str, wall_ms: int) -> dict[str, Any]:
    """A time as both epoch milliseconds (``PREFIX_ms``) and ISO 8601 UTC (``PREFIX_at``)."""
    stamp = datetime.datetime.fromtimestamp(wall_ms / 1000, datetime.timezone.utc)
    return {f"{prefix}_ms": wall_ms, f"{prefix}_at": stamp.isoformat(timespec="milliseconds")}


def _drop_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so that what is still buffered for a
    reader that has gone away is discarded instead of failing again at exit."""
    import os

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # not a real file (tests' CliRunner)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()


class _Group(click.Group):
    """Turns P2pfsError into a one-line message on stderr and its exit code.

    trio's nurseries wrap what escapes them in exception groups; a group made
    only of P2pfsErrors (or interrupts) is reported like a single one.

    When the reader of stdout goes away (``p2pfs stat NAME | head -1``), the
    command ends quietly with exit 0, whatever it had left to write: the reader
    took what it wanted, and a non-zero status would fail every ``cmd | head``
    under ``set -o pipefail``. (A command that had already decided on another
    exit code, like fsck finding data at risk, keeps it.) Only writes to local
    files and pipes raise BrokenPipeError; trio reports a closed socket as
    BrokenResourceError, so this never hides a network failure.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            try:
                result = super().invoke(ctx)
            except click.exceptions.Exit:
                _flush_stdout()
                raise
            _flush_stdout()
            return result
        except BrokenPipeError:
            self._output_closed(ctx)
        except errors.P2pfsError as exc:
            self._fail(ctx, exc)
        except KeyboardInterrupt:
            self._interrupted(ctx)
        except BaseExceptionGroup as group:
            leaves = _leaves(group)
            if any(isinstance(e, BrokenPipeError) for e in leaves):
                self._output_closed(ctx)
            if leaves and all(isinstance(e, KeyboardInterrupt) for e in leaves):
                self._interrupted(ctx)
            failures = [e for e in leaves if isinstance(e, errors.P2pfsError)]
            if len(failures) != len(leaves):
                raise
            self._fail(ctx, failures[0])

    @staticmethod
    def _output_closed(ctx: click.Context) -> None:
        _drop_stdout()
        ctx.exit(0)

    @staticmethod
    def _fail(ctx: click.Context, exc: errors.P2pfsError) -> None:
        code = exit_code_for(exc)
        if ctx.meta.get(_JSON_META_KEY):
            _emit({"error": code.name.lower(), "message": str(exc), "exit_code": int(code)}, err=True)
        else:
            click.echo(f"error: {_escaped(str(exc))}", err=True)
        ctx.exit(int(code))

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
@_JSON_OPTION
def ca_init(directory: Path, as_json: bool) -> None:
    """Create a cluster CA in DIR (its private key is written 0600).

    Refuses to overwrite an existing CA. Keep DIR safe: whoever holds ca.key can
    admit nodes and clients to the cluster.
    """
    from p2pfs import identity

    authority = identity.init_ca(directory)
    if as_json:
        _emit({"directory": str(directory), "cluster_id": authority.cluster_id.hex()})
        return
    click.echo(f"created CA in {_shown(str(directory))}")
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
@click.option("--data", "data_dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("data"), show_default=True,
              help="Data directory (relative to DIR unless absolute).")
@_JSON_OPTION
def node_init(directory: Path, ca_dir: Path, listen: Address, seeds: tuple[Address, ...],
              zone: str, capacity_bytes: int, data_dir: Path, as_json: bool) -> None:
    """Create a node identity and a documented config file DIR/p2pfs.toml."""
    if listen.port == 0:
        raise BadInput("--listen needs a fixed port, not 0")
    if capacity_bytes <= 0:
        raise BadInput("--capacity must be more than 0")
    if (directory / CONFIG_FILE).exists():
        raise BadInput(f"{directory / CONFIG_FILE} already exists; refusing to overwrite it")
    try:
        settings = NodeSettings(listen=listen, seeds=seeds, zone=zone, capacity_bytes=capacity_bytes,
                                data_dir=data_dir)
    except ValueError as exc:  # checked before anything is written
        raise BadInput(str(exc)) from None
    from p2pfs import identity
    from p2pfs.node.config import render_node_config
    from p2pfs.wire import Role

    authority = identity.load_ca(ca_dir)
    ident = identity.create_identity(directory, authority, Role.NODE)
    (directory / CONFIG_FILE).write_text(render_node_config(settings))
    if as_json:
        _emit({"node_id": ident.node_id, "directory": str(directory), "config": str(directory / CONFIG_FILE),
               "address": str(listen)})
        return
    click.echo(f"created node {ident.node_id} in {_shown(str(directory))}")
    click.echo(f"start it with: p2pfs daemon {_shown(str(directory))}")


@cli.group()
def client() -> None:
    """Client identities (for the CLI)."""


@client.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="DIR")
@_CA_OPTION
@click.option("--node", "node_address", type=ADDRESS, default=None,
              help="Node this client talks to by default.")
@_JSON_OPTION
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
        _emit({"node_id": ident.node_id, "directory": str(directory),
               "address": str(node_address) if node_address else None})
        return
    click.echo(f"created client {ident.node_id[:12]} in {_shown(str(directory))}")
    click.echo(f"use it with: export P2PFS_IDENTITY={directory.resolve()}")


@cli.command("whoami")
@click.argument("directory", required=False, type=click.Path(path_type=Path, file_okay=False),
                metavar="[DIR]")
@_JSON_OPTION
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
        **_time_facts("not_valid_before", int(ident.cert.not_valid_before_utc.timestamp() * 1000)),
        **_time_facts("not_valid_after", int(ident.cert.not_valid_after_utc.timestamp() * 1000)),
        "directory": str(directory),
    }
    if as_json:
        _emit(facts)
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

    Logs go to stderr. SIGTERM or SIGINT make the node hand its data to the
    other nodes, leave the cluster and exit 0; SIGUSR2 stops it at once without
    leaving (it rejoins with its data when started again).
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
    setup_logging(cfg.node.log_level, ident.node_id[:12])
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
@_JSON_OPTION
@pass_context
def members(ctx: Context, as_json: bool) -> None:
    """List the cluster's members as the node sees them."""
    found = _call(ctx, "members")
    if as_json:
        _emit([{**dataclasses.asdict(mb), "address": f"{mb.host}:{mb.port}"} for mb in found])
        return
    _table(
        [[mb.node_id[:12], f"{mb.host}:{mb.port}", mb.state, str(mb.incarnation), _shown(mb.zone) or "-",
          format_size(mb.capacity_bytes)] for mb in found],
        ["NODE", "ADDRESS", "STATE", "INCARNATION", "ZONE", "CAPACITY"],
    )


@cli.command()
@_JSON_OPTION
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Show the node: id, address, uptime, members by state, version."""
    reply = _call(ctx, "status")
    facts = {**dataclasses.asdict(reply), "address": f"{reply.host}:{reply.port}"}
    if as_json:
        _emit(facts)
        return
    click.echo(f"node:     {reply.node_id}")
    click.echo(f"address:  {reply.host}:{reply.port}")
    click.echo(f"version:  {reply.version}")
    click.echo(f"uptime:   {reply.uptime_s:.0f} s")
    click.echo(f"zone:     {_shown(reply.zone) or '-'}")
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
        raise BadInput(f"bad name {name!r}: {exc}") from None


def _open_source(path: str) -> tuple[Any, int]:
    """The file to put and its size (-1 for stdin), with errors a person can act on."""
    import os

    if path == "-":
        return sys.stdin.buffer, -1
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{path} is a directory; put takes one file") from None
    except PermissionError:
        raise BadInput(f"{path}: permission denied") from None
    except OSError as exc:
        raise BadInput(f"{path}: {exc.strerror}") from None
    info = os.fstat(f.fileno())
    import stat as stat_module

    if stat_module.S_ISDIR(info.st_mode):
        f.close()
        raise BadInput(f"{path} is a directory; put takes one file")
    size = info.st_size if stat_module.S_ISREG(info.st_mode) else -1
    return f, size


@cli.command()
@click.argument("path", metavar="PATH")
@click.option("--name", help="Name to store it under (default: PATH's file name; required for stdin).")
@_JSON_OPTION
@pass_context
def put(ctx: Context, path: str, name: str | None, as_json: bool) -> None:
    """Store a file (PATH, or - for stdin) in the cluster.

    Succeeds only when every chunk and the name are stored at the write quorum;
    otherwise the name is left as it was.
    """
    from p2pfs.client import Client, run
    from p2pfs.progress import Progress

    if name is None and path == "-":
        raise BadInput("reading stdin needs --name NAME")
    ident, node_address = ctx.client_identity(), ctx.node_address()
    source, size = _open_source(path)
    try:
        name = _check_name(Path(path).name if name is None else name)
    except BadInput:
        source.close()
        raise
    progress = Progress(f"put {_shown(name)}", size, enabled=False if as_json else None)

    async def go():
        async with Client.connect(ident, node_address) as c:
            return await c.put(source, name, size, progress)

    try:
        reply = run(go)
    finally:
        progress.finish()
        if source is not sys.stdin.buffer:
            source.close()
    if as_json:
        _emit({"name": reply.name, "size_bytes": reply.size_bytes, "file_hash": reply.file_hash.hex(),
               "chunks": reply.chunks, "version": {"logical": reply.version_logical,
                                                   **_time_facts("wall", reply.version_wall_ms)}})
        return
    click.echo(f"stored {_shown(reply.name)}: {format_size(reply.size_bytes)} in {reply.chunks} chunk(s), "
               f"blake3 {reply.file_hash.hex()[:16]}")


def _default_output(name: str) -> Path:
    """``get NAME`` without -o writes the last part of NAME in the current directory.

    Only the part after the last '/' is used, and never '.', '..' or an empty
    string, so no name can lead a get outside the current directory.
    """
    base = name.rsplit("/", 1)[-1]
    if base in ("", ".", "..") or "\0" in base:
        raise BadInput(f"cannot make a file name from {name!r}; give -o PATH")
    return Path(base)


# Errors of the path the user chose (fix the path, exit 2); any other OSError while
# writing is the local disk's (full, quota, read-only, I/O error: exit 7).
_PATH_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM,
                          errno.ENAMETOOLONG, errno.ELOOP})


def _local_file_error(path: str, exc: OSError) -> errors.P2pfsError:
    text = f"cannot write {_shown(path)}: {exc.strerror or exc}"
    if exc.errno in _PATH_ERRNOS:
        return BadInput(text)
    return errors.LocalStorageError(text)


class _Output:
    """The file a get writes to; an OSError becomes one clear line naming the path.

    A closed pipe (BrokenPipeError) passes through: the reader went away, which
    ``_Group`` ends quietly.
    """

    def __init__(self, file: Any, shown_path: str) -> None:
        self._file = file
        self.path = shown_path

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _local_file_error(self.path, exc) from None

    def finish(self, *, sync: bool) -> None:
        """Flush (and fsync, for a file about to be renamed into place)."""
        import os

        try:
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _local_file_error(self.path, exc) from None


@contextlib.contextmanager
def _closed_quietly(file: Any) -> Any:
    """Close ``file`` on the way out without letting close's flush of what a failed
    write left buffered replace the error that is already on its way."""
    try:
        yield file
    finally:
        with contextlib.suppress(OSError):
            file.close()


def _umask() -> int:
    import os

    mask = os.umask(0o022)  # reading the umask means setting it; set it straight back
    os.umask(mask)
    return mask


@cli.command()
@click.argument("name")
@click.option("-o", "--output", metavar="PATH",
              help="Where to write (default: NAME's last part, in this directory; - for stdout).")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@_JSON_OPTION
@pass_context
def get(ctx: Context, name: str, output: str | None, force: bool, as_json: bool) -> None:
    """Fetch a file, verified against its hash.

    A regular file is written to a temporary file beside PATH and renamed into
    place only when every byte has arrived and matched, so a failed get leaves
    nothing; it gets the mode an existing PATH had, or 0666 less the umask. A
    symbolic link is followed: its target gets the file. A FIFO or a character
    device (/dev/null, /dev/stdout) is written through as the bytes arrive, like
    `-o -`; a block device only with --force.
    """
    import os
    import stat as stat_module
    import tempfile

    from p2pfs.client import Client, run
    from p2pfs.progress import Progress

    name = _check_name(name)
    ident, node_address = ctx.client_identity(), ctx.node_address()
    progress = Progress(f"get {_shown(name)}", None, enabled=False if as_json else None)

    async def fetch(sink: _Output) -> Any:
        async with Client.connect(ident, node_address) as c:
            return await c.get(name, sink, progress, on_size=progress.set_total)

    def write_through(file: Any, shown_path: str) -> Any:
        sink = _Output(file, shown_path)
        try:
            header = run(fetch, sink)
            sink.finish(sync=False)
        finally:
            progress.finish()
        return header

    def report(header: Any, path: str) -> None:
        """What was written: on stderr, since stdout may hold the file itself (-o -)."""
        if as_json:
            _emit({"name": header.name, "size_bytes": header.size_bytes, "file_hash": header.file_hash.hex(),
                   "path": path}, err=True)
        elif path != "-":
            click.echo(f"wrote {_shown(path)}: {format_size(header.size_bytes)}, verified", err=True)

    if output == "-":
        report(write_through(sys.stdout.buffer, "stdout"), "-")
        return
    target = Path(output) if output else _default_output(name)
    if target.is_symlink():
        target = Path(os.path.realpath(target))  # write through the link: it stays a link
    try:
        info = target.stat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise _local_file_error(str(target), exc) from None
    mode = info.st_mode if info else 0
    if info and stat_module.S_ISDIR(mode):
        raise BadInput(f"{_shown(str(target))} is a directory; give a file path with -o")
    if info and (stat_module.S_ISCHR(mode) or stat_module.S_ISFIFO(mode)
                 or (stat_module.S_ISBLK(mode) and force)):
        try:
            device = open(target, "wb")
        except OSError as exc:
            raise _local_file_error(str(target), exc) from None
        with _closed_quietly(device):
            header = write_through(device, str(target))
        report(header, str(target))
        return
    if info and stat_module.S_ISBLK(mode):
        raise BadInput(f"{_shown(str(target))} is a block device; use --force to write over it")
    if info and not stat_module.S_ISREG(mode):
        raise BadInput(f"{_shown(str(target))} is neither a file nor a device; give another path with -o")
    if info and not force:
        raise BadInput(f"{_shown(str(target))} exists; use --force to overwrite it")
    file_mode = stat_module.S_IMODE(mode) if info else 0o666 & ~_umask()
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".p2pfs-part", dir=directory)
    except FileNotFoundError:
        raise BadInput(f"directory {_shown(str(directory))} does not exist") from None
    except OSError as exc:
        raise _local_file_error(str(directory), exc) from None
    try:
        with _closed_quietly(os.fdopen(fd, "wb")) as file:
            sink = _Output(file, str(target))
            header = run(fetch, sink)
            sink.finish(sync=True)
            os.fchmod(file.fileno(), file_mode)  # mkstemp made it 0600
        if target.exists() and not force:
            raise BadInput(f"{_shown(str(target))} appeared meanwhile; use --force to overwrite it")
        try:
            os.replace(temp_name, target)
        except OSError as exc:
            raise _local_file_error(str(target), exc) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    finally:
        progress.finish()
    report(header, str(target))


@cli.command()
@click.argument("name")
@_JSON_OPTION
@click.pass_context
def cat(ctx: click.Context, name: str, as_json: bool) -> None:
    """Write a file to stdout, verified: short for `get NAME -o -`."""
    ctx.invoke(get, name=name, output="-", force=False, as_json=as_json)


def _version_text(wall_ms: int, logical: int) -> str:
    stamp = datetime.datetime.fromtimestamp(wall_ms / 1000, datetime.timezone.utc)
    return f"{stamp:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + f"Z+{logical}"


@cli.command()
@click.argument("prefix", default="")
@_JSON_OPTION
@pass_context
def ls(ctx: Context, prefix: str, as_json: bool) -> None:
    """List stored files (optionally those whose name starts with PREFIX)."""
    reply = _call(ctx, "ls", prefix)
    if as_json:
        _emit({"complete": reply.complete,
               "files": [{"name": f.name, "size_bytes": f.size_bytes, **_time_facts("created", f.created_ms),
                          "version": {"logical": f.version_logical, **_time_facts("wall", f.version_wall_ms)}}
                         for f in reply.files]})
    else:
        _table([[format_size(f.size_bytes), _version_text(f.version_wall_ms, f.version_logical), _shown(f.name)]
                for f in reply.files], ["SIZE", "VERSION", "NAME"])
    if not reply.complete:
        click.echo("warning: some nodes could not be asked; the list may be incomplete", err=True)


@cli.command()
@click.argument("name")
@_JSON_OPTION
@pass_context
def rm(ctx: Context, name: str, as_json: bool) -> None:
    """Delete a file (a tombstone that wins over older versions everywhere)."""
    name = _check_name(name)
    reply = _call(ctx, "rm", name)
    if as_json:
        _emit({"name": reply.name, "removed": True})
        return
    click.echo(f"removed {_shown(name)}")


@cli.command()
@click.argument("name")
@_JSON_OPTION
@pass_context
def stat(ctx: Context, name: str, as_json: bool) -> None:
    """Show a file: size, hash, version, and each chunk with the nodes holding it."""
    name = _check_name(name)
    reply = _call(ctx, "stat", name)
    facts = {
        "name": reply.name,
        "size_bytes": reply.size_bytes,
        "file_hash": reply.file_hash.hex(),
        **_time_facts("created", reply.created_ms),
        "version": {"logical": reply.version_logical, **_time_facts("wall", reply.version_wall_ms),
                    "writer": reply.writer},
        "chunks": [{"chunk_id": c.chunk_id.hex(), "size_bytes": c.size_bytes, "replicas": list(c.replicas)}
                   for c in reply.chunks],
    }
    if as_json:
        _emit(facts)
        return
    click.echo(f"name:     {_shown(reply.name)}")
    click.echo(f"size:     {format_size(reply.size_bytes)} ({reply.size_bytes} bytes)")
    click.echo(f"blake3:   {reply.file_hash.hex()}")
    click.echo(f"version:  {_version_text(reply.version_wall_ms, reply.version_logical)} "
               f"by {reply.writer[:12]}")
    click.echo(f"chunks:   {len(reply.chunks)}")
    for index, chunk in enumerate(reply.chunks):
        holders = " ".join(r[:12] for r in chunk.replicas) or "NONE"
        click.echo(f"  {index:5d} {chunk.chunk_id.hex()[:16]} {format_size(chunk.size_bytes):>10}  {holders}")


@cli.command()
@_JSON_OPTION
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
        _emit(facts)
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
            click.echo(f"  {problem.kind} {problem.what[:-1]} {_shown(problem.key[:40])} "
                       f"held by [{' '.join(h[:12] for h in problem.holders)}] "
                       f"wanted on [{' '.join(w[:12] for w in problem.wanted)}]")
        click.echo("status:             " + ("DATA AT RISK" if at_risk else "healthy"))
    if at_risk:
        ctx_exit = click.get_current_context()
        ctx_exit.exit(int(ExitCode.FAILURE))


@cli.command()
@_JSON_OPTION
@pass_context
def leave(ctx: Context, as_json: bool) -> None:
    """Ask the node to hand its data to the other nodes, leave the cluster and exit."""
    reply = _call(ctx, "leave")
    if as_json:
        _emit({"address": str(ctx.node_address()), "accepted": reply.accepted})
        return
    click.echo(f"{ctx.node_address()} is handing off its data and will leave (see its log)")


# ---------------------------------------------------------------------------
# The local test network


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
@_JSON_OPTION
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
        _emit({"nodes": [p.as_json() for p in procs],
               "env": {"P2PFS_IDENTITY": str((directory / tn.CLIENT_DIR).resolve()),
                       "P2PFS_NODE": str(procs[0].address)}})
        return
    click.echo(f"{len(procs)} nodes up; point the CLI at the network with:", err=True)
    click.echo(f"export P2PFS_IDENTITY={(directory / tn.CLIENT_DIR).resolve()}")
    click.echo(f"export P2PFS_NODE={procs[0].address}")


@testnet.command("add")
@_DIR_OPTION
@click.option("--nodes", default=1, show_default=True, help="Number of nodes to add.")
@_JSON_OPTION
def testnet_add(directory: Path, nodes: int, as_json: bool) -> None:
    """Add nodes to a running network (next names and ports, the same settings) and start them."""
    from p2pfs import testnet as tn

    added = tn.add(directory, nodes, progress=_progress_printer(as_json))
    if as_json:
        _emit({"nodes": [p.as_json() for p in added]})
        return
    for proc in added:
        click.echo(f"{proc.name} {proc.node_id[:12]} {proc.address} running")


@testnet.command("status")
@_DIR_OPTION
@_JSON_OPTION
def testnet_status(directory: Path, as_json: bool) -> None:
    """Each node: name, node id, address, pid, running."""
    from p2pfs import testnet as tn

    procs = tn.status(directory)
    if as_json:
        _emit([p.as_json() for p in procs])
        return
    _table([[p.name, p.node_id[:12], str(p.address), str(p.pid or "-"), "yes" if p.running else "no"]
            for p in procs], ["NAME", "NODE", "ADDRESS", "PID", "RUNNING"])


@testnet.command("stop")
@_DIR_OPTION
@click.argument("name")
@click.option("--kill", is_flag=True, help="SIGKILL instead of a graceful SIGTERM.")
@_JSON_OPTION
def testnet_stop(directory: Path, name: str, kill: bool, as_json: bool) -> None:
    """Stop node NAME (e.g. node3): a graceful leave (hand-off, then exit), or at once with --kill."""
    from p2pfs import testnet as tn

    node_dir = tn.resolve_node(directory, name)
    was_running = tn.stop_node(node_dir, kill=kill)
    if as_json:
        _emit({"name": node_dir.name, "was_running": was_running, "killed": kill})
        return
    if was_running:
        click.echo(f"{node_dir.name} {'killed' if kill else 'stopped'}")
    else:
        click.echo(f"{node_dir.name} was not running")


@testnet.command("start")
@_DIR_OPTION
@click.argument("name")
@_JSON_OPTION
def testnet_start(directory: Path, name: str, as_json: bool) -> None:
    """Start node NAME again, with its identity and data."""
    from p2pfs import testnet as tn

    node_dir = tn.resolve_node(directory, name)
    pid = tn.start_node(node_dir)
    if as_json:
        _emit({"name": node_dir.name, "pid": pid})
        return
    click.echo(f"{node_dir.name} running (pid {pid})")


@testnet.command("down")
@_DIR_OPTION
@_JSON_OPTION
def testnet_down(directory: Path, as_json: bool) -> None:
    """Stop every node; no process is left behind. Identities and data stay in DIR.

    Nodes stop without leaving the cluster, so `testnet up` brings the same cluster back.
    """
    from p2pfs import testnet as tn

    stopped = tn.down(directory)
    if as_json:
        _emit({"stopped": stopped})
        return
    click.echo(f"stopped {len(stopped)} node(s)")


def main() -> None:
    cli(prog_name="p2pfs")


if __name__ == "__main__":
    sys.exit(main())
