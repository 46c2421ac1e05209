"""A get's output written past the page cache (``O_DIRECT``), through one reused aligned buffer.

A get to a path fsyncs its file before renaming it into place, so every byte
must reach the disk before the get returns whatever way it is written. Written
through the page cache, each byte is first copied into a fresh cache page (on
this project's machines 1.5-2 CPU-seconds per GiB, the largest single cost of a
get: docs/BENCHMARKS.md), and the fsync then waits for the same bytes to be
written back. ``O_DIRECT`` hands the disk the buffer itself: no cache page, no
copy in the kernel. The price: the file is not in the page cache afterwards, so
reading it at once reads the disk (as reading it after a reboot would).

``O_DIRECT`` wants the buffer's address, the length and the file offset aligned
to the device's logical block (``BLOCK_BYTES`` covers 512 and 4096). Body pieces
come in any size, so they are copied into one page-aligned buffer of
``STAGE_BYTES`` (a whole number of blocks), reused for the whole get, and
written out each time it is full.

Copying into the stage costs a pass over every byte (and the receiver's fresh
frame buffer a zero-fill): about 0.2 CPU-seconds per GiB. So the writer also
lends the connection page-aligned buffers of its own (``lend``, through
``net.Buffers.lend``), and a large body piece is decrypted straight into one; a
lent piece of whole blocks goes to the disk from where it landed (``write``), and
its buffer is lent again. Pieces that came before the lending, or while every
buffer was out, or the file's unaligned last piece go through the stage as before.
``close`` writes what is left, padded to a block, and cuts the file back to the
bytes received, so the file always holds exactly what arrived (a resumed get
reads it back and checks each chunk). A file system without ``O_DIRECT``
(tmpfs on older kernels refuses the open, some refuse the write) gets plain writes of the same
bytes at the same offsets.
"""

from __future__ import annotations

import collections
import errno
import mmap
import os

from p2pfs.net.config import STREAM_DATA_BYTES_MAX

# Alignment of offsets and lengths: a multiple of every common logical block size (512, 4096).
BLOCK_BYTES = 4096
# The reused buffer: bytes gathered before a write. 4 chunks of 1 MiB per write keeps the
# syscalls few and the disk's requests large; what a SIGKILL loses of it, a resumed get fetches.
STAGE_BYTES = 4 * 1024 * 1024
# Buffers lent for body pieces, each as large as the largest piece (one frame's data): one
# being written, the stream's window in flight behind it (two largest frames), one spare for
# the piece just given back. When all are out, the reader makes a buffer and the piece is copied.
LENT_BUFFERS_MAX = 4
LENT_BUFFER_BYTES = STREAM_DATA_BYTES_MAX


def open_direct(path: os.PathLike | str, same_as_fd: int) -> int | None:
    """A write descriptor that bypasses the page cache on the file ``same_as_fd`` has open at
    ``path``, or None where the file system has no ``O_DIRECT`` (or ``path`` is another file now)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:  # not Linux: plain writes
        return None
    try:
        fd = os.open(path, os.O_WRONLY | flag | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # tmpfs on older kernels, and others: no direct I/O
            return None
        raise
    opened, held = os.fstat(fd), os.fstat(same_as_fd)
    if (opened.st_dev, opened.st_ino) != (held.st_dev, held.st_ino):  # replaced since: write what we hold
        os.close(fd)
        return None
    return fd


class AlignedWriter:
    """Appends bytes to a file from ``offset_bytes`` on, in aligned blocks through ``direct_fd``
    (or plain writes through ``plain_fd`` when that is None or the file system refuses).

    ``plain_fd`` is the file as opened for reading and truncating; the file must
    hold exactly ``offset_bytes`` bytes when the writer is made.
    """

    def __init__(self, plain_fd: int, direct_fd: int | None, offset_bytes: int) -> None:
        self._plain_fd = plain_fd
        self._direct_fd = direct_fd
        self._stage = mmap.mmap(-1, STAGE_BYTES)  # anonymous, so page-aligned
        self._view = memoryview(self._stage)
        # Lent buffers by id (made on demand, up to LENT_BUFFERS_MAX), and those free to lend
        # again. Lent by the event loop's thread, given back by a worker's: a deque's append
        # and popleft are atomic.
        self._lendable: dict[int, mmap.mmap] = {}
        self._free: collections.deque[mmap.mmap] = collections.deque()
        # The buffer's first byte goes at this file offset (block-aligned), and the buffer
        # holds ``_filled`` bytes: a block's start read back, then what was written since.
        self._stage_offset_bytes = offset_bytes - offset_bytes % BLOCK_BYTES
        self._filled = offset_bytes - self._stage_offset_bytes
        if self._filled:
            read = os.preadv(plain_fd, [self._view[: self._filled]], self._stage_offset_bytes)
            if read != self._filled:
                raise OSError(errno.EIO, f"read {read} of the file's last {self._filled} bytes back")

    @property
    def size_bytes(self) -> int:
        """The file's length once everything written so far is out."""
        return self._stage_offset_bytes + self._filled

    def fits(self, count_bytes: int) -> bool:
        """Whether ``count_bytes`` more go into the buffer without a write to the disk."""
        return self._filled + count_bytes < STAGE_BYTES

    def lend(self, size_bytes: int) -> memoryview | None:
        """A page-aligned buffer of ``size_bytes`` to receive a body piece into (``net.Buffers.lend``),
        or None when every buffer is out, the piece is larger, or the writer is closed."""
        if self._stage.closed or size_bytes > LENT_BUFFER_BYTES:
            return None
        try:
            buffer = self._free.popleft()
        except IndexError:
            if len(self._lendable) >= LENT_BUFFERS_MAX:
                return None
            buffer = mmap.mmap(-1, LENT_BUFFER_BYTES)  # anonymous, so page-aligned
            self._lendable[id(buffer)] = buffer
        return memoryview(buffer)[:size_bytes]

    def _lent_buffer(self, data: bytes | bytearray | memoryview) -> mmap.mmap | None:
        """The lent buffer ``data`` lies in, or None if it is not a lent piece."""
        if type(data) is not memoryview:
            return None
        buffer = self._lendable.get(id(data.obj))
        return buffer if buffer is data.obj else None

    def is_lent(self, data: bytes | bytearray | memoryview) -> bool:
        """Whether ``data`` is a piece received into a lent buffer (``write`` may write it to the disk)."""
        return self._lent_buffer(data) is not None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``. A lent piece's buffer is lent again once this returns: the caller must
        be done with it (hashed it) before."""
        buffer = self._lent_buffer(data)
        if buffer is None:
            self._copy_in(data)
            return
        try:
            self._write_lent(data)
        finally:
            self._free.append(buffer)

    def _write_lent(self, view: memoryview) -> None:
        """Write a lent piece from where it is, after what the stage holds; through the stage if
        a direct write could not take it (not whole blocks: the file's last piece)."""
        if self._direct_fd is not None and (self._filled % BLOCK_BYTES or len(view) % BLOCK_BYTES):
            self._copy_in(view)
            return
        if self._filled:
            self._write_out(self._filled)
        done = 0
        while done < len(view):
            done += self._pwrite(view[done:], self._stage_offset_bytes + done)
        self._stage_offset_bytes += len(view)

    def _copy_in(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            count = min(len(view), STAGE_BYTES - self._filled)
            self._view[self._filled : self._filled + count] = view[:count]
            self._filled += count
            view = view[count:]
            if self._filled == STAGE_BYTES:
                self._write_out(STAGE_BYTES)

    def close(self) -> None:
        """Write what the buffer holds and cut the file to the bytes written (idempotent)."""
        if self._stage.closed:
            return
        size_bytes = self.size_bytes
        if self._filled:
            padded = -(-self._filled // BLOCK_BYTES) * BLOCK_BYTES if self._direct_fd is not None else self._filled
            self._view[self._filled : padded] = bytes(padded - self._filled)
            self._write_out(padded)
        os.ftruncate(self._plain_fd, size_bytes)
        self._view.release()
        self._stage.close()
        # Lent buffers are unmapped when the last piece in them is dropped (the connection may
        # still hold some in a body's queue).
        self._lendable.clear()
        self._free.clear()

    def _write_out(self, count_bytes: int) -> None:
        """Write the buffer's first ``count_bytes`` (a whole number of blocks, for direct writes:
        the full buffer, what it holds before a lent piece, or the padded rest at ``close``)
        and start it afresh."""
        assert self._direct_fd is None or count_bytes % BLOCK_BYTES == 0, count_bytes
        done = 0
        while done < count_bytes:
            done += self._pwrite(self._view[done:count_bytes], self._stage_offset_bytes + done)
        self._stage_offset_bytes += count_bytes
        self._filled = 0

    def _pwrite(self, view: memoryview, offset_bytes: int) -> int:
        if self._direct_fd is not None:
            try:
                return os.pwrite(self._direct_fd, view, offset_bytes)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct_fd = None  # the file system refused direct I/O after all: write plainly
        return os.pwrite(self._plain_fd, view, offset_bytes)
