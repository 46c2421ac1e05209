"""Membership and the daemon as real processes: convergence, failure detection, leave, rejoin."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from p2pfs import identity, testnet
from p2pfs.config import CONFIG_FILE, NodeSettings
from p2pfs.membership import MembershipConfig
from p2pfs.address import Address
from p2pfs.node.config import render_node_config
from p2pfs.wire import Role

from testnet_helpers import CLI_TIMEOUT_S, running_testnet, wait_for

pytestmark = pytest.mark.integration

NODES = 5
# The documented worst case from crash to "dead" at every member, with default timings.
DETECTION_BOUND_S = MembershipConfig().detection_bound_s(NODES)


def states_seen_by(net, observer: str) -> dict[str, str]:
    return {m["node_id"]: m["state"] for m in net.json("members", node=observer)}


def test_network_converges_detects_kill_and_leave_and_takes_a_node_back(tmp_path):
    with running_testnet(tmp_path / "net", nodes=NODES) as net:
        ids = {name: net.node_id(name) for name in net.names}
        for observer in net.names:
            assert states_seen_by(net, observer) == {i: "alive" for i in ids.values()}

        # SIGKILL: every other member marks it dead within the documented bound.
        killed_at = time.monotonic()
        net.kill("node2")
        others = [n for n in net.names if n != "node2"]
        wait_for(lambda: all(states_seen_by(net, o)[ids["node2"]] == "dead" for o in others),
                 timeout_s=DETECTION_BOUND_S + 5, what="node2 to be dead everywhere")
        assert time.monotonic() - killed_at <= DETECTION_BOUND_S + 5

        # Restarted, it rejoins as alive everywhere (its new incarnation beats "dead").
        net.start("node2")
        wait_for(lambda: all(set(states_seen_by(net, o).values()) == {"alive"} for o in net.names),
                 timeout_s=30, what="node2 to be alive everywhere again")

        # Decommission (`p2pfs leave`): a graceful leave, seen as "left", and the process exits by itself.
        pid = net.status()["node4"].pid
        net.leave("node4")
        remaining = [n for n in net.names if n != "node4"]
        wait_for(lambda: all(states_seen_by(net, o)[ids["node4"]] == "left" for o in remaining),
                 timeout_s=15, what="node4 to be marked left")
        log = (net.directory / "node4" / "daemon.log").read_text()
        assert "leaving the cluster" in log and "stopped" in log
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]

        # `p2pfs leave` does the same on request.
        net.cli("leave", node="node5")
        wait_for(lambda: not net.status()["node5"].running, timeout_s=30, what="node5 to exit after leave")
        wait_for(lambda: all(states_seen_by(net, o)[ids["node5"]] == "left" for o in ["node1", "node2", "node3"]),
                 timeout_s=15, what="node5 to be marked left")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """Three nodes for the tests below, which only read them (and try to start other daemons beside
    them): one network instead of one each."""
    with running_testnet(tmp_path_factory.mktemp("processes") / "net", nodes=3) as network:
        yield network


def test_status_reports_this_node_and_members_by_state(net):
    status = net.json("status", node="node2")
    assert status["node_id"] == net.node_id("node2")
    assert f"{status['host']}:{status['port']}" == net.address("node2")
    assert status["members_alive"] == 3
    assert status["members_dead"] == status["members_suspect"] == status["members_left"] == 0
    assert status["uptime_s"] >= 0


def start_daemon(directory) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "p2pfs", "daemon", str(directory)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_daemon_with_a_certificate_from_another_ca_cannot_join(net, tmp_path):
    other_ca = identity.init_ca(tmp_path / "other-ca")
    impostor_dir = tmp_path / "impostor"
    impostor = identity.create_identity(impostor_dir, other_ca, Role.NODE)
    seed = net.status()["node1"].address
    listen = Address("127.0.0.1", testnet.os_chosen_ports(1)[0])
    (impostor_dir / CONFIG_FILE).write_text(
        render_node_config(NodeSettings(listen=listen, seeds=(seed,)))
    )
    node1_log = net.directory / "node1" / "daemon.log"
    logged_before = len(node1_log.read_text())  # the network is shared: only what node1 logs from now on
    proc = start_daemon(impostor_dir)
    try:
        wait_for(lambda: "TLS handshake failed" in node1_log.read_text()[logged_before:], timeout_s=60,
                 what="node1 to reject the impostor's handshake")
        for observer in net.names:
            assert impostor.node_id not in states_seen_by(net, observer)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def listening(address: Address) -> bool:
    try:
        socket.create_connection((address.host, address.port), timeout=5).close()
    except OSError:
        return False
    return True


def test_daemon_refuses_to_start_with_clear_messages(net, tmp_path):
    ca = identity.load_ca(net.directory / "ca")
    busy_dir = tmp_path / "busy"
    identity.create_identity(busy_dir, ca, Role.NODE)
    node1 = net.status()["node1"]
    (busy_dir / CONFIG_FILE).write_text(render_node_config(NodeSettings(listen=node1.address)))
    # What the refusal relies on: node1 is running and holds its address.
    assert node1.running and listening(node1.address), f"node1 is not listening on {node1.address}"
    result = subprocess.run([sys.executable, "-m", "p2pfs", "daemon", str(busy_dir)],
                            capture_output=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 2
    assert b"already in use" in result.stderr and b"Traceback" not in result.stderr

    def refuses(name: str, role: Role, config_text: str, code: int, message: bytes) -> None:
        directory = tmp_path / name
        identity.create_identity(directory, ca, role)
        (directory / CONFIG_FILE).write_text(config_text)
        if name == "broken-key":
            (directory / identity.KEY_FILE).write_text("not a key")
        result = subprocess.run([sys.executable, "-m", "p2pfs", "daemon", str(directory)],
                                capture_output=True, timeout=CLI_TIMEOUT_S)
        assert result.returncode == code, result.stderr
        assert message in result.stderr and b"Traceback" not in result.stderr

    # These are refused before they bind; the port is free all the same.
    listen = f'[node]\nlisten = "127.0.0.1:{testnet.os_chosen_ports(1)[0]}"\n'
    refuses("bad-config", Role.NODE, listen + "probe_interval_s = 1\n", 2,
            b"[node] probe_interval_s: unknown option")
    refuses("client-as-node", Role.CLIENT, listen, 5, b"client identity")
    refuses("broken-key", Role.NODE, listen, 5, b"cannot read the identity")
