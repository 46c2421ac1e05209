"""Silent TCP connections (no TLS, no credentials) against a real daemon.

A flood of connections that never speak must not keep legitimate clients out,
and must not flood the log: the handshake deadline runs from the accept, one
source address holds few unauthenticated connections, and what a flood makes
happen is logged once per interval with a count.

Everything here comes from 127.0.0.1, so the attacker and the legitimate
client share one source address: what this shows is that the per-address limit
sheds the attacker's oldest half-open connections rather than the newcomer, and
that authenticated connections are not counted against it. It cannot show that
another address is unaffected by the flood (it is, by construction: its count
is separate).
"""

from __future__ import annotations

import logging

import trio

from p2pfs import identity, testnet
from p2pfs.observe import Collapsed

from testnet_helpers import raise_fd_limit, running_testnet, status_calls_while_flooding

SILENT_CONNECTIONS = 300
# Silent connections re-opened per second while the client works (the report saw ~9/s).
REOPEN_PER_S = 20
STATUS_CALLS = 100
STATUS_SUCCESS_FRACTION_MIN = 0.99
STATUS_TIMEOUT_S = 10.0
# Lines the transport may log during the whole flood (each status call is logged too, by the
# admin server, and is not counted): a few collapsed lines per kind of event per 10 s.
FLOOD_LOG_LINES_MAX = 20


def test_silent_connections_do_not_keep_clients_out(tmp_path):
    raise_fd_limit(SILENT_CONNECTIONS * 2 + 256)
    with running_testnet(tmp_path / "net", nodes=1) as net:
        node = net.status()["node1"]
        log_file = tmp_path / "net" / "node1" / testnet.LOG_FILE
        log_size_before = log_file.stat().st_size
        client_identity = identity.load_identity(tmp_path / "net" / testnet.CLIENT_DIR)
        outcomes: list[bool] = []

        async def main() -> None:
            silent: list[trio.SocketStream] = []
            for _ in range(SILENT_CONNECTIONS):
                silent.append(await trio.open_tcp_stream(node.address.host, node.address.port))

            outcomes.extend(await status_calls_while_flooding(
                client_identity, node.address, silent, reopen_per_s=REOPEN_PER_S, calls=STATUS_CALLS,
                timeout_s=STATUS_TIMEOUT_S,
                failures_allowed=int(STATUS_CALLS * (1 - STATUS_SUCCESS_FRACTION_MIN))))

        trio.run(main)
        succeeded = outcomes.count(True)
        assert succeeded >= STATUS_CALLS * STATUS_SUCCESS_FRACTION_MIN, (
            f"{succeeded} of {len(outcomes)} status calls succeeded under {SILENT_CONNECTIONS} silent connections"
        )
        with log_file.open("rb") as log:
            log.seek(log_size_before)
            net_lines = [line for line in log.read().decode().splitlines() if " p2pfs.net" in line]
        assert len(net_lines) <= FLOOD_LOG_LINES_MAX, "\n".join(net_lines[-40:])


def test_collapsed_logs_once_per_interval_with_a_count(caplog):
    caplog.set_level(logging.INFO)
    collapsed = Collapsed(logging.getLogger("test"), logging.WARNING, interval_s=10.0)
    for now_s in (0.0, 1.0, 2.0, 9.9):
        collapsed.log(now_s, "refusing %s", "x")
    assert [r.getMessage() for r in caplog.records] == ["refusing x"]
    collapsed.log(12.0, "refusing %s", "y")
    collapsed.log(13.0, "refusing %s", "z")
    assert [r.getMessage() for r in caplog.records] == ["refusing x", "refusing y (and 3 more in the last 12.0 s)"]
    collapsed.log(30.0, "refusing %s", "w")
    assert caplog.records[-1].getMessage() == "refusing w (and 1 more in the last 18.0 s)"
    collapsed.log(50.0, "refusing %s", "v")
    assert caplog.records[-1].getMessage() == "refusing v"
    assert all(r.levelno == logging.WARNING for r in caplog.records)
