"""Output cut short by its reader (`p2pfs ... | head`): a quiet exit 0, never a traceback.

Through the real CLI against real daemons. A reader that has gone away is made
deterministic by handing the CLI a pipe whose read end is already closed, which
is what `head` leaves behind once it has read what it wanted.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testnet_helpers import CLI_TIMEOUT_S, running_testnet

pytestmark = pytest.mark.integration

# Larger than a pipe's buffer (64 KiB on Linux), so `head -c 10` closes it mid-stream.
FILE_BYTES = 1024 * 1024


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with running_testnet(tmp_path_factory.mktemp("pipes"), nodes=3) as network:
        network.cli("put", "-", "--name", "big.bin", stdin=os.urandom(FILE_BYTES))
        yield network


def run_into_closed_pipe(net, *args: str) -> subprocess.CompletedProcess:
    """Run the CLI with stdout a pipe nobody reads any more."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "p2pfs", "--node", net.address("node1"), *args],
                              stdout=write_end, stderr=subprocess.PIPE, env=net.env(),
                              timeout=CLI_TIMEOUT_S)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [
    ["stat", "big.bin"],
    ["stat", "big.bin", "--json"],
    ["ls"],
    ["members"],
    ["status"],
    ["get", "big.bin", "-o", "-"],
    ["cat", "big.bin"],
])
def test_a_reader_gone_ends_the_command_quietly_with_exit_0(net, args):
    result = run_into_closed_pipe(net, *args)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""


def test_get_to_stdout_cut_by_head_under_pipefail(net):
    command = (f"set -o pipefail; {sys.executable} -m p2pfs --node {net.address('node1')} "
               "get big.bin -o - | head -c 10 | wc -c")
    result = subprocess.run(["bash", "-c", command], capture_output=True, env=net.env(),
                            timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.split() == [b"10"]
    assert result.stderr == b""


def test_stat_cut_by_head_under_pipefail(net):
    command = (f"set -o pipefail; {sys.executable} -m p2pfs --node {net.address('node1')} "
               "stat big.bin | head -1")
    result = subprocess.run(["bash", "-c", command], capture_output=True, env=net.env(),
                            timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.startswith(b"name:     big.bin")


def test_cat_writes_the_file_to_stdout(net):
    data = os.urandom(100_000)
    net.cli("put", "-", "--name", "small.bin", stdin=data)
    result = net.cli("cat", "small.bin")
    assert result.stdout == data and result.stderr == b""
