"""The README's first command, end to end: `bash scripts/quickstart.sh` on its own ports."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from p2pfs import testnet

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
NODES = 5  # the quickstart's network size
# The script sets up, starts five daemons, puts and gets 20 MiB: generous on a loaded machine.
QUICKSTART_TIMEOUT_S = 600.0
PORT_BLOCK_TRIES_MAX = 50


def free_port_block(count: int) -> int:
    """A port P such that P..P+count-1 are all free on 127.0.0.1, P chosen by the OS.

    The ports are free when this returns; the daemons bind them moments later.
    """
    for _ in range(PORT_BLOCK_TRIES_MAX):
        with contextlib.ExitStack() as held:
            first = held.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            base_port = first.getsockname()[1]
            if base_port + count > 65535:
                continue
            try:
                for port in range(base_port + 1, base_port + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
            return base_port
    raise AssertionError("no free block of ports found")


def test_quickstart_ends_with_exit_0_and_prints_the_export_lines(tmp_path):
    directory = tmp_path / "testnet"
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PFS_")}
    env.update(QUICKSTART_DIR=str(directory), QUICKSTART_PORT=str(free_port_block(NODES)))
    try:
        result = subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh")], env=env,
                                capture_output=True, text=True, timeout=QUICKSTART_TIMEOUT_S)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "round trip: byte-exact" in result.stdout
        assert f"  export P2PFS_IDENTITY={directory / 'client'} P2PFS_NODE=127.0.0.1:" \
            f"{env['QUICKSTART_PORT']}" in result.stdout
        assert f"and stop it with: {REPO / '.venv/bin/p2pfs'} testnet down --dir {directory}" in result.stdout
        assert "Traceback" not in result.stderr
    finally:
        subprocess.run([sys.executable, "-m", "p2pfs", "testnet", "down", "--dir", str(directory)],
                       capture_output=True, timeout=60)
        if directory.exists():
            for proc in testnet.status(directory):
                assert not proc.running, f"{proc.name} (pid {proc.pid}) survived testnet down"
