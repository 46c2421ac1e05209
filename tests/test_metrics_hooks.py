"""Metrics fed by hooks inside the rooms, on real daemons: each moves when its event happens.

Probe round trips and handshake failures (membership and net), and the background jobs'
figures: chunks held, the anti-entropy round's under-replicated estimate, the repair queue,
chunks and bytes moved by repair, hints delivered, scrub progress and corrupt chunks, GC
removals of chunks and tombstones.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl

import pytest

from p2pfs import identity
from p2pfs.config import CONFIG_FILE
from p2pfs.wire import Role

from admin_helpers import http_get, http_post, samples, value
from testnet_helpers import running_testnet, wait_for

pytestmark = pytest.mark.integration

# Seconds an inbound peer may stay silent before its connection counts as a handshake timeout.
HANDSHAKE_TIMEOUT_S = 1.0
# Small chunks so that a few MiB are many chunks, and a low repair cap is many seconds.
CHUNK_BYTES = 64 * 1024
FILES = 8
FILE_BYTES = 8 * CHUNK_BYTES
# One chunk per second per node: node4's share of the data (about 3/4 of FILES * 8 chunks)
# cannot be repaired in less than ~12 s with four nodes at it, so the queue is seen.
SLOW_REPAIR_BYTES_PER_S = CHUNK_BYTES
# Long enough for anti-entropy (every second) to give every replica the tombstone first.
TOMBSTONE_GRACE_S = 5.0
FAST = {
    "replication": {"anti_entropy_interval_s": 1.0, "hint_delivery_interval_s": 0.5, "gc_interval_s": 1.0,
                    "chunk_gc_grace_s": 1.0, "tombstone_gc_grace_s": TOMBSTONE_GRACE_S,
                    "chunk_size_bytes": CHUNK_BYTES},
    "net": {"handshake_timeout_s": HANDSHAKE_TIMEOUT_S},
}


def total(net, name: str, names=None, **labels) -> float:
    return sum(value(samples(net.status()[n].status_page), name, **labels) for n in names or net.live())


def highest(net, name: str, names=None) -> float:
    return max(value(samples(net.status()[n].status_page), name) for n in names or net.live())


def test_probe_round_trips_and_handshake_failures_by_reason(tmp_path):
    with running_testnet(tmp_path / "net", nodes=2, overrides=FAST) as net:
        node1 = net.status()["node1"]
        page, address = node1.status_page, node1.address
        wait_for(lambda: value(samples(page), "p2pfs_probe_rtt_seconds_count") > 0, timeout_s=30,
                 what="a probe's round trip to be timed")
        found = samples(page)
        assert 0 < value(found, "p2pfs_probe_rtt_seconds_sum") < value(found, "p2pfs_probe_rtt_seconds_count")
        assert value(found, "p2pfs_probe_rtt_seconds_bucket", le="+Inf") == value(found,
                                                                                 "p2pfs_probe_rtt_seconds_count")
        for reason in ("auth", "protocol", "timeout"):
            assert value(found, "p2pfs_handshake_failures_total", reason=reason) == 0, reason

        # Not TLS at all: a protocol failure.
        with socket.create_connection((address.host, address.port), timeout=30) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            while sock.recv(4096):
                pass  # until the node closes it
        wait_for(lambda: value(samples(page), "p2pfs_handshake_failures_total", reason="protocol") == 1,
                 timeout_s=30, what="the protocol failure to be counted")

        # Silent past the handshake deadline: a timeout.
        with socket.create_connection((address.host, address.port), timeout=30) as sock:
            wait_for(lambda: value(samples(page), "p2pfs_handshake_failures_total", reason="timeout") == 1,
                     timeout_s=30, what="the silent connection to be counted")

        # A certificate from another CA: refused, an auth failure.
        stranger_ca = identity.init_ca(tmp_path / "other-ca")
        stranger = identity.create_identity(tmp_path / "stranger", stranger_ca, Role.CLIENT)
        context = ssl.create_default_context(cafile=str(net.directory / "ca" / identity.CA_CERT_FILE))
        context.check_hostname = False
        context.load_cert_chain(str(stranger.cert_path), str(stranger.key_path))
        with socket.create_connection((address.host, address.port), timeout=30) as sock:
            try:
                with context.wrap_socket(sock) as tls:
                    received = tls.recv(4096)  # TLS 1.3: the node's verdict on our certificate comes now
            except (ssl.SSLError, OSError):
                received = b""
        assert received == b"", "the node must not talk to a stranger"
        wait_for(lambda: value(samples(page), "p2pfs_handshake_failures_total", reason="auth") == 1,
                 timeout_s=30, what="the refused certificate to be counted")


def answers(url: str) -> bool:
    try:
        return http_get(url)[0] == 200
    except OSError:  # not listening yet
        return False


def set_repair_cap(net, names, rate_bytes_per_s: int) -> None:
    """Write the repair cap into each node's config and reload the running ones."""
    for name in names:
        config = net.directory / name / CONFIG_FILE
        text, count = re.subn(r"(?m)^(# )?repair_bytes_per_s = .*$", f"repair_bytes_per_s = {rate_bytes_per_s}",
                              config.read_text())
        assert count == 1
        config.write_text(text)
        if name in net.live():
            code, body = http_post(net.status()[name].status_page + "api/reload")
            assert code == 200, body


def test_background_jobs_report_what_they_do(tmp_path):
    with running_testnet(tmp_path / "net", nodes=4, overrides=FAST) as net:
        for i in range(FILES):
            (tmp_path / f"f{i}").write_bytes(os.urandom(FILE_BYTES))
            net.cli("put", str(tmp_path / f"f{i}"), node="node1")
        copies = 3 * FILES * FILE_BYTES // CHUNK_BYTES
        wait_for(lambda: total(net, "p2pfs_store_chunks") == copies, timeout_s=60,
                 what="anti-entropy rounds to count rf copies of every chunk")
        wait_for(lambda: highest(net, "p2pfs_antientropy_under_replicated_keys") == 0, timeout_s=60,
                 what="a clean round everywhere")

        # The scrub: progress, and a chunk rotted on disk found and repaired.
        page1 = net.status()["node1"].status_page
        found = samples(page1)
        assert value(found, "p2pfs_scrub_pass_chunks") > 0 and value(found, "p2pfs_scrub_verified_chunks_total") > 0
        chunk_file = next(p for p in sorted((net.directory / "node1" / "data" / "chunks").rglob("*")) if p.is_file())
        good = chunk_file.read_bytes()
        chunk_file.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])
        wait_for(lambda: value(samples(page1), "p2pfs_scrub_corrupt_chunks_total") == 1, timeout_s=60,
                 what="the scrub to find the corrupt chunk")
        wait_for(lambda: chunk_file.is_file() and chunk_file.read_bytes() == good, timeout_s=60,
                 what="the corrupt chunk to be repaired")

        # A dead node: the rounds of the others see keys short of a live copy; writes leave hints.
        os.kill(net.status()["node4"].pid, signal.SIGKILL)
        others = ["node1", "node2", "node3"]
        wait_for(lambda: highest(net, "p2pfs_antientropy_under_replicated_keys", others) > 0, timeout_s=60,
                 what="the dead node's keys to count as under-replicated")
        (tmp_path / "late").write_bytes(os.urandom(FILE_BYTES))
        net.cli("put", str(tmp_path / "late"), node="node1")
        assert total(net, "p2pfs_hints_pending", others) > 0
        assert total(net, "p2pfs_hints_delivered_total", others) == 0

        # It comes back with an empty disk and a slow repair cap: hints delivered, a queue of
        # transfers seen, then drained once the cap is raised at run time.
        for path in (net.directory / "node4" / "data" / "chunks").rglob("*"):
            if path.is_file():
                path.unlink()
        set_repair_cap(net, net.names, SLOW_REPAIR_BYTES_PER_S)
        net.start("node4")
        wait_for(lambda: answers(net.status()["node4"].status_page + "health"), timeout_s=60,
                 what="node4's admin listener")
        wait_for(lambda: total(net, "p2pfs_hints_delivered_total") > 0, timeout_s=60, what="hints delivered")
        wait_for(lambda: total(net, "p2pfs_repair_queue_chunks") > 0, timeout_s=60,
                 what="anti-entropy to queue node4's chunks")
        set_repair_cap(net, net.names, 64 * 1024 * 1024)
        wait_for(lambda: total(net, "p2pfs_repair_queue_chunks") == 0
                 and highest(net, "p2pfs_antientropy_under_replicated_keys") == 0, timeout_s=120,
                 what="the repair to finish and a clean round everywhere")
        # One scrape per node for all four: a late push between two scrapes would count its bytes
        # but not its chunk (each node bumps a pair together).
        pages = [samples(net.status()[n].status_page) for n in net.live()]
        moved = sum(value(p, "p2pfs_repair_sent_chunks_total") + value(p, "p2pfs_repair_received_chunks_total")
                    for p in pages)
        moved_bytes = sum(value(p, "p2pfs_repair_sent_bytes_total") + value(p, "p2pfs_repair_received_bytes_total")
                          for p in pages)
        assert moved > 0 and moved_bytes == moved * CHUNK_BYTES, (moved, moved_bytes)

        # A removed file's chunks are collected, and its tombstone once past its grace.
        assert total(net, "p2pfs_gc_purged_tombstones_total") == 0
        net.cli("rm", "f0", node="node1")
        wait_for(lambda: total(net, "p2pfs_gc_removed_chunks_total") > 0, timeout_s=60,
                 what="garbage collection to remove the file's chunks")
        wait_for(lambda: total(net, "p2pfs_gc_purged_tombstones_total") > 0, timeout_s=60,
                 what="garbage collection to purge the tombstone")
