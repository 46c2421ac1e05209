"""1,000 silent TCP connections from one address against a real daemon, while a client works.

The attacker opens 1,000 connections that never speak, as fast as it can, and
keeps replacing the oldest while a legitimate client, from the same address
(127.0.0.1), connects afresh for each of its requests. At least 99% of the
client's requests must succeed, and the node must write fewer than 100 log
lines a minute, every line counted: the transport's collapsed flood events and
the access log of the client's requests (``observe.AccessLogCollapsed``; before
it, the access log alone wrote a line per request, 100 in ~8 s). docs/LIMITS.md
gives the figures.
"""

from __future__ import annotations

import time

import trio

from p2pfs import identity, testnet

from testnet_helpers import raise_fd_limit, running_testnet, status_calls_while_flooding

SILENT_CONNECTIONS = 1000
# Silent connections opened at once while the flood is built: quickly, but without
# overrunning the listener's accept backlog (a refused SYN would only slow the attacker).
OPENING_CONCURRENT_MAX = 100
# Silent connections replaced per second while the client works (the report saw ~9/s).
REOPEN_PER_S = 20
REQUESTS = 100
SUCCESS_FRACTION_MIN = 0.99
REQUEST_TIMEOUT_S = 10.0
LOG_LINES_PER_MINUTE_MAX = 100
# File descriptors the test process needs: the silent connections, the replacements in
# flight, the client's and the test network's own, and a margin.
FDS_NEEDED = SILENT_CONNECTIONS + 512


def test_a_thousand_silent_connections_from_one_address(tmp_path):
    raise_fd_limit(FDS_NEEDED)
    with running_testnet(tmp_path / "net", nodes=1) as net:
        node = net.status()["node1"]
        log_file = tmp_path / "net" / "node1" / testnet.LOG_FILE
        log_size_before = log_file.stat().st_size
        client_identity = identity.load_identity(tmp_path / "net" / testnet.CLIENT_DIR)
        outcomes: list[bool] = []

        async def main() -> None:
            silent: list[trio.SocketStream] = []
            opening = trio.Semaphore(OPENING_CONCURRENT_MAX)

            async def open_one() -> None:
                async with opening:
                    silent.append(await trio.open_tcp_stream(node.address.host, node.address.port))

            async with trio.open_nursery() as nursery:
                for _ in range(SILENT_CONNECTIONS):
                    nursery.start_soon(open_one)

            outcomes.extend(await status_calls_while_flooding(
                client_identity, node.address, silent, reopen_per_s=REOPEN_PER_S, calls=REQUESTS,
                timeout_s=REQUEST_TIMEOUT_S))

        started = time.monotonic()
        trio.run(main)
        elapsed_s = time.monotonic() - started
        succeeded = outcomes.count(True)
        assert succeeded >= REQUESTS * SUCCESS_FRACTION_MIN, (
            f"{succeeded} of {REQUESTS} requests succeeded under {SILENT_CONNECTIONS} silent connections"
        )
        assert net.status()["node1"].running
        with log_file.open("rb") as log:
            log.seek(log_size_before)
            lines = log.read().decode(errors="replace").splitlines()
        lines_per_minute = len(lines) / max(1.0, elapsed_s / 60)
        assert lines_per_minute < LOG_LINES_PER_MINUTE_MAX, f"{len(lines)} lines in {elapsed_s:.0f} s:\n" + \
            "\n".join(lines[-40:])
