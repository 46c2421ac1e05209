"""A get's output written past the page cache (``p2pfs.client.direct``): whatever the sizes of
the pieces and wherever a resumed get starts, the file ends up holding exactly the bytes given,
with ``O_DIRECT``, with plain writes, and when the file system refuses direct writes midway."""

from __future__ import annotations

import errno
import os
import random

import pytest

from p2pfs.client import direct
from p2pfs.client.direct import BLOCK_BYTES, STAGE_BYTES, AlignedWriter, open_direct


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` cut at random sizes: tiny, block-straddling, and larger than the buffer."""
    out, at = [], 0
    while at < len(data):
        size = rng.choice([1, 7, BLOCK_BYTES - 1, BLOCK_BYTES + 3, 65536, 1024 * 1024, STAGE_BYTES + 5])
        out.append(data[at : at + size])
        at += size
    return out


def write_through(path, kept: bytes, new: bytes, *, use_direct: bool, seed: int) -> bytes:
    path.write_bytes(kept)
    with open(path, "r+b") as f:
        direct_fd = open_direct(path, f.fileno()) if use_direct else None
        try:
            writer = AlignedWriter(f.fileno(), direct_fd, len(kept))
            for piece in pieces(new, random.Random(seed)):
                writer.write(piece)
            assert writer.size_bytes == len(kept) + len(new)
            writer.close()
            writer.close()  # idempotent: an attempt's cleanup may run after an error already closed it
        finally:
            if direct_fd is not None:
                os.close(direct_fd)
    return path.read_bytes()


@pytest.mark.parametrize("use_direct", [True, False], ids=["direct", "plain"])
@pytest.mark.parametrize("kept_bytes", [0, BLOCK_BYTES, 1024 * 1024 + 777, 3])
def test_the_file_holds_exactly_what_was_written_after_what_was_kept(tmp_path, use_direct, kept_bytes):
    rng = random.Random(kept_bytes)
    kept = rng.randbytes(kept_bytes)
    new = rng.randbytes(2 * STAGE_BYTES + 12345)
    assert write_through(tmp_path / "part", kept, new, use_direct=use_direct, seed=kept_bytes) == kept + new


def test_the_temp_directory_takes_direct_writes_so_the_direct_cases_test_them(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    with open(tmp_path / "f", "rb") as f:
        fd = open_direct(tmp_path / "f", f.fileno())
    if fd is None:
        pytest.skip("this file system has no O_DIRECT: the direct cases ran as plain writes")
    os.close(fd)


def test_a_file_replaced_between_the_two_opens_gets_no_direct_descriptor(tmp_path):
    (tmp_path / "held").write_bytes(b"")
    (tmp_path / "other").write_bytes(b"")
    with open(tmp_path / "held", "rb") as f:
        assert open_direct(tmp_path / "other", f.fileno()) is None


def test_a_file_system_that_refuses_direct_writes_midway_gets_plain_ones(tmp_path, monkeypatch):
    real_pwrite = os.pwrite
    refused = []

    def pwrite(fd, data, offset):
        if fd == direct_fd_box[0]:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    path = tmp_path / "part"
    path.write_bytes(b"")
    new = random.Random(1).randbytes(STAGE_BYTES + BLOCK_BYTES + 10)
    with open(path, "r+b") as f:
        direct_fd_box = [os.open(path, os.O_WRONLY)]  # stands in for an O_DIRECT descriptor
        monkeypatch.setattr(direct.os, "pwrite", pwrite)
        try:
            writer = AlignedWriter(f.fileno(), direct_fd_box[0], 0)
            for piece in pieces(new, random.Random(2)):
                writer.write(piece)
            writer.close()
        finally:
            os.close(direct_fd_box[0])
    assert refused == [0]  # refused once, then never asked again
    assert path.read_bytes() == new


def test_fits_says_whether_a_piece_lands_in_the_buffer_without_a_disk_write(tmp_path):
    path = tmp_path / "part"
    path.write_bytes(b"x" * 100)
    with open(path, "r+b") as f:
        writer = AlignedWriter(f.fileno(), None, 100)  # the last 100 bytes read back into the buffer
        assert writer.fits(STAGE_BYTES - 101) and not writer.fits(STAGE_BYTES - 100)
        writer.write(b"y" * (STAGE_BYTES - 101))
        assert path.stat().st_size == 100  # nothing written yet: the piece stayed in the buffer
        assert writer.fits(0) and not writer.fits(1)
        writer.write(b"z")
        assert path.stat().st_size == STAGE_BYTES  # the full buffer went out
        writer.close()
    assert path.read_bytes() == b"x" * 100 + b"y" * (STAGE_BYTES - 101) + b"z"


@pytest.mark.parametrize("use_direct", [True, False], ids=["direct", "plain"])
def test_lent_pieces_are_written_from_where_they_landed_and_their_buffers_lent_again(
        tmp_path, monkeypatch, use_direct):
    """A piece received into a buffer the writer lent goes to the disk from that buffer (no copy
    into the stage), after what the stage held; its buffer is lent again. Pieces not lent, and
    a lent one not of whole blocks (the file's last), go through the stage; the file holds
    exactly the bytes, in order (plain writes need no whole blocks)."""
    rng = random.Random(7)
    path = tmp_path / "part"
    path.write_bytes(b"")
    written_from: list[object] = []
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        written_from.append(memoryview(data).obj)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(direct.os, "pwrite", pwrite)
    expected = bytearray()
    with open(path, "r+b") as f:
        direct_fd = open_direct(path, f.fileno()) if use_direct else None
        try:
            writer = AlignedWriter(f.fileno(), direct_fd, 0)
            plain = rng.randbytes(1024 * 1024)  # came before the lending: through the stage
            writer.write(plain)
            expected += plain
            lent_buffers = set()
            for size in [STAGE_BYTES, 1024 * 1024, 3 * 1024 * 1024, 2 * 1024 * 1024 + 100]:
                piece = writer.lend(size)
                assert piece is not None and len(piece) == size and writer.is_lent(piece)
                data = rng.randbytes(size)
                piece[:] = data  # what the connection decrypts into it
                lent_buffers.add(id(piece.obj))
                writer.write(piece)
                expected += data
            assert len(lent_buffers) == 1  # each piece written gave its buffer back
            held = [writer.lend(STAGE_BYTES) for _ in range(direct.LENT_BUFFERS_MAX)]
            assert all(piece is not None for piece in held)
            assert writer.lend(STAGE_BYTES) is None  # all out: the reader makes its own
            assert writer.lend(direct.LENT_BUFFER_BYTES + 1) is None  # larger than any piece
            assert not writer.is_lent(bytearray(10)) and not writer.is_lent(memoryview(b"x"))
            writer.close()
            assert writer.lend(1024 * 1024) is None  # closed
        finally:
            if direct_fd is not None:
                os.close(direct_fd)
    assert path.read_bytes() == bytes(expected)
    lent_writes = [obj for obj in written_from if id(obj) in lent_buffers]
    # Direct: the three pieces of whole blocks went out from their buffer; plain writes take any.
    assert len(lent_writes) == (3 if use_direct else 4)
