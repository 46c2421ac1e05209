"""Bandwidth caps changed while daemons run: SIGHUP or ``POST /api/reload`` puts a new client
or repair cap in force without a restart, and a bad file is refused with the old caps kept."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from p2pfs.config import CONFIG_FILE

from admin_helpers import http_post, samples, status_json, value
from testnet_helpers import running_testnet, wait_for

pytestmark = pytest.mark.integration

FILE_BYTES = 1024 * 1024
CAP_BYTES_PER_S = 256 * 1024
REPAIR_CAP_BYTES_PER_S = 1024 * 1024
# With a bucket of one second's worth, a body of FILE_BYTES cannot go out faster than this.
CAPPED_GET_S_MIN = (FILE_BYTES - CAP_BYTES_PER_S) / CAP_BYTES_PER_S


def set_replication_option(config, option: str, toml_value: str) -> None:
    """Set ``[replication] option`` in a rendered config, commented out at its default or not."""
    text, count = re.subn(rf"(?m)^(# )?{option} = .*$", f"{option} = {toml_value}", config.read_text())
    assert count == 1, option
    config.write_text(text)


def timed_get(net, name: str, out) -> float:
    started = time.monotonic()
    net.cli("get", name, "-o", str(out), node="node1")
    return time.monotonic() - started


def test_a_changed_cap_takes_effect_without_a_restart_and_a_bad_file_keeps_the_old_one(tmp_path):
    with running_testnet(tmp_path / "net", nodes=3) as net:
        node1 = net.status()["node1"]
        page, config = node1.status_page, node1.directory / CONFIG_FILE
        data = os.urandom(FILE_BYTES)
        (tmp_path / "f.bin").write_bytes(data)
        net.cli("put", str(tmp_path / "f.bin"), node="node1")
        found = samples(page)
        assert value(found, "p2pfs_request_body_bytes_total", operation="put_file") >= FILE_BYTES
        assert value(found, "p2pfs_client_limit_bytes_per_second") == 0, "no cap by default"
        assert value(found, "p2pfs_repair_limit_bytes_per_second") == 64 * 1024 * 1024
        timed_get(net, "f.bin", tmp_path / "fast.bin")
        assert value(samples(page), "p2pfs_client_throttled_seconds_total") == 0

        # SIGHUP: both caps change in the running daemon (same pid).
        set_replication_option(config, "client_bytes_per_s", '"256KiB"')
        set_replication_option(config, "repair_bytes_per_s", '"1MiB"')
        os.kill(node1.pid, signal.SIGHUP)
        wait_for(lambda: value(samples(page), "p2pfs_client_limit_bytes_per_second") == CAP_BYTES_PER_S,
                 timeout_s=30, what="the client cap to change on SIGHUP")
        found = samples(page)
        assert value(found, "p2pfs_repair_limit_bytes_per_second") == REPAIR_CAP_BYTES_PER_S
        limits = status_json(page)["limits"]
        assert (limits["client_bytes_per_s"], limits["repair_bytes_per_s"]) == (CAP_BYTES_PER_S,
                                                                                REPAIR_CAP_BYTES_PER_S)
        elapsed_s = timed_get(net, "f.bin", tmp_path / "slow.bin")
        assert (tmp_path / "slow.bin").read_bytes() == data
        assert elapsed_s >= CAPPED_GET_S_MIN, f"a capped get of 1 MiB took {elapsed_s:.2f} s"
        throttled_s = value(samples(page), "p2pfs_client_throttled_seconds_total")
        assert throttled_s >= CAPPED_GET_S_MIN * 0.9, throttled_s
        assert net.status()["node1"].pid == node1.pid, "no restart"

        # A capped put is held back too: its body is read within the budget.
        (tmp_path / "g.bin").write_bytes(os.urandom(FILE_BYTES))
        started = time.monotonic()
        net.cli("put", str(tmp_path / "g.bin"), node="node1")
        assert time.monotonic() - started >= CAPPED_GET_S_MIN
        assert value(samples(page), "p2pfs_client_throttled_seconds_total") > throttled_s

        # A bad file, by SIGHUP and by the admin listener: refused, logged, the caps stay.
        set_replication_option(config, "client_bytes_per_s", '"fast"')
        os.kill(node1.pid, signal.SIGHUP)
        log_file = node1.directory / "daemon.log"
        wait_for(lambda: "reload failed, keeping the running config" in log_file.read_text(), timeout_s=30,
                 what="the refused reload's log line")
        assert "[replication] client_bytes_per_s" in log_file.read_text()
        code, body = http_post(page + "api/reload")
        assert code == 400 and "client_bytes_per_s" in json.loads(body)["error"], body
        assert log_file.read_text().count("reload failed, keeping the running config") == 2
        assert value(samples(page), "p2pfs_client_limit_bytes_per_second") == CAP_BYTES_PER_S

        # Fixed and reloaded through the admin listener: no cap again.
        set_replication_option(config, "client_bytes_per_s", "0")
        code, body = http_post(page + "api/reload")
        assert code == 200 and json.loads(body)["applied"] == ["[replication] client_bytes_per_s"], body
        assert value(samples(page), "p2pfs_client_limit_bytes_per_second") == 0

        # The net limits too: the memory budget for peers' input changes at once.
        assert value(samples(page), "p2pfs_net_memory_budget_bytes") == 256 * 1024 * 1024
        set_replication_option(config, "memory_budget_bytes", '"64MiB"')
        code, body = http_post(page + "api/reload")
        assert code == 200 and json.loads(body)["applied"] == ["[net] memory_budget_bytes"], body
        assert value(samples(page), "p2pfs_net_memory_budget_bytes") == 64 * 1024 * 1024
        assert status_json(page)["limits"]["memory_budget_bytes"] == 64 * 1024 * 1024
        assert net.status()["node1"].pid == node1.pid, "no restart"
