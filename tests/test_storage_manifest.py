"""Manifests: content addresses, the checked wire form, and hostile input."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfs.storage.manifest import (
    CHUNK_ID_BYTES,
    CHUNK_SIZE_BYTES_MAX,
    CHUNK_SIZE_BYTES_MIN,
    MANIFEST_ENCODED_BYTES_MAX,
    ChunkRef,
    Manifest,
    ManifestError,
    chunk_id_of,
)

ZERO_ID = bytes(CHUNK_ID_BYTES)


def test_chunk_id_is_blake3() -> None:
    """Pinned to the BLAKE3 test vector: the id is part of the wire and disk format."""
    assert chunk_id_of(b"").hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert chunk_id_of(memoryview(b"abc")) == chunk_id_of(b"abc")
    assert len(chunk_id_of(b"abc")) == CHUNK_ID_BYTES


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    chunk_size_bytes = draw(st.sampled_from([CHUNK_SIZE_BYTES_MIN, 65_536, 1 << 20, CHUNK_SIZE_BYTES_MAX]))
    chunk_count = draw(st.integers(0, 20))
    last_bytes = draw(st.integers(1, chunk_size_bytes))
    sizes = [chunk_size_bytes] * (chunk_count - 1) + [last_bytes] if chunk_count else []
    chunks = tuple(ChunkRef(draw(st.binary(min_size=32, max_size=32)), size) for size in sizes)
    return Manifest(
        chunks=chunks,
        size_bytes=sum(sizes),
        file_hash=draw(st.binary(min_size=32, max_size=32)),
        created_ms=draw(st.integers(0, 2**48 - 1)),
        chunk_size_bytes=chunk_size_bytes,
    )


@given(manifests())
def test_round_trip(manifest: Manifest) -> None:
    encoded = manifest.encode()
    assert Manifest.decode(encoded) == manifest
    assert len(encoded) <= MANIFEST_ENCODED_BYTES_MAX


def test_four_gib_manifest_is_small() -> None:
    """A name entry carries its manifest inline; a 4 GiB file's must stay small."""
    chunks = tuple(ChunkRef(chunk_id_of(i.to_bytes(4, "big")), 1 << 20) for i in range(4096))
    manifest = Manifest(chunks, 4 << 30, ZERO_ID, 0, 1 << 20)
    assert len(manifest.encode()) < 4096 * 33


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_decode_random_bytes_only_raises_manifest_error(data: bytes) -> None:
    try:
        manifest = Manifest.decode(data)
    except ManifestError:
        return
    assert Manifest.decode(manifest.encode()) == manifest


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=70),
    lambda children: st.lists(children, max_size=7) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=20,
)


@settings(max_examples=300)
@given(_msgpack_values)
def test_decode_well_formed_msgpack_of_wrong_shape_raises_manifest_error(value: object) -> None:
    with pytest.raises(ManifestError):
        Manifest.decode(msgpack.packb(value, use_bin_type=True))


@given(manifests(), st.data())
def test_decode_damaged_encoding_raises_manifest_error_or_is_consistent(
    manifest: Manifest, data: st.DataObject
) -> None:
    encoded = bytearray(manifest.encode())
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= data.draw(st.integers(1, 255))
    if data.draw(st.booleans()):
        del encoded[data.draw(st.integers(0, len(encoded))) :]
    try:
        decoded = Manifest.decode(bytes(encoded))
    except ManifestError:
        return
    # A flip inside an id or the file hash still decodes: only the chunk hashes catch that.
    assert decoded.size_bytes == sum(ref.size_bytes for ref in decoded.chunks)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ([1, 4096, 5000, ZERO_ID, 0, ZERO_ID], "need 2 chunk ids"),
        ([1, 4096, 4096, ZERO_ID, 0, ZERO_ID * 2], "need 1 chunk ids"),
        ([1, 4096, 10, ZERO_ID, 0, ZERO_ID[:31]], "need 1 chunk ids"),
        ([3, 4096, 10, ZERO_ID, 0, ZERO_ID], "unknown manifest format"),
        ([2, 4096, 10, ZERO_ID, 0, ZERO_ID], "inline content is 32 bytes, the file 10"),
        ([2, 4096, 32, ZERO_ID, 0, ZERO_ID], "does not match the file hash"),
        ([2, 4096, 0, ZERO_ID, 0, b""], "non-empty byte string"),
        ([1, 100, 10, ZERO_ID, 0, ZERO_ID], "chunk_size_bytes"),
        ([1, 4096, -1, ZERO_ID, 0, b""], "size_bytes"),
        ([1, 4096, 10, ZERO_ID[:5], 0, ZERO_ID], "file_hash"),
        ([1, 4096, 10, ZERO_ID, -5, ZERO_ID], "created_ms"),
        ([True, 4096, 10, ZERO_ID, 0, ZERO_ID], "unknown manifest format"),
        ([1, 4096, 10, ZERO_ID, 0], "6-item array"),
    ],
)
def test_decode_rejects_inconsistent_fields(fields: list, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.decode(msgpack.packb(fields, use_bin_type=True))


def test_decode_rejects_trailing_bytes_and_oversize() -> None:
    manifest = Manifest((ChunkRef(ZERO_ID, 10),), 10, ZERO_ID, 0, 4096)
    with pytest.raises(ManifestError):
        Manifest.decode(manifest.encode() + b"\x00")
    with pytest.raises(ManifestError, match="exceeds"):
        Manifest.decode(b"\x00" * (MANIFEST_ENCODED_BYTES_MAX + 1))


def test_constructor_checks_layout() -> None:
    with pytest.raises(ManifestError, match="chunk 0 is 10 bytes, expected 4096"):
        Manifest((ChunkRef(ZERO_ID, 10), ChunkRef(ZERO_ID, 10)), 4106, ZERO_ID, 0, 4096)
    with pytest.raises(ManifestError, match="need 1 chunks"):
        Manifest((ChunkRef(ZERO_ID, 5), ChunkRef(ZERO_ID, 5)), 10, ZERO_ID, 0, 4096)
    with pytest.raises(ManifestError, match="tuple"):
        Manifest([ChunkRef(ZERO_ID, 10)], 10, ZERO_ID, 0, 4096)  # type: ignore[arg-type]
    with pytest.raises(ManifestError, match="chunk_id"):
        ChunkRef(b"short", 10)
    with pytest.raises(ManifestError, match="size_bytes"):
        ChunkRef(ZERO_ID, 0)
