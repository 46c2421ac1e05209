"""What the user sees when things fail: the real reason and the right exit code.

Through the real CLI against real daemons (and, for a non-p2pfs service, a plain
TCP listener in this process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Iterator

import pytest

from p2pfs import identity
from p2pfs.cli import ExitCode
from p2pfs.wire import Role
from testnet_helpers import CLI_TIMEOUT_S, running_testnet, write_all

pytestmark = pytest.mark.integration

# How long the fake service's thread gets to finish once its listener is shut down.
FAKE_SERVICE_JOIN_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with running_testnet(tmp_path_factory.mktemp("errors"), nodes=3) as network:
        yield network


@contextlib.contextmanager
def fake_service(greeting: bytes) -> Iterator[str]:
    """A TCP service on 127.0.0.1 that accepts, writes ``greeting`` (maybe nothing) and then
    holds the connection open without a word more, until the test ends. Yields its HOST:PORT."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            accepted.append(conn)
            conn.sendall(greeting)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (close alone does not)
        listener.close()
        for conn in accepted:
            conn.close()
        thread.join(timeout=FAKE_SERVICE_JOIN_TIMEOUT_S)


def cli_at(net, address: str, *args: str, env: dict[str, str] | None = None):
    """Run the CLI against any address (net.cli only knows the network's nodes)."""
    return subprocess.run([sys.executable, "-m", "p2pfs", "--node", address, *args],
                          capture_output=True, env=env or net.env(), timeout=CLI_TIMEOUT_S)


@pytest.mark.parametrize("greeting", [b"", b"HTTP/1.1 400 Bad Request\r\n\r\n" + os.urandom(600)],
                         ids=["silent", "garbage"])
def test_a_non_p2pfs_service_on_the_port_is_unavailable_not_an_auth_failure(net, greeting):
    with fake_service(greeting) as address:
        result = cli_at(net, address, "status")
    stderr = result.stderr.decode()
    assert result.returncode == ExitCode.UNAVAILABLE, stderr
    assert "another service" in stderr and "authenticate" not in stderr
    assert "Traceback" not in stderr


def test_a_frozen_node_is_unavailable_not_an_auth_failure(net):
    pid = net.status()["node3"].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        result = net.cli("status", node="node3", check=False)
    finally:
        os.kill(pid, signal.SIGCONT)
    stderr = result.stderr.decode()
    assert result.returncode == ExitCode.UNAVAILABLE, stderr
    assert "did not complete the handshake" in stderr and "frozen" in stderr
    assert "authenticate" not in stderr


def test_a_node_identity_used_as_a_client_is_told_so(net):
    env = net.env()
    env["P2PFS_IDENTITY"] = str(net.directory / "node2")
    result = cli_at(net, net.address("node1"), "status", env=env)
    stderr = result.stderr.decode()
    assert result.returncode == ExitCode.AUTH, stderr
    assert "holds a node identity" in stderr and "client init" in stderr
    assert "connection" not in stderr


def test_a_certificate_from_another_cluster_is_still_an_auth_failure(net, tmp_path):
    other_ca = identity.init_ca(tmp_path / "ca")
    identity.create_identity(tmp_path / "stranger", other_ca, Role.CLIENT)
    env = net.env()
    env["P2PFS_IDENTITY"] = str(tmp_path / "stranger")
    result = cli_at(net, net.address("node1"), "status", env=env)
    stderr = result.stderr.decode()
    assert result.returncode == ExitCode.AUTH, stderr
    assert "cannot authenticate" in stderr


# Names stored with the same bytes: with the chunk's three holders killed, a name is
# still readable only if both surviving nodes are among its three replicas (3 in 10),
# so some of 16 names are readable (all but 0.3% of the time), and their get must
# fail on the chunk.
NAMES = 16


def test_get_with_every_replica_of_a_chunk_dead_names_the_real_reason(tmp_path):
    data = os.urandom(64 * 1024)
    with running_testnet(tmp_path / "net", nodes=5) as net:
        write_all(net, {f"f{index}": data for index in range(NAMES)}, through=["node1"])
        (chunk,) = net.json("stat", "f0")["chunks"]
        by_id = {net.node_id(name): name for name in net.names}
        holders = [by_id[node_id] for node_id in chunk["replicas"]]
        assert len(holders) == 3, chunk
        for name in holders:
            net.kill(name)
        through = next(name for name in net.names if name not in holders)
        results = [net.cli("get", f"f{index}", "-o", str(tmp_path / f"out{index}"), node=through, check=False)
                   for index in range(NAMES)]
    messages = [r.stderr.decode() for r in results]
    assert all(r.returncode == ExitCode.UNAVAILABLE for r in results), messages
    assert not any("ExceptionGroup" in m or "Trio nursery" in m for m in messages), messages
    assert any("no replica could serve it" in m for m in messages), messages
    assert not any((tmp_path / f"out{index}").exists() for index in range(NAMES))
