"""Chunker: exact boundaries whatever the stream, bounded reads, and the manifest built from it."""

from __future__ import annotations

import io
import os
import random
import threading

import blake3
import pytest

from p2pfs.storage import chunker
from p2pfs.storage.chunker import FileHasher, ManifestBuilder, iter_chunks
from p2pfs.storage.manifest import CHUNK_SIZE_BYTES_MIN, ManifestError, chunk_id_of

CHUNK = CHUNK_SIZE_BYTES_MIN


class TrickleReader(io.RawIOBase):
    """A raw stream that hands out at most a few random bytes per read, like a pipe,
    and records how much each read asked for."""

    def __init__(self, data: bytes, seed: int) -> None:
        self._data = memoryview(data)
        self._offset = 0
        self._random = random.Random(seed)
        self.asked: list[int] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self.asked.append(len(buffer))
        count = min(len(buffer), self._random.randint(1, 700), len(self._data) - self._offset)
        buffer[:count] = self._data[self._offset : self._offset + count]
        self._offset += count
        return count

    @property
    def consumed_bytes(self) -> int:
        return self._offset


@pytest.mark.parametrize(
    ("size_bytes", "expected_sizes"),
    [
        (0, []),
        (1, [1]),
        (CHUNK - 1, [CHUNK - 1]),
        (CHUNK, [CHUNK]),
        (CHUNK + 1, [CHUNK, 1]),
        (3 * CHUNK, [CHUNK, CHUNK, CHUNK]),
        (3 * CHUNK + 5, [CHUNK, CHUNK, CHUNK, 5]),
    ],
)
def test_boundaries(size_bytes: int, expected_sizes: list[int]) -> None:
    data = os.urandom(size_bytes)
    chunks = list(iter_chunks(io.BytesIO(data), CHUNK))
    assert [len(c) for c in chunks] == expected_sizes
    assert b"".join(chunks) == data


@pytest.mark.parametrize("size_bytes", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 123])
def test_short_reads_give_the_same_chunks(size_bytes: int) -> None:
    """Boundaries depend only on the bytes: a trickling stream gives identical chunks."""
    data = os.urandom(size_bytes)
    reader = TrickleReader(data, seed=size_bytes)
    assert list(iter_chunks(reader, CHUNK)) == list(iter_chunks(io.BytesIO(data), CHUNK))


def test_real_pipe_with_small_writes() -> None:
    data = os.urandom(3 * CHUNK + 17)
    read_fd, write_fd = os.pipe()

    def writer() -> None:
        with open(write_fd, "wb", buffering=0) as pipe:
            for offset in range(0, len(data), 1000):
                pipe.write(data[offset : offset + 1000])

    thread = threading.Thread(target=writer)
    thread.start()
    with open(read_fd, "rb", buffering=0) as pipe:
        chunks = list(iter_chunks(pipe, CHUNK))
    thread.join()
    assert [len(c) for c in chunks] == [CHUNK, CHUNK, CHUNK, 17]
    assert b"".join(chunks) == data


def test_reads_at_most_one_chunk_ahead() -> None:
    """Streaming: taking one chunk consumes one chunk, and no read asks for more."""
    reader = TrickleReader(os.urandom(10 * CHUNK), seed=1)
    chunks = iter_chunks(reader, CHUNK)
    next(chunks)
    assert reader.consumed_bytes == CHUNK
    list(chunks)
    assert max(reader.asked) <= CHUNK


def test_text_stream_and_bad_chunk_size_rejected() -> None:
    with pytest.raises(TypeError, match="binary"):
        list(iter_chunks(io.StringIO("text"), CHUNK))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size_bytes"):
        list(iter_chunks(io.BytesIO(b"x"), CHUNK - 1))


def test_file_to_manifest() -> None:
    data = os.urandom(2 * CHUNK + 100)
    hasher = FileHasher()
    builder = ManifestBuilder(CHUNK)
    for chunk in iter_chunks(io.BytesIO(data), CHUNK):
        hasher.update(chunk)
        builder.add(chunk_id_of(chunk), len(chunk))
    manifest = builder.finish(hasher.digest(), created_ms=1_700_000_000_000)
    assert manifest.file_hash == blake3.blake3(data).digest()
    assert hasher.size_bytes == manifest.size_bytes == len(data)
    assert [ref.chunk_id for ref in manifest.chunks] == [
        chunk_id_of(data[:CHUNK]),
        chunk_id_of(data[CHUNK : 2 * CHUNK]),
        chunk_id_of(data[2 * CHUNK :]),
    ]


def test_empty_file_manifest() -> None:
    manifest = ManifestBuilder(CHUNK).finish(FileHasher().digest(), created_ms=0)
    assert manifest.chunks == ()
    assert manifest.size_bytes == 0


def test_builder_refuses_a_chunk_after_a_short_one() -> None:
    builder = ManifestBuilder(CHUNK)
    builder.add(chunk_id_of(b"a"), 1)
    with pytest.raises(ManifestError, match="only the last chunk"):
        builder.add(chunk_id_of(b"b"), 1)


def test_builder_refuses_a_file_with_too_many_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunker, "MANIFEST_CHUNKS_MAX", 2)
    builder = ManifestBuilder(CHUNK)
    builder.add(chunk_id_of(b"a"), CHUNK)
    builder.add(chunk_id_of(b"b"), CHUNK)
    with pytest.raises(ManifestError, match="larger chunk size"):
        builder.add(chunk_id_of(b"c"), CHUNK)
