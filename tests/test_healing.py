"""Self-healing on a real 5-node network (rf=3), through the CLI: re-replication after a
death, rebalancing onto new nodes, hand-off on a graceful leave, scrub repair. The 200 files go
in through the client library: a CLI process per file spent most of its CPU starting up."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from p2pfs.storage import CHUNK_SIZE_BYTES_DEFAULT

from testnet_helpers import Net, read_all, running_testnet, wait_for, write_all

pytestmark = pytest.mark.integration

CHUNK = CHUNK_SIZE_BYTES_DEFAULT
FILES = 200
# Short timings so the test sees in a minute what production spreads over hours.
OVERRIDES = {
    "replication": {
        "dead_grace_s": 5.0,
        "anti_entropy_interval_s": 2.0,
        "hint_delivery_interval_s": 1.0,
        "scrub_bytes_per_s": 64 * 1024 * 1024,
        "leave_handoff_timeout_s": 60.0,
    },
}


def fsck(net: Net, node: str) -> dict:
    result = net.cli("fsck", "--json", node=node, check=False)
    return json.loads(result.stdout)


def clean(report: dict) -> bool:
    return not (
        report["names_under_replicated"] or report["chunks_under_replicated"] or report["chunks_missing"]
        or report["chunks_corrupt"] or report["chunks_misplaced"] or report["names_misplaced"]
        or report["chunks_over_replicated"] or report["nodes_unreachable"]
    )


def under_replicated(report: dict) -> int:
    return (report["names_under_replicated"] + report["chunks_under_replicated"]
            + report["chunks_missing"])


def used_bytes(net: Net) -> dict[str, int]:
    return {name: net.json("status", node=name)["used_bytes"] for name in net.live()}


def test_the_cluster_heals_itself(tmp_path):
    rng = random.Random(20261125)
    sizes = [rng.choice([0, 1, 1000, CHUNK - 1, CHUNK + 1, 3 * CHUNK + 7, 40_000]) for _ in range(FILES)]
    expected = {f"f{i:03d}": rng.randbytes(size) for i, size in enumerate(sizes)}
    total_bytes = sum(sizes)

    with running_testnet(tmp_path / "net", nodes=5, overrides=OVERRIDES) as net:
        write_all(net, expected, net.names)

        # 1. A node dies for good: after the grace period its data is re-replicated.
        net.kill("node5")
        live = ["node1", "node2", "node3", "node4"]
        report = wait_for(lambda: (r := fsck(net, "node1")) and clean(r) and r,
                          timeout_s=120, what="re-replication after node5's death")
        assert report["names_checked"] == FILES
        read_all(net, expected, live)

        # 2. Two nodes join: data moves to them, and only about what consistent hashing needs.
        before = used_bytes(net)
        added = subprocess.run(
            [sys.executable, "-m", "p2pfs", "testnet", "add", "--dir", str(net.directory), "--nodes", "2"],
            capture_output=True, timeout=120,
        )
        assert added.returncode == 0, added.stderr
        wait_for(lambda: clean(fsck(net, "node2")), timeout_s=120, what="rebalancing onto the new nodes")
        after = used_bytes(net)
        moved = after.get("node6", 0) + after.get("node7", 0)
        ideal = 3 * total_bytes * 2 / 6  # rf copies, 2 of 6 live nodes' shares
        print(f"\nrebalancing onto 2 new nodes moved {moved} bytes; ideal {ideal:.0f} "
              f"({moved / ideal:.2f}x); before {before}, after {after}")
        assert moved > 0
        assert moved < 2 * ideal, "far more data moved than consistent hashing needs"
        assert sum(after.values()) <= 3 * total_bytes * 1.01, "extra copies were not dropped"

        # 3. A graceful leave hands off before leaving: no moment of under-replication.
        leaver = "node3"
        pid = net.status()[leaver].pid
        net.cli("leave", node=leaver)
        checks = 0
        while os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().split()[2]:
            report = fsck(net, "node1")
            assert under_replicated(report) == 0, report
            checks += 1
            assert checks < 200, "the leaving node did not exit"
        assert "handed off" in (net.directory / leaver / "daemon.log").read_text()
        wait_for(lambda: clean(fsck(net, "node1")), timeout_s=60, what="a clean fsck after the leave")
        read_all(net, expected, ["node1", "node2", "node4", "node6", "node7"])

        # 4. A chunk rots on disk: the scrub finds it and it is repaired, with no get.
        victim = "node4"
        chunks_dir = net.directory / victim / "data" / "chunks"
        chunk_file = next(p for p in sorted(chunks_dir.rglob("*")) if p.is_file())
        good = chunk_file.read_bytes()
        chunk_file.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])
        wait_for(lambda: chunk_file.is_file() and chunk_file.read_bytes() == good, timeout_s=60,
                 what="the scrub to repair the corrupt chunk")
        assert "failed verification" in (net.directory / victim / "daemon.log").read_text()
        wait_for(lambda: clean(fsck(net, "node1")), timeout_s=60, what="a clean fsck after the repair")
