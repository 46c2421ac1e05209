"""One-request commands without trio (``p2pfs.client.blocking``): what they load, what they
answer through the real CLI against real daemons, the failover rules they share with the trio
client (``attempts.py``), and the driver's TLS checks and deadlines against an in-process node."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import subprocess
import sys
import threading
from typing import Iterator

import pytest
import trio

from p2pfs import errors, identity, net, revocation
from p2pfs.address import Address, parse_address
from p2pfs.cli import ExitCode
from p2pfs.client import blocking
from p2pfs.client.attempts import FAILOVER_ATTEMPTS_MAX, FAILOVER_WINDOW_S, Attempts, nodes_to_try
from p2pfs.client.faults import NodeUnreachable
from p2pfs.client.members import load_members
from p2pfs.net.trust import TrustStore
from p2pfs.node import messages as nm
from p2pfs.replication.messages import CHAIN_WIRE_VERSION
from p2pfs.ring import PLACEMENT_VERSION_NEWEST
from p2pfs.wire import ErrorCode, Role

from testnet_helpers import CLI_TIMEOUT_S, running_testnet

# A listener that never answers is given this long to stop when its test ends.
SILENT_JOIN_TIMEOUT_S = 5.0
NOW = datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture(scope="module")
def net3(tmp_path_factory):
    with running_testnet(tmp_path_factory.mktemp("blocking"), nodes=3) as network:
        yield network


def refused_address() -> str:
    """An address nobody listens on (bound, never listening): connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def cli(net3, *args: str) -> tuple[set[str], subprocess.CompletedProcess]:
    """Run the CLI under ``-X importtime``; the modules it loaded, and its result."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "p2pfs", *args], capture_output=True,
                            env=net3.env(), timeout=CLI_TIMEOUT_S)
    stderr = result.stderr.decode()
    modules = {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    result.stderr = "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:")).encode()
    return modules, result


# What a one-request command does without (issue 10's start-up): trio, certificates read with
# cryptography (TLS verifies them; p2pfs.certfields reads their fields), the daemon's data messages.
NOT_FOR_ONE_REQUEST = ("trio", "cryptography", "p2pfs.replication.messages")


def answer(modules: set[str], result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr.decode()
    assert "p2pfs.client.blocking" in modules  # the command did talk to a node ...
    assert "p2pfs.replication.client_messages" in modules or "p2pfs.node.messages" in modules
    assert sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_FOR_ONE_REQUEST)) == []
    return result.stdout.decode()


@pytest.mark.integration
def test_ls_stat_members_status_rm_answer_without_loading_trio_cryptography_or_daemon_messages(net3, tmp_path):
    node = net3.address("node1")
    data = os.urandom(5000)
    (tmp_path / "a.bin").write_bytes(data)
    net3.cli("put", str(tmp_path / "a.bin"), "--name", "fast/a.bin")  # put streams a body: trio

    listed = json.loads(answer(*cli(net3, "--node", node, "ls", "fast/", "--json")))
    assert [f["name"] for f in listed["files"]] == ["fast/a.bin"] and listed["complete"] is True
    assert "fast/a.bin" in answer(*cli(net3, "--node", node, "ls", "fast/"))
    assert json.loads(answer(*cli(net3, "--node", node, "stat", "fast/a.bin", "--json")))["size_bytes"] == len(data)
    found = json.loads(answer(*cli(net3, "--node", node, "members", "--json")))
    assert sorted(m["address"] for m in found) == sorted(net3.address(n) for n in net3.names)
    # The record's protocol_version carries both versions; the output shows each on its own.
    # The wire version a member advertises is that of the messages it knows (chunk chains: 3).
    assert {(m["protocol_version"], m["placement_version"]) for m in found} == {(CHAIN_WIRE_VERSION, PLACEMENT_VERSION_NEWEST)}
    assert json.loads(answer(*cli(net3, "--node", node, "status", "--json")))["address"] == node
    assert answer(*cli(net3, "--node", node, "rm", "fast/a.bin")).strip() == "removed fast/a.bin"

    modules, result = cli(net3, "--node", node, "stat", "fast/a.bin")
    assert result.returncode == ExitCode.NOT_FOUND, result.stderr.decode()
    assert "trio" not in modules and "cryptography" not in modules


@pytest.mark.integration
def test_members_says_which_node_answered_when_the_first_did_not(net3):
    dead, node2 = refused_address(), net3.address("node2")

    modules, result = cli(net3, "--node", f"{dead},{node2}", "members")
    table = answer(modules, result)
    assert len(table.splitlines()) == 1 + net3.nodes
    note = result.stderr.decode()
    assert note.startswith(f"note: the members as {node2} (node {net3.node_id('node2')[:12]}) sees them")
    assert f"passed over: cannot reach node {dead}" in note

    modules, result = cli(net3, "--node", f"{dead},{node2}", "members", "--json")
    found = json.loads(answer(modules, result))
    assert [m["address"] for m in found if m["answering"]] == [node2]
    assert [m["node_id"] for m in found if m["answering"]] == [net3.node_id("node2")]
    assert result.stderr == b""  # under --json, stderr is for an error object only

    # The first node answering: nothing to say.
    modules, result = cli(net3, "--node", f"{node2},{dead}", "members")
    answer(modules, result)
    assert result.stderr == b""


# --- the failover rules both drivers follow (attempts.py) -------------------------------------

A, B, C = Address("10.0.0.1", 7000), Address("10.0.0.2", 7000), Address("10.0.0.3", 7000)


def never_resent() -> str | None:
    raise AssertionError("resend asked after an attempt that sent nothing")


def test_attempts_go_through_the_nodes_in_order_and_name_each_at_the_end():
    attempts = Attempts("list files", nodes_to_try([B, A], [A, C]), started_s=100.0)
    for node in (B, A, C):
        assert attempts.next_node(now_s=101.0) == node
        attempts.failed(node, NodeUnreachable(f"cannot reach node {node}: refused"), never_resent)
    assert attempts.next_node(now_s=102.0) is None
    message = str(attempts.exhausted())
    assert message.startswith(f"cannot list files at any node tried ({B}, {A}, {C}): cannot reach node {B}")
    assert nodes_to_try([], [Address("10.0.1.1", p) for p in range(20)])[FAILOVER_ATTEMPTS_MAX:] == []


def test_attempts_stop_after_the_window_and_at_an_error_no_other_node_would_change():
    attempts = Attempts("stat 'x'", [A, B, C], started_s=0.0)
    assert attempts.next_node(now_s=0.0) == A
    attempts.failed(A, errors.Unavailable("quorum not met"), lambda: None)
    assert attempts.next_node(now_s=FAILOVER_WINDOW_S + 1) is None
    assert f"no further node tried after {FAILOVER_WINDOW_S:.0f} s" in str(attempts.exhausted())

    attempts = Attempts("stat 'x'", [A, B], started_s=0.0)
    assert attempts.next_node(now_s=0.0) == A
    with pytest.raises(errors.NotFound):
        attempts.failed(A, errors.NotFound("no file named 'x'"), lambda: None)

    # After an attempt that may have sent something, a repeat needs the operation's consent.
    attempts = Attempts("put 'x'", [A, B], started_s=0.0)
    assert attempts.next_node(now_s=0.0) == A
    with pytest.raises(errors.Unavailable, match=r"cannot put 'x': .*quorum.* \(not retried: a pipe\)"):
        attempts.failed(A, errors.Unavailable("quorum not met"), lambda: "a pipe")


# --- the driver against an in-process node ----------------------------------------------------

FAST = net.NetConfig(handshake_timeout_s=1.0, stream_idle_timeout_s=5.0)


@pytest.fixture
def authority(tmp_path):
    return identity.init_ca(tmp_path / "ca")


class Handlers:
    """A node that answers MembersRequest with an empty list, StatusRequest never (within a
    test), and anything else with NOT_FOUND."""

    async def handle_request(self, request):
        if isinstance(request.msg, nm.MembersRequest):
            return nm.MembersReply(())
        if isinstance(request.msg, nm.StatusRequest):
            await trio.sleep_forever()
        raise net.RemoteError(ErrorCode.NOT_FOUND, "no such thing here")

    def handle_oneway(self, conn, msg):
        pass


async def started_node(authority, tmp_path, nursery) -> tuple[identity.Identity, Address]:
    node_ident = identity.create_identity(tmp_path / "node", authority, Role.NODE)
    endpoint = net.Endpoint(node_ident, Address("127.0.0.1", 0), Handlers(), config=FAST)
    await nursery.start(endpoint.run)
    return node_ident, Address("127.0.0.1", endpoint.bound_port)


async def test_the_driver_asks_answers_fails_over_and_keeps_its_deadline(authority, tmp_path, nursery):
    node_ident, address = await started_node(authority, tmp_path, nursery)
    client_ident = identity.create_identity(tmp_path / "client", authority, Role.CLIENT)
    dead = parse_address(refused_address())
    cluster = blocking.Cluster(client_ident, [dead, address], remember_in=client_ident.directory, config=FAST)

    assert await trio.to_thread.run_sync(cluster.members) == []
    assert (cluster.last_node, cluster.last_node_id) == (address, node_ident.node_id)
    assert len(cluster.passed_over) == 1 and str(dead) in cluster.passed_over[0]
    # With none remembered, the member list was asked for next, on the same connection.
    assert load_members(client_ident.directory).addresses == ()
    with pytest.raises(errors.NotFound, match="no such thing here"):
        await trio.to_thread.run_sync(cluster.stat, "x")

    def ask_status_briefly() -> None:
        trust = TrustStore(client_ident)
        with blocking.Connection.dial(client_ident, trust, address, FAST) as conn:
            conn.request(nm.StatusRequest(), timeout_s=0.3)

    with pytest.raises(net.RequestTimeout, match=f"no answer from {node_ident.node_id[:12]} within 0.3 s"):
        await trio.to_thread.run_sync(ask_status_briefly)


async def test_the_driver_sends_small_writes_at_once(authority, tmp_path, nursery):
    """Nagle's algorithm held the request written right behind the client's hello until the
    node's delayed ACK of the hello, 40 ms later: 40 ms of every `ls`, `stat` and `members`."""
    node_ident, address = await started_node(authority, tmp_path, nursery)
    client_ident = identity.create_identity(tmp_path / "client", authority, Role.CLIENT)

    def nodelay_of_a_dialled_connection() -> int:
        with blocking.Connection.dial(client_ident, TrustStore(client_ident), address, FAST) as conn:
            assert conn.request(nm.MembersRequest(), timeout_s=5.0) == nm.MembersReply(())
            return conn._tls.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    assert await trio.to_thread.run_sync(nodelay_of_a_dialled_connection) != 0


async def test_the_driver_refuses_a_revoked_node_and_is_refused_when_revoked(authority, tmp_path, nursery):
    node_ident, address = await started_node(authority, tmp_path, nursery)
    client_ident = identity.create_identity(tmp_path / "client", authority, Role.CLIENT)
    revocation.revoke(authority.directory, authority.key, authority.cert, [node_ident.cert], NOW)
    (client_ident.directory / revocation.CRL_FILE).write_bytes(
        (authority.directory / revocation.CRL_FILE).read_bytes())
    cluster = blocking.Cluster(client_ident, [address], config=FAST)
    with pytest.raises(errors.AuthError, match=f"certificate .* of node {node_ident.node_id[:12]} is revoked"):
        await trio.to_thread.run_sync(cluster.members)


@contextlib.contextmanager
def silent_listener() -> Iterator[Address]:
    """Accepts connections and never says a word (a frozen node, as far as a client can tell)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # closed: the test is over
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Address("127.0.0.1", listener.getsockname()[1])
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for conn in accepted:
            conn.close()
        thread.join(timeout=SILENT_JOIN_TIMEOUT_S)


def test_a_silent_listener_is_unavailable_within_the_handshake_deadline(authority, tmp_path):
    client_ident = identity.create_identity(tmp_path / "client", authority, Role.CLIENT)
    with silent_listener() as address:
        cluster = blocking.Cluster(client_ident, [address], config=FAST)
        with pytest.raises(errors.Unavailable, match="did not complete the handshake within 1.0 s") as caught:
            cluster.ls()
    assert not isinstance(caught.value, errors.AuthError)
