"""Interrupted transfers resume through the real CLI against real daemons: a get killed
half-way fetches only its missing chunks, and a put run again does not send the chunks
the cluster already holds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from p2pfs import errors, identity, testnet
from p2pfs.client import Client
from p2pfs.client.resume import PART_SUFFIX, STATE_SUFFIX, cut_file, file_version, put_path
from p2pfs.replication import messages as dm
from p2pfs.storage.manifest import CHUNK_SIZE_BYTES_DEFAULT
from testnet_helpers import CLI_TIMEOUT_S, running_testnet

pytestmark = pytest.mark.integration

CHUNK = CHUNK_SIZE_BYTES_DEFAULT
BIG_BYTES = 50 * 1024 * 1024 + 777
# A get or put is stopped once this many chunks have reached their destination.
CHUNKS_BEFORE_KILL = 3
# How often the test looks at how far a transfer it means to kill has got: often,
# since a 50 MiB transfer on loopback takes well under a second of its own.
POLL_INTERVAL_S = 0.002


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with running_testnet(tmp_path_factory.mktemp("resume"), nodes=3) as network:
        yield network


def cli_process(net, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "p2pfs", "--node", net.address("node1"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=net.env())


def kill_when(process: subprocess.Popen, reached, what: str) -> None:
    """SIGKILL ``process`` as soon as ``reached()``; fail if it ended first."""
    deadline = time.monotonic() + CLI_TIMEOUT_S
    while not reached():
        assert process.poll() is None, f"the transfer ended before {what}: {process.stderr.read().decode()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_INTERVAL_S)  # polling another process's progress, under a deadline
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=CLI_TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL


def partial_size(part: Path) -> int:
    try:
        return part.stat().st_size
    except FileNotFoundError:
        return 0


def killed_get(net, name: str, out: Path) -> tuple[Path, Path]:
    part, state = out.parent / f".{out.name}{PART_SUFFIX}", out.parent / f".{out.name}{STATE_SUFFIX}"
    process = cli_process(net, "get", name, "-o", str(out))
    kill_when(process, lambda: partial_size(part) > CHUNKS_BEFORE_KILL * CHUNK,
              f"{CHUNKS_BEFORE_KILL} chunks of {name} were written")
    assert not out.exists() and part.exists() and state.exists()
    return part, state


def test_a_killed_get_resumes_with_only_the_missing_chunks(net, tmp_path):
    data = os.urandom(BIG_BYTES)
    (tmp_path / "big.bin").write_bytes(data)
    net.cli("put", str(tmp_path / "big.bin"), "--name", "resume/big.bin")
    out = tmp_path / "out.bin"
    part, state = killed_get(net, "resume/big.bin", out)
    kept = partial_size(part)
    # A torn last write costs only its chunk: damage the partial file's end on purpose.
    with open(part, "r+b") as f:
        f.seek(kept - 10)
        f.write(b"\xff" * 10)
    verified_bytes = (kept - 10) // CHUNK * CHUNK

    result = net.cli("get", "resume/big.bin", "-o", str(out), "--json")
    facts = json.loads(result.stderr)
    assert facts["resumed_bytes"] == verified_bytes >= CHUNKS_BEFORE_KILL * CHUNK
    assert facts["received_bytes"] == BIG_BYTES - verified_bytes
    assert out.read_bytes() == data
    assert not part.exists() and not state.exists()

    # A get with nothing to resume receives the whole file.
    again = json.loads(net.cli("get", "resume/big.bin", "-o", str(out), "--force", "--json").stderr)
    assert (again["resumed_bytes"], again["received_bytes"]) == (0, BIG_BYTES)


def test_a_resumed_get_of_a_name_with_new_content_never_mixes_versions(net, tmp_path):
    old, new = os.urandom(BIG_BYTES), os.urandom(BIG_BYTES)
    (tmp_path / "old.bin").write_bytes(old)
    (tmp_path / "new.bin").write_bytes(new)
    net.cli("put", str(tmp_path / "old.bin"), "--name", "resume/changing.bin")
    out = tmp_path / "out.bin"
    part, state = killed_get(net, "resume/changing.bin", out)
    net.cli("put", str(tmp_path / "new.bin"), "--name", "resume/changing.bin")

    facts = json.loads(net.cli("get", "resume/changing.bin", "-o", str(out), "--json").stderr)
    assert (facts["resumed_bytes"], facts["received_bytes"]) == (0, BIG_BYTES)
    assert out.read_bytes() == new
    assert not part.exists() and not state.exists()


def chunks_held(net, chunk_ids: list[bytes]) -> int:
    """How many of ``chunk_ids`` every one of their nodes holds, asked through the library."""
    ident = identity.load_identity(net.directory / testnet.CLIENT_DIR)

    async def ask() -> int:
        with trio.fail_after(CLI_TIMEOUT_S):
            async with Client.connect(ident, net.status()["node2"].address) as client:
                return sum((await client.held_chunks(tuple(chunk_ids))).held)

    return trio.run(ask)


def test_an_interrupted_put_run_again_sends_only_what_the_cluster_lacks(net, tmp_path):
    path = tmp_path / "upload.bin"
    path.write_bytes(os.urandom(BIG_BYTES))
    with open(path, "rb") as f:
        chunk_ids = [ref.chunk_id for ref in cut_file(f, CHUNK_SIZE_BYTES_DEFAULT).chunks]
    assert chunks_held(net, chunk_ids) == 0
    process = cli_process(net, "put", str(path), "--name", "resume/upload.bin")
    kill_when(process, lambda: chunks_held(net, chunk_ids) >= CHUNKS_BEFORE_KILL,
              f"{CHUNKS_BEFORE_KILL} chunks were held by all their nodes")
    held_before = chunks_held(net, chunk_ids)
    not_stored = net.cli("stat", "resume/upload.bin", check=False)
    assert not_stored.returncode != 0  # the put never finished: no name

    facts = json.loads(net.cli("put", str(path), "--name", "resume/upload.bin", "--json").stdout)
    assert facts["size_bytes"] == BIG_BYTES
    assert facts["sent_bytes"] <= BIG_BYTES - held_before * CHUNK
    out = tmp_path / "back.bin"
    net.cli("get", "resume/upload.bin", "-o", str(out))
    assert out.read_bytes() == path.read_bytes()

    # Everything is held now: the same file under another name sends nothing.
    copy = json.loads(net.cli("put", str(path), "--name", "resume/copy.bin", "--json").stdout)
    assert copy["sent_bytes"] == 0


def test_a_node_refuses_a_put_that_skips_chunks_it_does_not_hold(net, tmp_path):
    """A client cannot make a name out of chunks the cluster lacks, or send a chunk
    that is not what the manifest says."""
    path = tmp_path / "small.bin"
    path.write_bytes(os.urandom(2 * CHUNK + 5))
    with open(path, "rb") as f:
        manifest = cut_file(f, CHUNK_SIZE_BYTES_DEFAULT)
    data = path.read_bytes()
    ident = identity.load_identity(net.directory / testnet.CLIENT_DIR)

    async def put(held: list[bool], body: bytes):
        async def pieces():
            yield body

        with trio.fail_after(CLI_TIMEOUT_S):
            async with Client.connect(ident, net.status()["node1"].address) as client:
                return await client.put_known("resume/forged.bin", manifest.encode(), dm.held_bitmap(held),
                                              pieces())

    with pytest.raises(errors.Unavailable, match="fewer than the write quorum"):
        trio.run(put, [True, False, False], data[CHUNK:])
    with pytest.raises(errors.BadInput, match="does not match its id"):
        trio.run(put, [False, False, False], data[:CHUNK] + bytes(CHUNK) + data[2 * CHUNK:])
    assert net.cli("stat", "resume/forged.bin", check=False).returncode != 0
    reply = trio.run(put, [False, False, False], data)
    assert reply.size_bytes == len(data) and reply.file_hash == manifest.file_hash


def put_changed_after_the_cut(net, path: Path, name: str, change) -> None:
    """Put ``path`` through ``put_path``, calling ``change(version)`` (the file's size and
    mtime at the cut) after the cut and before anything is sent."""
    ident = identity.load_identity(net.directory / testnet.CLIENT_DIR)

    async def run(what, attempt, resend):
        with open(path, "rb") as f:  # the cut happened already: its version is the file's now
            version = file_version(f)
        change(version)
        async with Client.connect(ident, net.status()["node1"].address) as client:
            return await attempt(client)

    async def put():
        with trio.fail_after(CLI_TIMEOUT_S), open(path, "rb") as f:
            await put_path(run, path, f, name, lambda count_bytes: None)

    trio.run(put)


@pytest.mark.parametrize("mtime_kept", [False, True], ids=["mtime-moved", "mtime-set-back"])
def test_a_file_changed_between_the_cut_and_the_send_is_never_stored(net, tmp_path, mtime_kept):
    """The send reuses the cut's ids: a file rewritten in between (same size) is refused, by
    the client when its mtime moved, by the node's id check when the mtime was set back."""
    path = tmp_path / "changing.bin"
    path.write_bytes(os.urandom(3 * CHUNK + 11))
    name = f"resume/changing-{mtime_kept}.bin"

    def change(version: tuple[int, int]) -> None:
        size_bytes, mtime_ns = version
        with open(path, "r+b") as f:
            f.seek(CHUNK + 5)
            f.write(os.urandom(100))
        later_ns = mtime_ns if mtime_kept else mtime_ns + 2_000_000_000  # moved past any timestamp granularity
        os.utime(path, ns=(later_ns, later_ns))
        assert path.stat().st_size == size_bytes

    expected = "does not match its id" if mtime_kept else "changed while it was read"
    with pytest.raises(errors.BadInput, match=expected):
        put_changed_after_the_cut(net, path, name, change)
    assert net.cli("stat", name, check=False).returncode != 0


def test_a_node_sends_only_the_chunks_after_the_first_asked_for_of_the_same_version(net, tmp_path):
    """The node side of a resumed get, asked directly: the body starts at ``first_chunk``
    only when the client's partial copy is of the newest version."""
    data = os.urandom(3 * CHUNK + 99)
    (tmp_path / "three.bin").write_bytes(data)
    stored = json.loads(net.cli("put", str(tmp_path / "three.bin"), "--name", "resume/three.bin", "--json").stdout)
    ident = identity.load_identity(net.directory / testnet.CLIENT_DIR)

    async def get_from(file_hash: bytes, first_chunk: int) -> tuple[int, bytes]:
        received = bytearray()
        with trio.fail_after(CLI_TIMEOUT_S):
            async with Client.connect(ident, net.status()["node3"].address) as client:
                async with client.get_from("resume/three.bin", file_hash, first_chunk) as (header, body):
                    async for piece in body:
                        received += piece
        return header.first_chunk, bytes(received)

    file_hash = bytes.fromhex(stored["file_hash"])
    assert trio.run(get_from, file_hash, 2) == (2, data[2 * CHUNK:])
    assert trio.run(get_from, file_hash, 4) == (4, b"")
    assert trio.run(get_from, bytes(32), 2) == (0, data)  # another version's partial copy: from the start
    assert trio.run(get_from, b"", 0) == (0, data)
