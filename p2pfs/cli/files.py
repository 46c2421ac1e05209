"""Files: ``put``, ``get``, ``cat``, ``ls``, ``stat``, ``rm``."""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import sys
from pathlib import Path
from typing import Any

import click

from p2pfs import errors
from p2pfs.cli.base import (
    JSON_OPTION, Context, ExitCode, call_blocking, cli, emit, escaped, pass_context, shown, time_facts,
)
from p2pfs.config import format_size
from p2pfs.errors import BadInput


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
@click.option("--name", help="Name to store it under (default: PATH's file name; required for stdin). "
                             "With -r: the prefix of the names (default: the directory's name).")
@click.option("-r", "--recursive", is_flag=True,
              help="PATH is a directory: store each regular file under it as PREFIX/RELATIVE/PATH.")
@JSON_OPTION
@pass_context
def put(ctx: Context, path: str, name: str | None, recursive: bool, as_json: bool) -> None:
    """Store a file (PATH, or - for stdin) in the cluster.

    Succeeds only when every chunk and the name are stored at the write quorum;
    otherwise the name is left as it was. Chunks the cluster already holds (from
    an interrupted put of the same file) are not sent again.

    With -r, symbolic links and special files in the tree are skipped (never
    followed) and reported; a file that fails is reported and the others go on;
    the exit status is 1 if any failed.
    """
    from p2pfs.client import run
    from p2pfs.progress import Progress

    if recursive:
        from p2pfs.cli.tree import put_tree

        if path == "-":
            raise BadInput("put -r takes a directory, not stdin")
        put_tree(ctx, path, name, as_json)
        return
    if name is None and path == "-":
        raise BadInput("reading stdin needs --name NAME")
    cluster = ctx.cluster()
    source, size = _open_source(path)
    try:
        name = _check_name(Path(path).name if name is None else name)
    except BadInput:
        source.close()
        raise
    progress = Progress(f"put {shown(name)}", size, enabled=False if as_json else None)

    try:
        if source is sys.stdin.buffer:
            reply = run(cluster.put, source, name, size, progress)
            sent_bytes = reply.size_bytes
        else:  # a file: only the chunks the cluster lacks are sent (p2pfs/client/resume.py)
            stored = run(cluster.put_file, source, name, path, progress)
            reply, sent_bytes = stored.reply, stored.sent_bytes
    finally:
        progress.finish()
        if source is not sys.stdin.buffer:
            source.close()
    if as_json:
        emit({"name": reply.name, "size_bytes": reply.size_bytes, "file_hash": reply.file_hash.hex(),
               "chunks": reply.chunks, "version": {"logical": reply.version_logical,
                                                   **time_facts("wall", reply.version_wall_ms)},
               "sent_bytes": sent_bytes})
        return
    held = f", {format_size(reply.size_bytes - sent_bytes)} already held" if sent_bytes < reply.size_bytes else ""
    click.echo(f"stored {shown(reply.name)}: {format_size(reply.size_bytes)} in {reply.chunks} chunk(s), "
               f"blake3 {reply.file_hash.hex()[:16]}{held}")


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
    text = f"cannot write {shown(path)}: {exc.strerror or exc}"
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

    # A get retried at another node rewinds a file it had begun to write (a pipe it cannot).
    def seekable(self) -> bool:
        return self._file.seekable()

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int) -> int:
        return self._file.seek(offset)

    def truncate(self) -> int:
        return self._file.truncate()

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
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists (with -r: files in DIR).")
@click.option("-r", "--recursive", is_flag=True,
              help="NAME is a prefix: fetch every file named NAME/... into the directory -o DIR.")
@JSON_OPTION
@pass_context
def get(ctx: Context, name: str, output: str | None, force: bool, recursive: bool, as_json: bool) -> None:
    """Fetch a file, verified against its hash.

    With -r, each name NAME/REST is written to DIR/REST, and nothing outside
    DIR: names with empty, '.' or '..' parts are refused, and no symbolic link
    in DIR is followed. A file that fails is reported and the others go on; the
    exit status is 1 if any failed or the listing may be incomplete.

    A regular file is written to a partial file beside PATH (.PATH.p2pfs-part)
    and renamed into place only when every byte has arrived and matched; it gets
    the mode an existing PATH had, or 0666 less the umask. A get cut short (no
    node could serve it, Ctrl-C, killed) keeps its partial file and a note of
    the version it is a copy of (.PATH.p2pfs-resume): the same get run again
    fetches only the chunks still missing, unless the name now holds other
    content, which is then fetched from its start. Any other failure leaves
    nothing. A symbolic link is followed: its target gets the file. A FIFO or a
    character device (/dev/null, /dev/stdout) is written through as the bytes
    arrive, like `-o -`; a block device only with --force.
    """
    import os
    import stat as stat_module

    from p2pfs.client import run
    from p2pfs.progress import Progress

    if recursive:
        from p2pfs.cli.tree import get_tree

        if output is None or output == "-":
            raise BadInput("get -r needs -o DIR, the directory to write to")
        get_tree(ctx, name, output, force, as_json)
        return
    name = _check_name(name)
    cluster = ctx.cluster()
    progress = Progress(f"get {shown(name)}", None, enabled=False if as_json else None)

    async def fetch(sink: _Output) -> Any:
        return await cluster.get(name, sink, progress, on_size=progress.set_total)

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
        # A get to a file may resume (p2pfs/client/resume.py); one to a stream receives it all.
        received_bytes = getattr(header, "received_bytes", header.size_bytes)
        resumed_bytes = getattr(header, "resumed_bytes", 0)
        if as_json:
            emit({"name": header.name, "size_bytes": header.size_bytes, "file_hash": header.file_hash.hex(),
                   "path": path, "received_bytes": received_bytes, "resumed_bytes": resumed_bytes}, err=True)
        elif path != "-":
            resumed = f", resumed after {format_size(resumed_bytes)}" if resumed_bytes else ""
            click.echo(f"wrote {shown(path)}: {format_size(header.size_bytes)}, verified{resumed}", err=True)

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
        raise BadInput(f"{shown(str(target))} is a directory; give a file path with -o")
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
        raise BadInput(f"{shown(str(target))} is a block device; use --force to write over it")
    if info and not stat_module.S_ISREG(mode):
        raise BadInput(f"{shown(str(target))} is neither a file nor a device; give another path with -o")
    if info and not force:
        raise BadInput(f"{shown(str(target))} exists; use --force to overwrite it")
    file_mode = stat_module.S_IMODE(mode) if info else 0o666 & ~_umask()
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise BadInput(f"directory {shown(str(directory))} does not exist")

    def may_replace() -> None:
        if target.exists() and not force:
            raise BadInput(f"{shown(str(target))} appeared meanwhile; use --force to overwrite it")

    try:
        fetched = run(functools.partial(
            cluster.get_file, name, target, file_mode=file_mode, may_replace=may_replace, progress=progress,
            on_size=progress.set_total, local_error=_local_file_error,
        ))
    finally:
        progress.finish()
    report(fetched, str(target))


@cli.command()
@click.argument("name")
@JSON_OPTION
@click.pass_context
def cat(ctx: click.Context, name: str, as_json: bool) -> None:
    """Write a file to stdout, verified: short for `get NAME -o -`."""
    ctx.invoke(get, name=name, output="-", force=False, recursive=False, as_json=as_json)


def _version_text(wall_ms: int, logical: int) -> str:
    stamp = datetime.datetime.fromtimestamp(wall_ms / 1000, datetime.timezone.utc)
    return f"{stamp:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + f"Z+{logical}"


def _page_token(name: str) -> str:
    """Where a listing continues, as text safe to paste into a shell: the name in base64url."""
    import base64

    return base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii").rstrip("=")


def _name_after(token: str) -> str:
    import base64
    import binascii

    try:
        name = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadInput(f"--after {shown(token)} is not a token printed by ls") from None
    return _check_name(name)


def _ls_row(f: Any) -> str:
    # Fixed widths: pages are printed as they arrive, so columns cannot be sized to the whole list.
    return f"{format_size(f.size_bytes):>10}  {_version_text(f.version_wall_ms, f.version_logical):<27}  {shown(f.name)}"


def _ls_json_file(f: Any) -> str:
    import json

    facts = {"name": f.name, "size_bytes": f.size_bytes, **time_facts("created", f.created_ms),
             "version": {"logical": f.version_logical, **time_facts("wall", f.version_wall_ms)}}
    return "\n".join("    " + line for line in json.dumps(facts, indent=2, ensure_ascii=True).splitlines())


@cli.command()
@click.argument("prefix", default="")
@click.option("--limit", type=click.IntRange(min=1), metavar="N",
              help="List at most N files, then print where to continue (--after).")
@click.option("--after", "after_token", metavar="TOKEN", help="Continue a listing where --limit stopped it.")
@JSON_OPTION
@pass_context
def ls(ctx: Context, prefix: str, limit: int | None, after_token: str | None, as_json: bool) -> None:
    """List stored files (optionally those whose name starts with PREFIX), in name order.

    Files are printed page by page as the cluster answers, so any number of them
    streams through. If too few replicas of some part of the ring answered, names
    may be missing: ls says so (and why) and exits 4.
    """
    import json

    from p2pfs.client.listing import Listing

    cluster = ctx.blocking_cluster()
    after = _name_after(after_token) if after_token else ""
    listing = Listing()
    next_after = ""
    printed = 0  # files printed so far
    opened = False  # the head is printed with the first page: an error before it leaves stdout empty
    for page in cluster.ls_pages(prefix, after=after, limit=limit):
        listing.add(page)
        next_after = page.next_after
        if not opened:
            click.echo('{\n  "files": [' if as_json else f"{'SIZE':>10}  {'VERSION':<27}  NAME")
            opened = True
        for f in page.files:
            if as_json:
                click.echo(("" if printed == 0 else ",\n") + _ls_json_file(f), nl=False)
            else:
                click.echo(_ls_row(f))
            printed += 1
    token = _page_token(next_after) if next_after else None
    if as_json:
        click.echo(("\n" if printed else "") + "  ],\n" + json.dumps({
            "complete": listing.complete,
            "replicas_needed": listing.replicas_needed,
            "short_ring_fraction": listing.short_ring_fraction,
            "unanswered": [{"node_id": n, "reason": r} for n, r in sorted(listing.unanswered.items())],
            "next": token,
        }, indent=2, ensure_ascii=True)[2:])
    elif token is not None:
        click.echo(f"more files follow: continue with --after {token}", err=True)
    if not listing.complete:
        click.echo(f"warning: {escaped(listing.warning())}", err=True)
        click.get_current_context().exit(int(ExitCode.UNAVAILABLE))


@cli.command()
@click.argument("name")
@JSON_OPTION
@pass_context
def rm(ctx: Context, name: str, as_json: bool) -> None:
    """Delete a file (a tombstone that wins over older versions everywhere)."""
    name = _check_name(name)
    reply = call_blocking(ctx, "rm", name)
    if as_json:
        emit({"name": reply.name, "removed": True})
        return
    click.echo(f"removed {shown(name)}")


@cli.command()
@click.argument("name")
@JSON_OPTION
@pass_context
def stat(ctx: Context, name: str, as_json: bool) -> None:
    """Show a file: size, hash, version, and each chunk with the nodes holding it."""
    name = _check_name(name)
    reply = call_blocking(ctx, "stat", name)
    facts = {
        "name": reply.name,
        "size_bytes": reply.size_bytes,
        "file_hash": reply.file_hash.hex(),
        **time_facts("created", reply.created_ms),
        "version": {"logical": reply.version_logical, **time_facts("wall", reply.version_wall_ms),
                    "writer": reply.writer, "client": reply.writer_client or None},
        "chunks": [{"chunk_id": c.chunk_id.hex(), "size_bytes": c.size_bytes, "replicas": list(c.replicas)}
                   for c in reply.chunks],
    }
    if as_json:
        emit(facts)
        return
    click.echo(f"name:     {shown(reply.name)}")
    click.echo(f"size:     {format_size(reply.size_bytes)} ({reply.size_bytes} bytes)")
    click.echo(f"blake3:   {reply.file_hash.hex()}")
    click.echo(f"version:  {_version_text(reply.version_wall_ms, reply.version_logical)} "
               f"by {reply.writer[:12]}")
    click.echo(f"client:   {reply.writer_client or '(not recorded)'}")
    click.echo(f"chunks:   {len(reply.chunks)}")
    for index, chunk in enumerate(reply.chunks):
        holders = " ".join(r[:12] for r in chunk.replicas) or "NONE"
        click.echo(f"  {index:5d} {chunk.chunk_id.hex()[:16]} {format_size(chunk.size_bytes):>10}  {holders}")
