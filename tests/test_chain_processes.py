"""Chain writes between real daemons (TLS, disks): a node lost while a put is under way.

Five nodes, rf = 3, w = 2, chain writes (the default). A 24 MiB put at node1 sends each chunk
down a chain of its replicas; once node3 has stored some of the put's chunks (so the put is in
flight), node3 is paused (SIGSTOP) or killed (SIGKILL). Node3 sits at the head of some chains
(node1 hears nothing back: node3 failed, the rest unacknowledged and written directly) and at
the tail of others (its healthy predecessor reports it failed). Either way: the put is
acknowledged, reads back byte-exact, every chunk has rf holders while node3 is away (stand-ins
with hints), and once node3 is back the hints bring it every chunk it owns.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from p2pfs.config import NodeSettings
from p2pfs.replication.placement import ring_weight
from p2pfs.ring import PLACEMENT_VERSION_NEWEST, Ring, RingMember

from testnet_helpers import Net, running_testnet, wait_for

pytestmark = pytest.mark.integration

FILE_BYTES = 24 * 1024 * 1024 + 123
# A paused node costs each chain through it one replica timeout: short, for a quick test.
OVERRIDES = {"replication": {"replica_timeout_s": 3.0, "replica_backoff_s": 3.0}}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with running_testnet(tmp_path_factory.mktemp("chain-net"), nodes=5, overrides=OVERRIDES) as running:
        yield running


def chunks_held(net: Net, name: str) -> int:
    chunk_dir = net.directory / name / "data" / "chunks"
    return sum(1 for path in chunk_dir.rglob("*") if path.is_file()) if chunk_dir.is_dir() else 0


def preference(net: Net, chunk_id_hex: str) -> list[str]:
    members = [RingMember(net.node_id(n), "", ring_weight(NodeSettings().capacity_bytes)) for n in net.names]
    return Ring.of_version(members, PLACEMENT_VERSION_NEWEST).preference_list(bytes.fromhex(chunk_id_hex), 3)


def put_cutting_node3(net: Net, tmp_path: Path, name: str, cut) -> bytes:
    """Put a file at node1 and ``cut`` node3 once it holds some of the put's chunks."""
    content = os.urandom(FILE_BYTES)
    path = tmp_path / name
    path.write_bytes(content)
    before = chunks_held(net, "node3")
    put = net.cli_async("put", str(path), "--name", name, node="node1")
    try:
        wait_for(lambda: chunks_held(net, "node3") > before or put.poll() is not None, timeout_s=120,
                 what="node3 to store a chunk of the put", interval_s=0.02)
        assert put.poll() is None, "the put ended before node3 was cut: the test would prove nothing"
        cut(net.status()["node3"].pid)
        assert put.wait(timeout=180) == 0, put.stderr.read().decode()
    finally:
        if put.poll() is None:
            put.kill()
    return content


def check_acknowledged_file(net: Net, tmp_path: Path, name: str, content: bytes) -> list[str]:
    out = tmp_path / f"{name}.out"
    net.cli("get", name, "-o", str(out), "--force", node="node2")
    assert out.read_bytes() == content
    node3 = net.node_id("node3")
    stat = net.json("stat", name, node="node1")
    owed = [c["chunk_id"] for c in stat["chunks"] if node3 in preference(net, c["chunk_id"])]
    assert owed, "node3 owns none of the chunks: the cut tested nothing"
    for chunk in stat["chunks"]:
        # Counted on the disks: a stat asks every live node, but one that does not answer in
        # time (a busy machine) is left out of its list, as if it held nothing.
        others = [n for n in net.names if n != "node3" and held_by(net, n, chunk["chunk_id"])]
        assert len(others) >= 2, "fewer than w copies on the nodes that stayed"
        if chunk["chunk_id"] in owed and not held_by_node3(net, chunk["chunk_id"]):
            assert len(others) >= 3, "no stand-in keeps node3's copy"
    return owed


def held_by(net: Net, node: str, chunk_id_hex: str) -> bool:
    """Read from the node's disk (a paused node answers no stat)."""
    return (net.directory / node / "data" / "chunks" / chunk_id_hex[:2] / chunk_id_hex[2:]).is_file()


def held_by_node3(net: Net, chunk_id_hex: str) -> bool:
    return held_by(net, "node3", chunk_id_hex)


def wait_for_node3_to_get(net: Net, name: str, owed: list[str]) -> None:
    node3 = net.node_id("node3")

    def delivered() -> bool:
        chunks = net.json("stat", name, node="node1")["chunks"]
        return all(node3 in c["replicas"] for c in chunks if c["chunk_id"] in owed)

    wait_for(delivered, timeout_s=120, what="node3 to receive the chunks it owns (hints)")


def test_node3_paused_mid_put(net, tmp_path):
    content = put_cutting_node3(net, tmp_path, "paused", lambda pid: os.kill(pid, signal.SIGSTOP))
    try:
        owed = check_acknowledged_file(net, tmp_path, "paused", content)
    finally:
        os.kill(net.status()["node3"].pid, signal.SIGCONT)
    wait_for_node3_to_get(net, "paused", owed)


def test_node3_killed_mid_put(net, tmp_path):
    content = put_cutting_node3(net, tmp_path, "killed", lambda pid: os.kill(pid, signal.SIGKILL))
    wait_for(lambda: not net.status()["node3"].running, timeout_s=30, what="node3 to be gone")
    owed = check_acknowledged_file(net, tmp_path, "killed", content)
    net.start("node3")
    wait_for_node3_to_get(net, "killed", owed)
    out = tmp_path / "again"
    net.cli("get", "killed", "-o", str(out), node="node3")
    assert out.read_bytes() == content
