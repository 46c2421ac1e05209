"""Directories: a local tree stored as names under a prefix, and fetched back.

The cluster stores files under names, not directories: ``put_tree`` stores each
regular file of a tree as ``PREFIX/RELATIVE/PATH`` ('/'-separated), and
``get_tree`` writes each name under ``PREFIX/`` to ``DIR/RELATIVE/PATH``.

**Put.** The tree is walked without following symbolic links. A symbolic link
(to a file or a directory) is not stored and not followed: it is reported as
skipped, since following it could leave the tree, loop, or store one file twice.
FIFOs, sockets and devices are skipped the same way (reading a FIFO could block
for ever, and a device has no end). Empty directories are not stored: a
directory exists in the cluster only through the names under it. A file whose
name cannot be a cluster name (bytes that are not UTF-8) fails, and the others
go on.

**Get.** Nothing is written outside DIR. A name's part after the prefix is split
on '/', and a name is refused when a part is empty (a name with '//', or ending
in '/'), '.' or '..'. A name that is also a directory of other names (``a`` and
``a/b``) is refused, as is a name whose path crosses something in DIR that is
not a directory. No symbolic link inside DIR is followed: a directory on the way
must be a real directory, and a link where the file goes is replaced (with
``force``), never written through. DIR itself may be a link: it is the user's
choice. Each file is fetched like ``get`` to a path: verified, renamed into
place when complete, resumable (``resume.py``).

A file that fails is reported with its error and the others go on; the result
lists every file. At most ``TREE_FILES_MAX`` files per tree and
``TREE_TRANSFERS_CONCURRENT`` transfers at a time.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import trio

from p2pfs import errors

if TYPE_CHECKING:
    from p2pfs.client.failover import Cluster, LocalPath, Name

# Files one put_tree or get_tree handles; a larger tree is refused before anything
# moves (the walk and the results are held in memory). Equal to ls's cap today.
TREE_FILES_MAX = 100_000
# Files moving at once: enough to hide each file's round trips (a connection, a
# name read, the name's write at quorum) behind the others' bytes, few enough
# not to crowd the nodes or the local disk.
TREE_TRANSFERS_CONCURRENT = 4

TreeProgress = Callable[[int], None]


@dataclasses.dataclass(slots=True)
class FileOutcome:
    """One file of a tree: where it is, what it is called, and how it went."""

    path: str  # relative to the tree's directory, '/'-separated
    name: str  # in the cluster
    size_bytes: int
    file_hash: bytes | None = None  # None unless it succeeded
    error: str | None = None  # None if it succeeded
    network_bytes: int = 0  # sent (put) or received (get) over the network
    resumed_bytes: int = 0  # (get) kept from an earlier get's partial file

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass(frozen=True, slots=True)
class Skipped:
    path: str
    reason: str


@dataclasses.dataclass(slots=True)
class TreeResult:
    """Every file of a transfer of a tree; ``complete`` is False when the listing of
    the names (get) said some names may be missing."""

    directory: str
    prefix: str
    files: list[FileOutcome]
    skipped: list[Skipped] = dataclasses.field(default_factory=list)
    complete: bool = True

    @property
    def failed(self) -> list[FileOutcome]:
        return [f for f in self.files if not f.ok]

    @property
    def ok(self) -> bool:
        return not self.failed and self.complete

    @property
    def size_bytes(self) -> int:
        """Bytes of the files that succeeded."""
        return sum(f.size_bytes for f in self.files if f.ok)


def put_prefix(directory: Path, prefix: str | None) -> str:
    """'PREFIX/' (or '' for an empty prefix) before each relative path: by default the directory's name."""
    text = Path(os.path.abspath(directory)).name if prefix is None else os.fspath(prefix)
    text = text.rstrip("/")
    return f"{text}/" if text else ""


def walk(directory: Path) -> tuple[list[tuple[str, int]], list[Skipped], list[FileOutcome]]:
    """The regular files of a tree (relative path, size), what was skipped, and what could not be read."""
    found: list[tuple[str, int]] = []
    skipped: list[Skipped] = []
    unreadable: list[FileOutcome] = []

    def relative(path: str) -> str:
        return Path(os.path.relpath(path, directory)).as_posix()

    def on_error(exc: OSError) -> None:
        where = relative(exc.filename) if exc.filename else "."
        unreadable.append(FileOutcome(where, "", 0, error=f"cannot read directory {where}: {exc.strerror}"))

    for top, dirnames, filenames in os.walk(directory, onerror=on_error, followlinks=False):
        dirnames.sort()
        for entry in sorted(dirnames + filenames):
            path = os.path.join(top, entry)
            try:
                info = os.lstat(path)
            except OSError as exc:
                unreadable.append(FileOutcome(relative(path), "", 0, error=f"cannot read: {exc.strerror}"))
                continue
            if stat.S_ISDIR(info.st_mode):
                continue  # walked into
            if stat.S_ISLNK(info.st_mode):
                skipped.append(Skipped(relative(path), "symbolic link (not followed)"))
            elif stat.S_ISREG(info.st_mode):
                found.append((relative(path), info.st_size))
            else:
                skipped.append(Skipped(relative(path), "not a regular file (FIFO, socket or device)"))
            if len(found) > TREE_FILES_MAX:
                raise errors.BadInput(f"{directory} holds more than {TREE_FILES_MAX} files; put a smaller tree")
    return sorted(found), skipped, unreadable


async def put_tree(cluster: "Cluster", directory: "LocalPath", prefix: "Name | None" = None, *,
                   progress: TreeProgress = lambda n: None,
                   on_total: Callable[[int, int], None] = lambda files, size_bytes: None,
                   on_file: Callable[[FileOutcome], None] = lambda outcome: None) -> TreeResult:
    """Store every regular file under ``directory`` as ``PREFIX/RELATIVE/PATH`` (see the module).

    ``prefix`` defaults to the directory's own name; '' stores the relative paths
    themselves. ``on_total`` hears the number of files and their bytes once the tree
    is walked, ``on_file`` each file's outcome as it is known.
    """
    from p2pfs.client.failover import cluster_name

    root = Path(directory)
    if not root.is_dir():
        raise errors.BadInput(f"{root} is not a directory")
    head = put_prefix(root, None if prefix is None else os.fspath(prefix))
    found, skipped, unreadable = await trio.to_thread.run_sync(walk, root)
    outcomes = [FileOutcome(rel, head + rel, size) for rel, size in found]
    on_total(len(outcomes), sum(o.size_bytes for o in outcomes))

    async def one(outcome: FileOutcome) -> None:
        try:
            name = cluster_name(outcome.name)
            fd = os.open(root / outcome.path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as file:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise errors.BadInput(f"{outcome.path} is no longer a regular file")
                stored = await cluster.put_file(file, name, root / outcome.path, progress)
            outcome.file_hash, outcome.network_bytes = stored.file_hash, stored.sent_bytes
        except errors.P2pfsError as exc:
            outcome.error = str(exc)
        except OSError as exc:
            outcome.error = f"cannot read {outcome.path}: {exc.strerror or exc}"

    await _each(outcomes, one, on_file)
    for outcome in unreadable:
        on_file(outcome)
    return TreeResult(str(root), head, [*outcomes, *unreadable], skipped)


async def list_tree(cluster: "Cluster", prefix: str) -> tuple[list[tuple[str, int]], bool]:
    """The files (name, size) whose names start with ``prefix``, and whether the list is
    known complete (every page was). The one place get_tree lists names."""
    files: list[tuple[str, int]] = []
    complete = True
    async for page in cluster.ls_pages(prefix):
        files.extend((f.name, f.size_bytes) for f in page.files)
        complete = complete and page.complete
    return files, complete


def relative_path(name: str, prefix: str) -> str:
    """The local relative path of ``name`` under ``prefix`` ('' or ending in '/'); BadInput
    if it could lead anywhere but below the directory."""
    assert name.startswith(prefix)
    rest = name[len(prefix):]
    parts = rest.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise errors.BadInput(
                f"{name!r} cannot be a path below the directory (it has an empty, '.' or '..' part)"
            )
    return rest


def _directory_for(root: Path, relative: str) -> Path:
    """The directory ``relative``'s file goes in, created as needed; BadInput if a part
    of the way is a symbolic link or not a directory (nothing in the tree is followed)."""
    current = root
    for part in relative.split("/")[:-1]:
        current = current / part
        try:
            os.mkdir(current)
            continue
        except FileExistsError:
            pass
        info = os.lstat(current)
        if stat.S_ISLNK(info.st_mode):
            raise errors.BadInput(f"{current} is a symbolic link; it is not followed")
        if not stat.S_ISDIR(info.st_mode):
            raise errors.BadInput(f"{current} is not a directory")
    return current


async def get_tree(cluster: "Cluster", prefix: "Name", directory: "LocalPath", *, force: bool = False,
                   progress: TreeProgress = lambda n: None,
                   on_total: Callable[[int, int], None] = lambda files, size_bytes: None,
                   on_file: Callable[[FileOutcome], None] = lambda outcome: None) -> TreeResult:
    """Fetch every file named ``PREFIX/...`` into ``directory`` (see the module).

    An empty ``prefix`` fetches every file. Existing files are replaced only with
    ``force``. ``on_total`` hears the number of files and their bytes once listed.
    """
    text = os.fspath(prefix).rstrip("/")
    head = f"{text}/" if text else ""
    root = Path(directory)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.BadInput(f"cannot create {root}: {exc.strerror or exc}") from None
    if not root.is_dir():
        raise errors.BadInput(f"{root} is not a directory")
    listed, complete = await list_tree(cluster, head)
    listed = [(name, size) for name, size in listed if name.startswith(head)]
    if len(listed) > TREE_FILES_MAX:
        raise errors.BadInput(f"more than {TREE_FILES_MAX} files under {head!r}; get a longer prefix")
    outcomes: list[FileOutcome] = []
    refused: list[FileOutcome] = []
    for name, size in sorted(listed):
        try:
            outcomes.append(FileOutcome(relative_path(name, head), name, size))
        except errors.BadInput as exc:
            refused.append(FileOutcome("", name, size, error=str(exc)))
    directories = {"/".join(o.path.split("/")[:i]) for o in outcomes for i in range(1, o.path.count("/") + 1)}
    for outcome in outcomes:
        if outcome.path in directories:
            outcome.error = f"{outcome.path} is also the directory of other names; not written"
    on_total(len(outcomes), sum(o.size_bytes for o in outcomes if o.ok))

    async def one(outcome: FileOutcome) -> None:
        if outcome.error is not None:
            return
        try:
            target = _directory_for(root, outcome.path) / outcome.path.rsplit("/", 1)[-1]
            try:
                info = os.lstat(target)
            except FileNotFoundError:
                info = None
            if info is not None and stat.S_ISDIR(info.st_mode):
                raise errors.BadInput(f"{target} is a directory")
            if info is not None and not force:
                raise errors.BadInput(f"{target} exists; use force (--force) to replace it")

            def may_replace() -> None:
                if not force and os.path.lexists(target):
                    raise errors.BadInput(f"{target} appeared meanwhile")

            fetched = await cluster.get_file(outcome.name, target, may_replace=may_replace, progress=progress)
            outcome.file_hash = fetched.file_hash
            outcome.network_bytes, outcome.resumed_bytes = fetched.received_bytes, fetched.resumed_bytes
        except errors.P2pfsError as exc:
            outcome.error = str(exc)
        except OSError as exc:
            outcome.error = f"cannot write {outcome.path}: {exc.strerror or exc}"

    await _each(outcomes, one, on_file)
    for outcome in refused:
        on_file(outcome)
    return TreeResult(str(root), head, [*outcomes, *refused], complete=complete)


async def _each(outcomes: list[FileOutcome], one: Callable, on_file: Callable[[FileOutcome], None]) -> None:
    """Run ``one`` for every outcome in order, ``TREE_TRANSFERS_CONCURRENT`` at a time."""
    slots = trio.Semaphore(TREE_TRANSFERS_CONCURRENT)

    async def run(outcome: FileOutcome) -> None:
        try:
            await one(outcome)
        finally:
            slots.release()
        on_file(outcome)

    async with trio.open_nursery() as nursery:
        for outcome in outcomes:
            await slots.acquire()  # a task is started only when it may run: no queue of waiting tasks
            nursery.start_soon(run, outcome)
