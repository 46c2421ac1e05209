"""Gets and puts that pick up where an interrupted one stopped (the node's side:
``p2pfs.replication.resumable``).

**A get to a path** writes to a partial file beside it, ``.NAME.p2pfs-part``, and
keeps beside that, in ``.NAME.p2pfs-resume``, what the partial file is a copy of:
the cluster name, and the version's manifest (its chunk ids and sizes). A get that
finds both starts by reading the partial file back chunk by chunk against the
manifest's ids; the chunks that match from the start (all of them verified, so a
torn last write costs only its chunk) are kept, and the node is asked for the rest
of that version. If the name has a newer version with other content, the node
sends the new version from its start, the partial file is emptied first, and the
sidecar is rewritten before any byte of it is written: two versions never mix in
one file. On success the partial file is renamed into place and the sidecar
removed. A get that fails because no node could serve it (or is interrupted)
keeps both for the next attempt; any other failure (not found, a damaged answer,
a local disk error) removes them. An exclusive lock on the partial file keeps two
gets from writing it at once. Retries at another node within one get resume the
same way.

A get that has nothing to resume asks a node that speaks the small-file messages
with ``GetSmallFile``: a file of at most ``SMALL_FILE_BYTES_MAX`` comes whole in one
answer (or in a short body) and is written to the partial file without a sidecar,
since there is nothing worth resuming in it. A longer file is answered with the start
of a stream, which is dropped at its header, and asked for again as above: one more
request, and the node's first chunks read for nothing, for a file too large for that
to matter.

**A put of a path** cuts the file here first (at ``CHUNK_SIZE_BYTES_DEFAULT``, the
chunk size nodes cut at, so the ids match those of a put the node cut), asks
which chunks the cluster holds already at full replication, and sends only the
others. So an interrupted put, or a retry at another node, does not send again
what reached the cluster; the cost is reading the file twice, but not hashing it
twice: the send reuses the cut's chunk ids and file hash (``put_path`` says what keeps
a file changed in between from being stored under them). A file of at most
``SMALL_FILE_BYTES_MAX`` goes whole in one ``PutSmallFile`` to a node that speaks it,
without being cut or asked about: there is at most one chunk, and asking which chunks
are held would cost a request to save one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, BinaryIO, Callable

import trio

from p2pfs import errors
from p2pfs.client.direct import AlignedWriter, open_direct
from p2pfs.client.node import READ_BYTES, SMALL_FILE_BYTES_MAX, Client, Progress
from p2pfs.replication import client_messages as cm
from p2pfs.replication import messages as dm

# Suffixes of the two files a resumable get keeps beside its target: the partial copy, and what it is of.
PART_SUFFIX = ".p2pfs-part"
STATE_SUFFIX = ".p2pfs-resume"
# Largest sidecar read back: a manifest at its cap, hex-encoded, with room for the name.
STATE_BYTES_MAX = 2 * dm.ENTRY_ENCODED_BYTES_MAX + 4096
STATE_FORMAT = 1

Run = Callable[..., Awaitable[Any]]
LocalError = Callable[[str, OSError], errors.P2pfsError]


def plain_local_error(path: str, exc: OSError) -> errors.P2pfsError:
    """A local file error as a library error: a path's problem (BadInput) or the disk's."""
    import errno

    text = f"cannot write {path}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM,
                     errno.ENAMETOOLONG, errno.ELOOP):
        return errors.BadInput(text)
    return errors.LocalStorageError(text)


@dataclasses.dataclass(frozen=True, slots=True)
class Fetched:
    """What a get to a path wrote: the version, and how much of it came over the network now."""

    name: str
    size_bytes: int
    file_hash: bytes
    version_wall_ms: int | None  # None: fetched in one small-file answer, which names no version
    version_logical: int | None
    received_bytes: int  # body bytes received in this get (all attempts)
    resumed_bytes: int  # bytes kept from an earlier get's partial file


@dataclasses.dataclass(frozen=True, slots=True)
class Stored:
    """A put's answer (``PutFileReply``) and how many of the file's bytes were sent."""

    reply: dm.PutFileReply
    sent_bytes: int

    def __getattr__(self, attribute: str) -> Any:  # name, size_bytes, file_hash, ... as the reply's
        return getattr(self.reply, attribute)


def partial_paths(target: Path) -> tuple[Path, Path]:
    return (target.parent / f".{target.name}{PART_SUFFIX}", target.parent / f".{target.name}{STATE_SUFFIX}")


def _read_state(state_path: Path, name: str):
    """The manifest the partial file is a copy of, or None (no sidecar, another name, unreadable)."""
    from p2pfs.storage.manifest import Manifest, ManifestError

    try:
        with open(state_path, "rb") as f:
            raw = f.read(STATE_BYTES_MAX + 1)
        facts = json.loads(raw)
        if len(raw) > STATE_BYTES_MAX or facts.get("format") != STATE_FORMAT or facts.get("name") != name:
            return None
        return Manifest.decode(bytes.fromhex(facts["manifest"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ManifestError):
        return None


def _write_state(state_path: Path, name: str, manifest_bytes: bytes) -> None:
    """Write the sidecar whole or not at all (a temporary file renamed over it), durably,
    before the first byte of the version it describes."""
    temp = state_path.with_name(state_path.name + ".tmp")
    with open(temp, "w", encoding="utf-8") as f:
        json.dump({"format": STATE_FORMAT, "name": name, "manifest": manifest_bytes.hex()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, state_path)


def _verified_prefix(file: BinaryIO, manifest) -> tuple[int, int, Any]:
    """(chunks, bytes) of ``file`` from its start that match ``manifest``, and a hasher fed with them."""
    from p2pfs.storage import FileHasher
    from p2pfs.storage.manifest import chunk_id_of

    hasher = FileHasher()
    file.seek(0)
    kept_bytes = 0
    for index, ref in enumerate(manifest.chunks):
        data = file.read(ref.size_bytes)
        if len(data) != ref.size_bytes or chunk_id_of(data) != ref.chunk_id:
            return index, kept_bytes, hasher
        hasher.update(data)
        kept_bytes += len(data)
    return len(manifest.chunks), kept_bytes, hasher


class _LongerThanSmall(Exception):
    """A get asked for in one small-file answer turned out longer: asked for again, resumably."""


class _PartialGet:
    """One get to a path: its partial file, its sidecar, and what the attempts received."""

    def __init__(self, name: str, target: Path, progress: Progress, on_size: Callable[[int], None],
                 local_error: LocalError) -> None:
        self.name = name
        self.target = target
        self.part_path, self.state_path = partial_paths(target)
        self.progress = progress
        self.on_size = on_size
        self.local_error = local_error
        self.file: BinaryIO | None = None
        self.direct_fd: int | None = None  # the partial file written past the page cache (direct.py)
        self.manifest = None
        self.received_bytes = 0
        self.resumed_bytes: int | None = None  # what the first attempt kept
        self.shown_bytes = 0  # what progress has been told of, taken back when an attempt starts again

    def open(self) -> None:
        """Open (or create, 0600) the partial file and lock it; BadInput if another get holds it."""
        import fcntl

        try:
            fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise self.local_error(str(self.target.parent), exc) from None
        self.file = os.fdopen(fd, "r+b")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise errors.BadInput(f"another get is writing {self.target} (its partial file is locked)") from None
        try:
            self.direct_fd = open_direct(self.part_path, fd)
        except OSError as exc:
            self.file.close()
            raise self.local_error(str(self.target), exc) from None
        self.manifest = _read_state(self.state_path, self.name)

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.part_path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state_path)

    def _prepare(self) -> tuple[int, int, Any]:
        """(first chunk to ask for, bytes kept, hasher over them): the partial file checked
        against the sidecar's manifest, and cut after its last good chunk."""
        from p2pfs.storage import FileHasher

        if self.manifest is None:
            first_chunk, kept_bytes, hasher = 0, 0, FileHasher()
        else:
            first_chunk, kept_bytes, hasher = _verified_prefix(self.file, self.manifest)
        self.file.seek(kept_bytes)
        self.file.truncate()
        return first_chunk, kept_bytes, hasher

    async def attempt(self, client: Client) -> Fetched:
        from p2pfs.storage.manifest import Manifest, ManifestError

        if self.manifest is None and client.speaks_small_files:
            fetched = await self._attempt_small(client)
            if fetched is not None:
                return fetched
        first_chunk, kept_bytes, hasher = await trio.to_thread.run_sync(self._local, self._prepare)
        file_hash = self.manifest.file_hash if self.manifest is not None and first_chunk else b""
        self.progress(kept_bytes - self.shown_bytes)
        self.shown_bytes = kept_bytes
        async with client.get_from(self.name, file_hash, first_chunk) as (header, body):
            try:
                manifest = Manifest.decode(header.manifest)
            except ManifestError as exc:
                raise errors.PeerFault(f"node {client.node} sent a bad manifest: {exc}") from None
            if header.first_chunk not in (0, first_chunk) or (
                    header.first_chunk and manifest.chunks[:first_chunk] != self.manifest.chunks[:first_chunk]):
                raise errors.PeerFault(f"node {client.node} resumed {self.name!r} at the wrong chunk")
            if header.first_chunk != first_chunk or self.manifest is None or self.manifest != manifest:
                # Another version (or the first attempt): the sidecar describes it before a byte of it lands.
                self.manifest = manifest
                if header.first_chunk == 0:
                    hasher, kept_bytes = await trio.to_thread.run_sync(self._local, self._restart)
                    self.progress(-self.shown_bytes)
                    self.shown_bytes = 0
                await trio.to_thread.run_sync(self._local, _write_state, self.state_path, self.name,
                                              header.manifest)
            if self.resumed_bytes is None:  # what this get kept of an earlier one's partial file
                self.resumed_bytes = kept_bytes
            self.on_size(manifest.size_bytes)
            writer = await trio.to_thread.run_sync(self._local, AlignedWriter, self.file.fileno(), self.direct_fd,
                                                   kept_bytes)

            def write(data: bytes) -> None:
                hasher.update(data)  # first: a lent piece's buffer is lent again once written
                writer.write(data)

            body.lend(writer.lend)  # large pieces decrypted into the writer's own buffers (direct.py)
            try:
                async for data in body:
                    if writer.fits(len(data)) and not writer.is_lent(data):
                        # a copy and a hash: cheaper here than a thread's round trip
                        self._local(write, data)
                    else:  # and a write to the disk
                        await trio.to_thread.run_sync(self._local, write, data)
                    self.received_bytes += len(data)
                    self.shown_bytes += len(data)
                    self.progress(len(data))
            finally:
                # Whatever ends the attempt, the file holds every byte received: the next
                # attempt resumes from them. Here, not in a thread: a cancelled attempt too.
                self._local(writer.close)
        if hasher.size_bytes != manifest.size_bytes or hasher.digest() != manifest.file_hash:
            self.manifest = None  # nothing of it is worth keeping: the next attempt starts afresh
            raise errors.PeerFault(
                f"{self.name!r} arrived damaged ({hasher.size_bytes} of {manifest.size_bytes} bytes, "
                "hash mismatch); nothing was kept"
            )
        return Fetched(self.name, manifest.size_bytes, manifest.file_hash, header.version_wall_ms,
                       header.version_logical, self.received_bytes, self.resumed_bytes)

    async def _attempt_small(self, client: Client) -> Fetched | None:
        """Fetch the file in one small-file answer (``Client.get``); None if it is longer than
        ``SMALL_FILE_BYTES_MAX`` (dropped at the answer's header, before any byte is written)."""
        self._local(self._prepare)  # no sidecar: only empties the partial file, here rather than in a thread
        self.progress(-self.shown_bytes)
        self.shown_bytes = 0

        def on_size(size_bytes: int) -> None:
            if size_bytes > SMALL_FILE_BYTES_MAX:
                raise _LongerThanSmall
            self.on_size(size_bytes)

        partial = self

        class Sink:
            def write(self, data: bytes) -> None:
                partial._local(partial.file.write, data)
                partial.received_bytes += len(data)
                partial.shown_bytes += len(data)

        try:
            header = await client.get(self.name, Sink(), self.progress, on_size)
        except _LongerThanSmall:
            return None
        if self.resumed_bytes is None:
            self.resumed_bytes = 0
        return Fetched(self.name, header.size_bytes, header.file_hash, None, None, self.received_bytes,
                       self.resumed_bytes)

    def _restart(self) -> tuple[Any, int]:
        from p2pfs.storage import FileHasher

        self.file.seek(0)
        self.file.truncate()
        return FileHasher(), 0

    def _local(self, fn: Callable, *args: Any) -> Any:
        """Run a local file step; an OSError becomes one clear line naming the target."""
        try:
            return fn(*args)
        except OSError as exc:
            raise self.local_error(str(self.target), exc) from None

    def finish(self, file_mode: int) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        os.fchmod(self.file.fileno(), file_mode)  # created 0600 while partial

    def close(self) -> None:
        if self.direct_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.direct_fd)
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()


async def get_to_path(run: Run, name: str, target: Path, *, file_mode: int,
                      may_replace: Callable[[], None] = lambda: None, progress: Progress = lambda n: None,
                      on_size: Callable[[int], None] = lambda size_bytes: None,
                      local_error: LocalError = plain_local_error) -> Fetched:
    """Fetch ``name`` into ``target`` through a resumable partial file beside it (see the module).

    ``run(what, operation, resend)`` runs an attempt with failover; ``may_replace``
    raises if ``target`` may no longer be replaced (checked just before the rename);
    ``local_error`` turns a local OSError into the error to raise.
    """
    partial = _PartialGet(name, target, progress, on_size, local_error)
    partial.open()
    keep = False
    try:
        fetched = await run(f"get {name!r}", partial.attempt, lambda: None)
        partial._local(partial.finish, file_mode)
        may_replace()
        try:
            os.replace(partial.part_path, target)
        except OSError as exc:
            raise local_error(str(target), exc) from None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial.state_path)
        return fetched
    except errors.Unavailable:
        keep = partial.manifest is not None
        raise
    except (KeyboardInterrupt, trio.Cancelled):
        keep = partial.manifest is not None
        raise
    finally:
        partial.close()
        if not keep:
            partial.discard()


def cut_file(file: BinaryIO, chunk_size_bytes: int):
    """The manifest of ``file`` cut at ``chunk_size_bytes`` (chunk ids and whole-file hash)."""
    from p2pfs.storage import FileHasher, ManifestBuilder
    from p2pfs.storage.chunker import iter_chunks
    from p2pfs.storage.manifest import chunk_id_of

    builder = ManifestBuilder(chunk_size_bytes)
    hasher = FileHasher()
    file.seek(0)
    for data in iter_chunks(file, chunk_size_bytes):
        hasher.update(data)
        builder.add(chunk_id_of(data), len(data))
    return builder.finish(hasher.digest(), 0)  # the node stamps the creation time


def can_cut(size_bytes: int) -> bool:
    """Whether a file of ``size_bytes`` fits a manifest cut at the default chunk size."""
    from p2pfs.storage.manifest import CHUNK_SIZE_BYTES_DEFAULT, MANIFEST_CHUNKS_MAX

    return 0 <= size_bytes <= MANIFEST_CHUNKS_MAX * CHUNK_SIZE_BYTES_DEFAULT


def file_version(file: BinaryIO) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of an open file: what says it was not written to."""
    facts = os.fstat(file.fileno())
    return facts.st_size, facts.st_mtime_ns


@dataclasses.dataclass
class _Cut:
    """A local file cut into chunks: its manifest, where each chunk starts, and the file's
    ``file_version`` when the cut began (every later read is checked against it)."""

    manifest: Any
    encoded: bytes
    ids: list[bytes]
    offsets: list[int]
    version: tuple[int, int]

    @classmethod
    def of(cls, manifest: Any, version: tuple[int, int]) -> _Cut:
        offsets = [0]
        for ref in manifest.chunks:
            offsets.append(offsets[-1] + ref.size_bytes)
        return cls(manifest, manifest.encode(), [ref.chunk_id for ref in manifest.chunks], offsets, version)


def _small_content(path: Path, file: BinaryIO) -> bytes | None:
    """The whole of ``file`` if it is at most ``SMALL_FILE_BYTES_MAX`` long, read here (on the
    event loop: a few microseconds, less than a thread's round trip); None for a longer one."""
    try:
        size_bytes = os.fstat(file.fileno()).st_size
        if size_bytes > min(SMALL_FILE_BYTES_MAX, cm.SMALL_FILE_BYTES_MAX):
            return None
        file.seek(0)
        data = file.read(size_bytes + 1)
    except OSError as exc:
        raise errors.BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) != size_bytes:
        raise errors.BadInput(f"{path} changed while it was read; put it again")
    return data


async def put_path(run: Run, path: Path, file: BinaryIO, name: str, progress: Progress) -> Stored:
    """Put a local file, sending only the chunks the cluster does not hold yet (see the module);
    one of at most ``SMALL_FILE_BYTES_MAX`` whole in one message, to a node that speaks it.

    The file is cut at the default chunk size; a cluster configured for another size
    says so in its first answer, and the file is cut again at that size.

    The cut is the only pass that hashes: its chunk ids and file hash come from one read,
    so the manifest describes one content, and the send does not hash again. What keeps
    a file changed between the cut and the send from being stored under the cut's ids is
    the node, which checks every chunk it receives against its id (replication.resumable)
    and refuses the put otherwise; chunks not sent are held already under their ids. The
    client checks only the file's size and modification time after each read, which
    costs no hashing and turns the common case (a file written to meanwhile) into a clear
    error before the changed chunk is sent; a write the modification time misses (within
    its clock's granularity, or with the time set back) is still an error, the node's
    refusal. Either way the name is not written.
    """
    from p2pfs.storage.manifest import CHUNK_SIZE_BYTES_DEFAULT, ManifestError

    def changed() -> errors.BadInput:
        return errors.BadInput(f"{path} changed while it was read; put it again")

    def cut_at(chunk_size_bytes: int) -> _Cut:
        try:
            version = file_version(file)
            cut = _Cut.of(cut_file(file, chunk_size_bytes), version)
            if file_version(file) != version:
                raise changed()
            return cut
        except OSError as exc:
            raise errors.BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
        except (ManifestError, ValueError) as exc:
            raise errors.BadInput(f"cannot put {path} in chunks of {chunk_size_bytes} bytes: {exc}") from None

    small = _small_content(path, file)
    # A small file is cut only if a node that does not speak the small-file messages needs it.
    cut = None if small is not None else await trio.to_thread.run_sync(cut_at, CHUNK_SIZE_BYTES_DEFAULT)
    counted = {"sent": 0, "shown": 0}

    def show(count_bytes: int) -> None:
        counted["shown"] += count_bytes
        progress(count_bytes)

    def read_chunk(index: int) -> bytes:
        try:
            file.seek(cut.offsets[index])
            data = file.read(cut.manifest.chunks[index].size_bytes)
            version = file_version(file)  # after the read: a write before it shows here
        except OSError as exc:
            raise errors.BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(data) != cut.manifest.chunks[index].size_bytes or version != cut.version:
            raise changed()
        return data

    async def held_chunks(client: Client) -> list[bool]:
        """Which chunks the cluster holds; cut again first if it cuts at another size."""
        nonlocal cut
        for _ in range(2):  # a second answer naming yet another size is the node's fault
            held: list[bool] = []
            for start in range(0, max(len(cut.ids), 1), dm.HAS_CHUNKS_IDS_MAX):
                reply = await client.held_chunks(tuple(cut.ids[start : start + dm.HAS_CHUNKS_IDS_MAX]))
                if reply.chunk_size_bytes != cut.manifest.chunk_size_bytes:
                    break
                held.extend(reply.held)
            else:
                return held
            cut = await trio.to_thread.run_sync(cut_at, reply.chunk_size_bytes)
        raise errors.PeerFault(f"node {client.node} changed its chunk size while a put asked it")

    async def attempt(client: Client) -> Stored:
        nonlocal cut
        show(-counted["shown"])  # a new attempt at another node counts from nothing
        if small is not None and client.speaks_small_files:
            reply = await client.put(io.BytesIO(small), name, len(small), show)  # one PutSmallFile
            return Stored(reply, len(small))
        if cut is None:
            cut = await trio.to_thread.run_sync(cut_at, CHUNK_SIZE_BYTES_DEFAULT)
        held = await held_chunks(client)
        show(sum(ref.size_bytes for ref, here in zip(cut.manifest.chunks, held) if here))

        async def body() -> AsyncIterator[bytes]:
            for index, here in enumerate(held):
                if here:
                    continue
                data = await trio.to_thread.run_sync(read_chunk, index)
                for offset in range(0, len(data), READ_BYTES):
                    yield data[offset : offset + READ_BYTES]
                counted["sent"] += len(data)
                show(len(data))

        reply = await client.put_known(name, cut.encoded, dm.held_bitmap(held), body())
        return Stored(reply, counted["sent"])

    return await run(f"put {name!r}", attempt, lambda: None)
