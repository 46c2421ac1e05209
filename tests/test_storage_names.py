"""Name index: validation, last-writer-wins in any order, tombstones, opaque keys."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfs.storage import names
from p2pfs.storage.hlc import Timestamp
from p2pfs.storage.manifest import ChunkRef, Manifest, ManifestError, chunk_id_of
from p2pfs.storage.names import NAMES_FILE_NAME, NameEntry, NameIndex
from p2pfs.storage.naming import NAME_BYTES_MAX, BadName, validate_name

# This property test is about ordering, not durability: on tmpfs (where there is
# one) its hundreds of fsynced commits don't wait on a busy disk.
MEMORY_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None

WRITER_A = "a" * 64
WRITER_B = "b" * 64


def _manifest(content: bytes) -> Manifest:
    return Manifest((ChunkRef(chunk_id_of(content), len(content)),), len(content), chunk_id_of(content), 0, 4096)


def _put(name: str, wall_ms: int, writer: str = WRITER_A, content: bytes = b"x", logical: int = 0) -> NameEntry:
    return NameEntry(name, Timestamp(wall_ms, logical), writer, _manifest(content))


def _delete(name: str, wall_ms: int, writer: str = WRITER_A) -> NameEntry:
    return NameEntry(name, Timestamp(wall_ms, 0), writer, None)


@pytest.fixture
def index(tmp_path: Path) -> Iterator[NameIndex]:
    with NameIndex(tmp_path / NAMES_FILE_NAME) as opened:
        yield opened


# ---- validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "must not be empty"),
        ("a\x00b", "NUL"),
        ("x" * (NAME_BYTES_MAX + 1), f"at most {NAME_BYTES_MAX} bytes"),
        ("é" * (NAME_BYTES_MAX // 2 + 1), "bytes of UTF-8"),  # 1026 bytes, only 513 characters
        ("bad\udc80", "lone surrogate"),
        (b"bytes", "must be a str"),
    ],
)
def test_bad_names(name: object, message: str) -> None:
    with pytest.raises(BadName, match=message):
        validate_name(name)  # type: ignore[arg-type]


def test_bad_name_is_a_value_error_and_good_names_pass_unchanged() -> None:
    assert issubclass(BadName, ValueError)
    good = ["a", "x" * NAME_BYTES_MAX, "é" * (NAME_BYTES_MAX // 2), "../../etc/passwd", " spaces /\\:*? ", "日本"]
    for name in good:
        assert validate_name(name) is name


def test_entry_checked_when_built() -> None:
    with pytest.raises(BadName):
        _put("", 1)
    with pytest.raises(ValueError, match="writer"):
        _put("n", 1, writer="A" * 64)  # uppercase would order differently from the id bytes
    with pytest.raises(ValueError, match="writer"):
        _put("n", 1, writer="ab")


# ---- last writer wins --------------------------------------------------------------


def test_later_version_wins_and_apply_reports_change(index: NameIndex) -> None:
    old, new = _put("n", 10, content=b"old"), _put("n", 11, content=b"new")
    assert index.apply(new) is True
    assert index.apply(old) is False
    assert index.apply(new) is False  # idempotent
    assert index.get("n") == new


def test_writer_breaks_ties_on_equal_clock(index: NameIndex) -> None:
    from_a, from_b = _put("n", 10, WRITER_A, b"a"), _put("n", 10, WRITER_B, b"b")
    index.apply(from_b)
    index.apply(from_a)
    assert index.get("n") == from_b


def test_tombstone_wins_over_older_and_loses_to_newer(index: NameIndex) -> None:
    index.apply(_put("n", 10))
    tombstone = _delete("n", 11)
    assert index.apply(tombstone) is True
    assert index.get("n") == tombstone
    assert index.apply(_put("n", 9)) is False  # a late, older write does not resurrect it
    assert list(index.list()) == []
    assert list(index.list(include_tombstones=True)) == [tombstone]
    newer = _put("n", 12)
    assert index.apply(newer) is True
    assert index.get("n") == newer


_entries = st.lists(
    st.builds(
        lambda name, wall_ms, logical, writer, content: NameEntry(
            name, Timestamp(wall_ms, logical), writer, None if content is None else _manifest(content)
        ),
        name=st.sampled_from(["a", "b", "é"]),
        wall_ms=st.integers(0, 3),
        logical=st.integers(0, 1),
        writer=st.sampled_from([WRITER_A, WRITER_B]),
        content=st.none() | st.sampled_from([b"1", b"2"]),  # equal keys with different payloads too
    ),
    max_size=12,
)


def _winners(entries: list[NameEntry]) -> dict[str, NameEntry]:
    """The oracle: per name, the greatest (key, encoded bytes)."""
    best: dict[str, NameEntry] = {}
    for entry in entries:
        held = best.get(entry.name)
        if held is None or (entry.key, entry.encode()) > (held.key, held.encode()):
            best[entry.name] = entry
    return best


@given(_entries, st.randoms(use_true_random=False))
def test_supersedes_is_order_independent(entries: list[NameEntry], rng) -> None:
    shuffled = list(entries)
    rng.shuffle(shuffled)
    held: dict[str, NameEntry] = {}
    for entry in shuffled:
        if entry.name not in held or entry.supersedes(held[entry.name]):
            held[entry.name] = entry
    assert held == _winners(entries)


@settings(max_examples=25, deadline=None)
@given(_entries, st.permutations(range(12)))
def test_index_final_state_independent_of_apply_order(entries: list[NameEntry], order: list[int]) -> None:
    permuted = [entries[i] for i in order if i < len(entries)]
    with tempfile.TemporaryDirectory(dir=MEMORY_DIR) as tmp:
        with NameIndex(Path(tmp) / "in-order.sqlite") as first, NameIndex(Path(tmp) / "permuted.sqlite") as second:
            for entry in entries:
                first.apply(entry)
            for entry in permuted:
                second.apply(entry)
            expected = sorted(_winners(entries).values(), key=lambda e: e.name.encode())
            assert list(first.list(include_tombstones=True)) == expected
            assert list(second.list(include_tombstones=True)) == expected


def test_concurrent_applies_from_threads(index: NameIndex) -> None:
    entries = [_put("n", wall_ms, writer) for wall_ms in range(20) for writer in (WRITER_A, WRITER_B)]
    barrier = threading.Barrier(4)

    def apply_some(offset: int) -> None:
        barrier.wait()
        for entry in entries[offset::4]:
            index.apply(entry)

    threads = [threading.Thread(target=apply_some, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert index.get("n") == _put("n", 19, WRITER_B)


# ---- names are opaque keys ---------------------------------------------------------


def test_path_like_name_creates_nothing_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    hostile = ["../../etc/passwd", "/etc/passwd", "..", "a/../../b", "C:\\Windows\\x", "names.sqlite-wal"]
    with NameIndex(data_dir / NAMES_FILE_NAME) as index:
        for name in hostile:
            assert index.apply(_put(name, 1)) is True
        assert {entry.name for entry in index.list()} == set(hostile)
        assert index.get("../../etc/passwd") == _put("../../etc/passwd", 1)
        created = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert created == ["cwd", "data", "data/names.sqlite", "data/names.sqlite-shm", "data/names.sqlite-wal"]


# ---- listing and lifecycle ---------------------------------------------------------


def test_list_by_prefix_in_byte_order(index: NameIndex) -> None:
    all_names = ["a", "a/1", "a/2", "a0", "ab", "b", "f", "é", "é/x", "éa"]  # é is 0xc3 0xa9: after f
    for name in reversed(all_names):
        index.apply(_put(name, 1))
    assert [e.name for e in index.list()] == all_names
    assert [e.name for e in index.list("a")] == ["a", "a/1", "a/2", "a0", "ab"]
    assert [e.name for e in index.list("a/")] == ["a/1", "a/2"]
    assert [e.name for e in index.list("é")] == ["é", "é/x", "éa"]
    assert [e.name for e in index.list("zz")] == []


def test_list_pages_through_many_entries(index: NameIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(names, "LIST_PAGE_ROWS", 3)
    expected = [f"n{i:02d}" for i in range(10)]
    for name in expected:
        index.apply(_put(name, 1))
    index.apply(_delete("n05", 2))
    assert [e.name for e in index.list("n")] == [n for n in expected if n != "n05"]
    assert [e.name for e in index.list(include_tombstones=True)] == expected


def test_purge_drops_only_old_tombstones(index: NameIndex) -> None:
    index.apply(_delete("old", 5))
    index.apply(_delete("new", 20))
    index.apply(_put("live", 1))
    assert index.purge_tombstones(older_than=Timestamp(10, 0)) == 1
    assert index.get("old") is None
    assert index.get("new") == _delete("new", 20)
    assert index.get("live") == _put("live", 1)


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / NAMES_FILE_NAME
    entry = _put("kept", 7, content=b"payload")
    with NameIndex(path) as index:
        index.apply(entry)
    with NameIndex(path) as index:
        assert index.get("kept") == entry


def test_get_validates_name(index: NameIndex) -> None:
    with pytest.raises(BadName):
        index.get("")
    assert index.get("absent") is None


# ---- wire form ---------------------------------------------------------------------


def test_entry_round_trip() -> None:
    for entry in [_put("name/é", 1_700_000_000_000, logical=3), _delete("gone", 5)]:
        assert NameEntry.decode(entry.encode()) == entry


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_entry_decode_of_random_bytes_only_raises_manifest_error(data: bytes) -> None:
    try:
        entry = NameEntry.decode(data)
    except ManifestError:
        return
    assert NameEntry.decode(entry.encode()) == entry


@pytest.mark.parametrize(
    "fields",
    [
        [1, "", 1, 0, WRITER_A, None],  # empty name
        [1, b"bytes", 1, 0, WRITER_A, None],  # name not text
        [1, "n", -1, 0, WRITER_A, None],  # bad timestamp
        [1, "n", 1, 0, "zz", None],  # bad writer
        [1, "n", 1, 0, WRITER_A, b"not a manifest"],
        [1, "n", 1, 0, WRITER_A, "text"],
        [9, "n", 1, 0, WRITER_A, None],  # unknown format
    ],
)
def test_entry_decode_rejects_bad_fields(fields: list) -> None:
    import msgpack

    with pytest.raises(ManifestError):
        NameEntry.decode(msgpack.packb(fields, use_bin_type=True))


def test_index_file_is_sqlite_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / NAMES_FILE_NAME
    with NameIndex(path) as index:
        index.apply(_put("n", 1))
        assert os.path.exists(f"{path}-wal")
    with open(path, "rb") as f:
        assert f.read(16) == b"SQLite format 3\x00"
