"""The data path on a real 5-node network (rf=3), through the CLI: real processes, TLS and disks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pfs.config import NodeSettings
from p2pfs.cli import ExitCode
from p2pfs.replication.placement import ring_weight
from p2pfs.ring import PLACEMENT_VERSION_NEWEST, Ring, RingMember
from p2pfs.storage import CHUNK_SIZE_BYTES_DEFAULT

from testnet_helpers import Net, running_testnet, wait_for

pytestmark = pytest.mark.integration

CHUNK = CHUNK_SIZE_BYTES_DEFAULT
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 50 * 1024 * 1024]


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """One network for the whole file. The last two tests stop nodes: node3 comes back, but
    node2 and node4 stay down, so that test must remain the last."""
    with running_testnet(tmp_path_factory.mktemp("data-net"), nodes=5) as running:
        yield running


@pytest.fixture(scope="module")
def files(net, tmp_path_factory):
    """Files of the edge-case sizes, put at node1; name -> content."""
    directory = tmp_path_factory.mktemp("files")
    stored = {}
    for size in SIZES:
        path = directory / f"file-{size}"
        path.write_bytes(os.urandom(size))
        net.cli("put", str(path), node="node1")
        stored[path.name] = path.read_bytes()
    return stored


def get_bytes(net: Net, name: str, node: str, tmp_path: Path) -> bytes:
    out = tmp_path / f"out-{node}"
    net.cli("get", name, "-o", str(out), "--force", node=node)
    return out.read_bytes()


def test_round_trips_of_edge_sizes_put_at_one_node_get_at_another(net, files, tmp_path):
    for name, content in files.items():
        assert get_bytes(net, name, "node3", tmp_path) == content, name
    listed = net.json("ls", node="node5")
    assert listed["complete"]
    assert {f["name"]: f["size_bytes"] for f in listed["files"]} == {n: len(c) for n, c in files.items()}


def test_get_to_stdout_and_put_from_stdin(net, tmp_path):
    content = os.urandom(3 * CHUNK + 17)
    net.cli("put", "-", "--name", "from-stdin", stdin=content, node="node2")
    assert net.cli("get", "from-stdin", "-o", "-", node="node4").stdout == content


def test_stat_shows_every_chunk_on_rf_replicas(net, files):
    name = f"file-{CHUNK + 1}"
    stat = net.json("stat", name, node="node2")
    assert stat["size_bytes"] == CHUNK + 1
    assert len(stat["chunks"]) == 2
    node_ids = {net.node_id(n) for n in net.names}
    for chunk in stat["chunks"]:
        assert len(chunk["replicas"]) == 3
        assert set(chunk["replicas"]) <= node_ids


def test_concurrent_puts_to_one_name_end_with_one_winner_everywhere(net, tmp_path):
    contents = {}
    for who in ("a", "b"):
        path = tmp_path / who
        contents[who] = os.urandom(2 * CHUNK + 5) + who.encode()
        path.write_bytes(contents[who])
    first = net.cli_async("put", str(tmp_path / "a"), "--name", "contested", node="node1")
    second = net.cli_async("put", str(tmp_path / "b"), "--name", "contested", node="node4")
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert second.wait(timeout=120) == 0, second.stderr.read()
    seen = {get_bytes(net, "contested", node, tmp_path) for node in net.names}
    assert len(seen) == 1, "nodes disagree on the winner"
    assert seen.pop() in contents.values()


def test_rm_hides_the_name_from_ls_and_get_everywhere(net, tmp_path):
    path = tmp_path / "doomed"
    path.write_bytes(b"x" * 1000)
    net.cli("put", str(path), node="node2")
    net.cli("rm", "doomed", node="node5")
    for node in net.names:
        names = [f["name"] for f in net.json("ls", node=node)["files"]]
        assert "doomed" not in names
        result = net.cli("get", "doomed", "-o", str(tmp_path / "gone"), node=node, check=False)
        assert result.returncode == ExitCode.NOT_FOUND
        assert not (tmp_path / "gone").exists()
    again = net.cli("rm", "doomed", node="node1", check=False)
    assert again.returncode == ExitCode.NOT_FOUND


def test_corrupt_chunk_on_disk_is_detected_on_get_and_served_from_another_replica(net, tmp_path):
    content = os.urandom(3 * CHUNK)
    path = tmp_path / "fragile"
    path.write_bytes(content)
    net.cli("put", str(path), node="node1")
    stat = net.json("stat", "fragile", node="node1")
    chunk_id = stat["chunks"][1]["chunk_id"]
    holder_id = stat["chunks"][1]["replicas"][0]
    holder = next(n for n in net.names if net.node_id(n) == holder_id)
    chunk_file = net.directory / holder / "data" / "chunks" / chunk_id[:2] / chunk_id[2:]
    assert chunk_file.is_file()
    damaged = bytearray(chunk_file.read_bytes())
    damaged[100] ^= 0xFF
    chunk_file.write_bytes(bytes(damaged))
    # Through the holder, which reads its own (corrupt) copy first.
    assert get_bytes(net, "fragile", holder, tmp_path) == content
    assert any((net.directory / holder / "data" / "quarantine").iterdir())
    # Read repair put a good copy back.
    wait_for(lambda: chunk_file.is_file() and chunk_file.read_bytes() == content[CHUNK : 2 * CHUNK],
             timeout_s=20, what="the corrupt chunk to be repaired")


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["put", "/nonexistent/file"], ExitCode.BAD_INPUT, "no such file"),
        (["put", "/"], ExitCode.BAD_INPUT, "is a directory"),
        (["put", "-"], ExitCode.BAD_INPUT, "needs --name"),
        (["put", "README", "--name", ""], ExitCode.BAD_INPUT, "must not be empty"),
        (["put", "README", "--name", "n" * 1025], ExitCode.BAD_INPUT, "at most 1024 bytes"),
        (["get", "never-stored", "-o", "out"], ExitCode.NOT_FOUND, "no file named"),
        (["stat", "never-stored"], ExitCode.NOT_FOUND, "no file named"),
        (["get", "a/.."], ExitCode.BAD_INPUT, "give -o PATH"),
    ],
)
def test_bad_input_is_a_clear_error(net, tmp_path, args, code, message):
    (tmp_path / "README").write_text("hello")
    result = net.cli(*args, check=False, cwd=tmp_path)
    stderr = result.stderr.decode()
    assert result.returncode == code, stderr
    assert message in stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README"]


def test_a_name_that_looks_like_a_path_stays_a_name(net, tmp_path):
    (tmp_path / "payload").write_bytes(b"not a password file")
    net.cli("put", str(tmp_path / "payload"), "--name", "../../etc/passwd", node="node1")
    before = set(net.directory.rglob("*"))
    work = tmp_path / "work"
    work.mkdir()
    net.cli("get", "../../etc/passwd", node="node2", cwd=work)
    # The default output is the name's last part, in the current directory, and nothing else.
    assert [p.name for p in work.iterdir()] == ["passwd"]
    assert (work / "passwd").read_bytes() == b"not a password file"
    created = {p for p in set(net.directory.rglob("*")) - before if "passwd" in p.name}
    assert not created


def test_get_refuses_to_overwrite_without_force(net, files, tmp_path):
    out = tmp_path / "existing"
    out.write_bytes(b"keep me")
    result = net.cli("get", "file-1", "-o", str(out), check=False)
    assert result.returncode == ExitCode.BAD_INPUT and b"--force" in result.stderr
    assert out.read_bytes() == b"keep me"
    net.cli("get", "file-1", "-o", str(out), "--force")
    assert out.read_bytes() == files["file-1"]


def preference(net: Net, chunk_id_hex: str) -> list[str]:
    members = [RingMember(net.node_id(n), "", ring_weight(NodeSettings().capacity_bytes)) for n in net.names]
    return Ring.of_version(members, PLACEMENT_VERSION_NEWEST).preference_list(bytes.fromhex(chunk_id_hex), 3)


def test_put_with_a_node_down_succeeds_and_hints_reach_it_when_it_returns(net, tmp_path):
    net.kill("node3")
    down_id = net.node_id("node3")
    content = os.urandom(12 * CHUNK)
    (tmp_path / "while-down").write_bytes(content)
    net.cli("put", str(tmp_path / "while-down"), node="node1")
    assert get_bytes(net, "while-down", "node2", tmp_path) == content
    stat = net.json("stat", "while-down", node="node1")
    owed = [c["chunk_id"] for c in stat["chunks"] if down_id in preference(net, c["chunk_id"])]
    assert owed, "with 12 chunks over 5 nodes, node3 should own some"
    for chunk in stat["chunks"]:
        assert len(chunk["replicas"]) == 3, "stand-ins keep rf copies while an owner is down"
    net.start("node3")

    def delivered() -> bool:
        chunks = net.json("stat", "while-down", node="node1")["chunks"]
        return all(down_id in c["replicas"] for c in chunks if c["chunk_id"] in owed)

    wait_for(delivered, timeout_s=60, what="hinted chunks to reach node3")
    # Stand-ins drop their copies once handed over: rf copies, not more.
    wait_for(lambda: all(len(c["replicas"]) == 3 for c in net.json("stat", "while-down")["chunks"]),
             timeout_s=30, what="stand-ins to drop handed-over copies")


def test_gets_survive_sigkill_of_two_nodes(net, files, tmp_path):
    """The edge sizes, put at node1 before the first test, read with two of five nodes killed."""
    net.kill("node2")
    net.kill("node4")
    for name, content in files.items():
        assert get_bytes(net, name, "node5", tmp_path) == content, name
        assert get_bytes(net, name, "node1", tmp_path) == content, name
