"""The local test network: `up` returns only when every node serves, on ports the system chose."""

from __future__ import annotations

import socket

import pytest

from p2pfs import testnet

pytestmark = pytest.mark.integration

# Rounds of up/down: before the fix most rounds returned while the daemon was still starting.
ROUNDS = 5


def test_up_returns_only_when_every_node_listens(tmp_path):
    for round_ in range(ROUNDS):
        directory = tmp_path / f"net{round_}"
        testnet.create(directory, 1, 0)
        try:
            testnet.up(directory, 1, 0)
            for proc in testnet.status(directory):
                assert proc.running, f"{proc.name} is not running after up"
                # Refused here means up returned before the daemon had bound its address.
                socket.create_connection((proc.address.host, proc.address.port), timeout=5).close()
        finally:
            testnet.down(directory, timeout_s=10.0)


def test_os_chosen_ports_are_distinct_and_kept_for_added_nodes(tmp_path):
    directory = tmp_path / "net"
    testnet.create(directory, 3, 0)
    try:
        testnet.up(directory, 3, 0)
        added = testnet.add(directory, 1)
        ports = [p.address.port for p in testnet.status(directory)]
        assert len(set(ports)) == 4
        assert added[0].running
        socket.create_connection((added[0].address.host, added[0].address.port), timeout=5).close()
    finally:
        testnet.down(directory, timeout_s=10.0)
