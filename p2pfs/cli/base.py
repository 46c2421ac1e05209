"""What every command shares: the global options, exit codes, error reporting, output helpers.

Output for people goes to stdout via ``click.echo``; ``--json`` gives machines
the same facts. Errors go to stderr as one line with an exit code from
``ExitCode``: the library raises the classes of ``p2pfs.errors`` and only the
CLI knows exit codes. A traceback only ever means a bug.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from p2pfs import __version__, errors
from p2pfs.address import Address, parse_address
from p2pfs.config import parse_size
from p2pfs.errors import BadInput


# Start-up time: `p2pfs --help` and the cluster commands must feel instant, so the
# CLI's modules import only click and the small modules above. trio, cryptography (via
# p2pfs.identity), the network and the daemon's rooms are imported inside the
# commands that need them.
if TYPE_CHECKING:
    from p2pfs import identity
    from p2pfs.client import Cluster
    from p2pfs.client import blocking

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
    nodes: tuple[Address, ...]

    def client_identity(self) -> "identity.Identity":
        from p2pfs import identity

        if self.identity_dir is None:
            raise BadInput(
                "no identity given: pass --identity DIR or set P2PFS_IDENTITY "
                "(create one with `p2pfs client init DIR --ca CA_DIR`)"
            )
        return identity.load_identity(self.identity_dir)

    def node_addresses(self) -> tuple[Address, ...]:
        """The nodes to try, in order: --node (or P2PFS_NODE), else the ones ``client init`` saved."""
        if self.nodes:
            return self.nodes
        if self.identity_dir is not None:
            from p2pfs.client.settings import saved_nodes

            saved = saved_nodes(self.identity_dir)
            if saved:
                return saved
        raise BadInput("no node given: pass --node HOST:PORT or set P2PFS_NODE")

    def node_address(self) -> Address:
        """The one node a command about one node (leave) speaks to."""
        nodes = self.node_addresses()
        if len(nodes) != 1:
            raise BadInput(f"this command asks one node; {len(nodes)} were given "
                           f"({', '.join(map(str, nodes))}): give one --node")
        return nodes[0]

    def cluster(self) -> "Cluster":
        """The cluster through the given nodes, remembering its members beside the identity."""
        from p2pfs.client import Cluster

        return Cluster(self.client_identity(), self.node_addresses(), remember_in=self.identity_dir)

    def blocking_cluster(self) -> "blocking.Cluster":
        """The same, for one-request commands (ls, stat, members, status, rm): the same rules over a
        plain socket, so that they start without loading trio (``p2pfs.client.blocking``)."""
        from p2pfs.client.blocking import Cluster

        return Cluster(self.client_identity(), self.node_addresses(), remember_in=self.identity_dir)


def parse_addresses(text: str) -> tuple[Address, ...]:
    """``HOST:PORT[,HOST:PORT...]``: several nodes to try, in order. (The library's
    ``p2pfs.client.settings`` reads the same form; this copy spares the option parser
    importing trio.)"""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise ValueError(f"empty address in {text!r}")
    return tuple(parse_address(part) for part in parts)


class ParsedType(click.ParamType):
    """An option value read by ``parse``; its ValueError becomes click's usage error (exit 2)."""

    def __init__(self, name: str, parse: Callable[[str], Any], parsed: type) -> None:
        self.name = name
        self._parse = parse
        self._parsed = parsed  # a value already of this type (a default) is kept as it is

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, self._parsed):
            return value
        try:
            return self._parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


ADDRESS = ParsedType("HOST:PORT", parse_address, Address)
# One or several comma-separated addresses (the global --node, which may also repeat).
ADDRESSES = ParsedType("HOST:PORT[,HOST:PORT...]", parse_addresses, tuple)
SIZE = ParsedType("SIZE", parse_size, int)
pass_context = click.make_pass_decorator(Context)


def escaped(text: str) -> str:
    """``text`` with every non-printable character (control characters, terminal escape
    sequences, invisible formatting like U+202E) written as a Python escape, so that
    nothing a name or a peer's message holds can move the cursor or recolour the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown(text: str) -> str:
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
JSON_OPTION = click.option(
    "--json", "as_json", is_flag=True, is_eager=True, callback=_remember_json,
    help="Machine-readable output: one JSON object (an error too, on stderr).",
)


def emit(facts: Any, *, err: bool = False) -> None:
    click.echo(json.dumps(facts, indent=2, ensure_ascii=True), err=err)


def time_facts(prefix: str, wall_ms: int) -> dict[str, Any]:
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


# The module of p2pfs.cli that registers each command, loaded when the command is asked
# for (click's lazy-loading pattern): `p2pfs ls` builds the click objects of files.py
# alone, not those of the admin, cluster and testnet commands (about 44 M instructions,
# 7 ms of CPU, docs/BENCHMARKS.md). tests/test_cli_startup.py checks this table against
# what the modules register.
COMMAND_MODULES = {
    "ca": "admin", "client": "admin", "crl": "admin", "daemon": "admin", "node": "admin", "reload": "admin",
    "whoami": "admin",
    "fsck": "cluster", "leave": "cluster", "members": "cluster", "status": "cluster",
    "cat": "files", "get": "files", "ls": "files", "put": "files", "rm": "files", "stat": "files",
    "testnet": "testnet",
}


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

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMAND_MODULES:
            importlib.import_module(f"p2pfs.cli.{COMMAND_MODULES[cmd_name]}")  # registers its commands
        return super().get_command(ctx, cmd_name)

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
            emit({"error": code.name.lower(), "message": str(exc), "exit_code": int(code)}, err=True)
        else:
            click.echo(f"error: {escaped(str(exc))}", err=True)
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
    "--node", "nodes", type=ADDRESSES, envvar="P2PFS_NODE", multiple=True, metavar="HOST:PORT[,...]",
    help="Node(s) to talk to, tried in order until one can do the operation; comma-separated, or "
         "repeat --node (env P2PFS_NODE; default: the ones saved by `client init --node`).",
)
@click.pass_context
def cli(ctx: click.Context, identity_dir: Path | None, nodes: tuple[tuple[Address, ...], ...]) -> None:
    """p2pfs: a peer-to-peer, gossip-based file store.

    Set up a cluster with `ca init`, `node init` and `client init`, run nodes
    with `daemon`, or start a whole local network with `testnet up`.
    """
    ctx.obj = Context(identity_dir, tuple(dict.fromkeys(address for group in nodes for address in group)))


def call(ctx: Context, method: str, *args: Any) -> Any:
    """Run a cluster operation, failing over between the given (and remembered) nodes."""
    from p2pfs.client import run

    cluster = ctx.cluster()
    return run(getattr(cluster, method), *args)


def call_blocking(ctx: Context, method: str, *args: Any) -> Any:
    """Run a one-request operation without trio, failing over as ``call`` does."""
    return getattr(ctx.blocking_cluster(), method)(*args)


def call_one(ctx: Context, method: str, *args: Any) -> Any:
    """Run an operation that concerns one node itself (leave): no failover."""
    from p2pfs.client import Client, run

    ident, node_address = ctx.client_identity(), ctx.node_address()

    async def go() -> Any:
        async with Client.connect(ident, node_address) as c:
            return await getattr(c, method)(*args)

    return run(go)


def table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    for row in [headers, *rows]:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
