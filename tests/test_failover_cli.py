"""Failover through the real CLI against real daemons: several --node addresses, some
of them SIGKILLed or SIGSTOPped, and the member list a client remembers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from p2pfs import testnet
from p2pfs.cli import ExitCode
from p2pfs.client.members import MEMBERS_FILE
from testnet_helpers import CLI_TIMEOUT_S, Net, running_testnet

pytestmark = pytest.mark.integration


def p2pfs(net: Net, *args: str, identity: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = net.env()
    if identity is not None:
        env["P2PFS_IDENTITY"] = str(identity)
    return subprocess.run([sys.executable, "-m", "p2pfs", *args], capture_output=True, env=env,
                          timeout=CLI_TIMEOUT_S, cwd=cwd)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def listing(result: subprocess.CompletedProcess) -> dict:
    """ls's answer. With nodes down some ranges may have too few replicas answering: ls then
    still lists what it found, says that names may be missing, and exits 4."""
    assert result.returncode in (0, ExitCode.UNAVAILABLE), result.stderr.decode()
    listed = json.loads(result.stdout)
    assert listed["complete"] is (result.returncode == 0)
    return listed


@contextlib.contextmanager
def stopped(net: Net, name: str) -> Iterator[None]:
    """SIGSTOP a node (it keeps its port and accepts connections, but answers nothing)."""
    pid = net.status()[name].pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def every_operation_succeeds(net: Net, nodes: list[str], tmp_path: Path, label: str) -> None:
    """put, get, stat, ls, members and rm, each given ``nodes`` (one --node each)."""
    given = [arg for name in nodes for arg in ("--node", net.address(name))]
    data = os.urandom(300_000)
    (tmp_path / f"{label}.bin").write_bytes(data)
    ok(p2pfs(net, *given, "put", str(tmp_path / f"{label}.bin"), "--name", f"failover/{label}"))
    ok(p2pfs(net, *given, "get", f"failover/{label}", "-o", str(tmp_path / f"{label}.out")))
    assert (tmp_path / f"{label}.out").read_bytes() == data
    assert json.loads(ok(p2pfs(net, *given, "stat", f"failover/{label}", "--json")))["size_bytes"] == len(data)
    listed = listing(p2pfs(net, *given, "ls", "failover/", "--json"))
    assert f"failover/{label}" in [f["name"] for f in listed["files"]]
    assert len(json.loads(ok(p2pfs(net, *given, "members", "--json")))) == net.nodes
    ok(p2pfs(net, *given, "rm", f"failover/{label}"))
    assert p2pfs(net, *given, "stat", f"failover/{label}").returncode == ExitCode.NOT_FOUND


def test_operations_succeed_with_one_or_two_given_nodes_killed_or_stopped(tmp_path):
    with running_testnet(tmp_path / "testnet", nodes=5) as net:
        before = os.urandom(200_000)
        (tmp_path / "before.bin").write_bytes(before)
        net.cli("put", str(tmp_path / "before.bin"), "--name", "failover/before")
        net.kill("node1")
        # the comma form, and a file stored before the outage read past the dead node
        killed_first = ",".join(net.address(name) for name in ("node1", "node2", "node3"))
        ok(p2pfs(net, "--node", killed_first, "get", "failover/before", "-o", str(tmp_path / "before.out")))
        assert (tmp_path / "before.out").read_bytes() == before
        every_operation_succeeds(net, ["node1", "node2"], tmp_path, "one-killed")
        with stopped(net, "node2"):
            every_operation_succeeds(net, ["node1", "node2", "node3"], tmp_path, "killed-and-stopped")


def test_every_given_node_down_names_each_and_the_remembered_list_helps(tmp_path):
    with running_testnet(tmp_path / "testnet", nodes=3) as net:
        remembering = net.directory / testnet.CLIENT_DIR
        fresh = tmp_path / "fresh-client"
        ok(p2pfs(net, "client", "init", str(fresh), "--ca", str(net.directory / testnet.CA_DIR)))
        # A successful call teaches the testnet's client the member list.
        ok(p2pfs(net, "--node", net.address("node1"), "members"))
        remembered = json.loads((remembering / MEMBERS_FILE).read_text())["addresses"]
        assert sorted(remembered) == sorted(net.address(n) for n in net.names)

        node1, node2 = net.address("node1"), net.address("node2")
        net.kill("node1")
        with stopped(net, "node2"):
            result = p2pfs(net, "--node", node1, "--node", node2, "ls", identity=fresh)
            assert result.returncode == ExitCode.UNAVAILABLE, result.stderr.decode()
            error = result.stderr.decode()
            assert node1 in error and node2 in error and "did not complete the handshake" in error
            result = p2pfs(net, "--node", f"{node1},{node2}", "ls", "--json", identity=fresh)
            assert result.returncode == ExitCode.UNAVAILABLE
            facts = json.loads(result.stderr)
            assert facts["error"] == "unavailable" and node1 in facts["message"] and node2 in facts["message"]

            # Given only the dead node, a client that remembers the members goes on to them.
            listed = listing(p2pfs(net, "--node", node1, "ls", "--json"))
            assert listed["files"] == []
