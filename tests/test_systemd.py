"""Running under a service manager: the unit file verifies, the daemon speaks sd_notify
(READY once joined, WATCHDOG, STOPPING), and a SIGTERM restart is a restart, not a
decommission: prompt, no data moved while away, back with its data."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from admin_helpers import samples, value
from testnet_helpers import running_testnet, wait_for

pytestmark = pytest.mark.integration

UNIT = Path(__file__).resolve().parent.parent / "configs" / "p2pfs.service"
# The bound on a whole stop (systemd's default TimeoutStopSec is 90 s; ours says 20 s).
STOP_S_MAX = 10.0
# The watchdog timeout the test "service manager" asks for: a ping every 0.25 s.
WATCHDOG_USEC = 500_000
NOTIFY_WAIT_S = 30.0


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A unix datagram socket standing in for systemd's; daemons started now inherit its address."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def receive_until(sock: socket.socket, wanted: str, timeout_s: float = NOTIFY_WAIT_S) -> list[str]:
    """Every notification line received until one equal to ``wanted``; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    while wanted not in lines:
        remaining_s = deadline - time.monotonic()
        assert remaining_s > 0, f"no {wanted} within {timeout_s} s; got {lines}"
        sock.settimeout(remaining_s)
        try:
            lines.extend(sock.recv(4096).decode().splitlines())
        except socket.timeout:
            pass
    return lines


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (Debian package systemd; scripts/test.sh installs it as root)")
def test_the_unit_file_verifies(tmp_path):
    # verify checks that ExecStart exists: point it at this checkout's entry point.
    entry_point = Path(sys.executable).parent / "p2pfs"
    unit = tmp_path / "p2pfs.service"
    unit.write_text(UNIT.read_text().replace("/opt/p2pfs/bin/p2pfs", str(entry_point)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "p2pfs.service" not in result.stderr, result.stderr
    text = UNIT.read_text()
    for setting in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=p2pfs", "StateDirectory=p2pfs",
                    "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "ExecReload="):
        assert setting in text, setting


def test_the_daemon_notifies_ready_watchdog_and_stopping(tmp_path, notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    with running_testnet(tmp_path / "net", nodes=1) as net:
        lines = receive_until(notify_socket, "READY=1")
        assert "STATUS=joining the cluster" in lines
        receive_until(notify_socket, "WATCHDOG=1")
        receive_until(notify_socket, "WATCHDOG=1")
        started = time.monotonic()
        net.stop("node1")
        assert time.monotonic() - started < STOP_S_MAX
        receive_until(notify_socket, "STOPPING=1", timeout_s=1.0)
        log = (net.directory / "node1" / "daemon.log").read_text()
        assert "stopping (still a member" in log and "leaving the cluster" not in log


def test_sighup_reloads_the_log_level_without_a_restart(tmp_path):
    with running_testnet(tmp_path / "net", nodes=1) as net:
        proc = net.status()["node1"]
        config = proc.directory / "p2pfs.toml"
        config.write_text(config.read_text().replace('log_level = "info"', 'log_level = "debug"'))
        os.kill(proc.pid, 1)
        log = proc.directory / "daemon.log"
        wait_for(lambda: "config reloaded" in log.read_text(), timeout_s=10, what="the reload's log line")
        assert "applied [node] log_level" in log.read_text()
        assert net.status()["node1"].pid == proc.pid and net.status()["node1"].running


def fsck_clean(net) -> bool:
    report = json.loads(net.cli("fsck", "--json", check=False).stdout or "{}")
    return bool(report) and not any(report[key] for key in (
        "names_under_replicated", "chunks_under_replicated", "chunks_missing", "chunks_misplaced",
        "chunks_over_replicated", "nodes_unreachable"))


def test_a_sigterm_restart_is_prompt_moves_no_data_and_rejoins_with_it(tmp_path, notify_socket):
    # Anti-entropy every 2 s: had the stop been treated as a departure, data would move at once.
    overrides = {"replication": {"anti_entropy_interval_s": 2.0, "hint_delivery_interval_s": 0.5}}
    with running_testnet(tmp_path / "net", nodes=4, overrides=overrides) as net:
        for i in range(6):
            (tmp_path / f"f{i}").write_bytes(os.urandom(150_000))
            net.cli("put", str(tmp_path / f"f{i}"), node="node1")
        wait_for(lambda: fsck_clean(net), timeout_s=60, what="a clean fsck before the restart")
        pages = {name: net.status()[name].status_page for name in net.names}

        def moved_bytes(names) -> float:
            return sum(value(samples(pages[n]), "p2pfs_repair_sent_bytes_total") for n in names)

        others = ["node1", "node2", "node4"]
        used_before = {n: value(samples(pages[n]), "p2pfs_store_used_bytes") for n in net.names}
        moved_before = moved_bytes(others)

        started = time.monotonic()
        net.stop("node3")  # SIGTERM, as systemctl stop or a reboot sends
        assert time.monotonic() - started < STOP_S_MAX
        receive_until(notify_socket, "STOPPING=1")
        wait_for(lambda: all(value(samples(pages[n]), "p2pfs_members", state="dead") == 1 for n in others),
                 timeout_s=60, what="node3 to be seen dead (not left)")
        # Away for several anti-entropy rounds, well within the grace period: nothing moves.
        time.sleep(6.0)  # the absence under test, not a synchronisation
        assert moved_bytes(others) == moved_before
        assert {n: value(samples(pages[n]), "p2pfs_store_used_bytes") for n in others} == \
            {n: used_before[n] for n in others}

        net.start("node3")
        receive_until(notify_socket, "READY=1")  # only once it has joined
        assert value(samples(pages["node3"]), "p2pfs_members", state="alive") >= 2
        assert value(samples(pages["node3"]), "p2pfs_store_used_bytes") == used_before["node3"]
        wait_for(lambda: all(value(samples(pages[n]), "p2pfs_members", state="alive") == 4 for n in net.names),
                 timeout_s=60, what="node3 alive everywhere again")
        wait_for(lambda: fsck_clean(net), timeout_s=60, what="a clean fsck after the restart")
        assert moved_bytes(others) == moved_before and moved_bytes(["node3"]) == 0, "no repair traffic"
