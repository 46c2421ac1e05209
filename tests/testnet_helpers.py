"""Real multi-process test networks for integration tests: start, drive through the CLI, clean up."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from p2pfs import testnet
from p2pfs.errors import BadInput

# CLI calls get this long before the test fails (a hung CLI must not hang the suite).
CLI_TIMEOUT_S = 120.0


class Net:
    """A running test network and its CLI."""

    def __init__(self, directory: Path, nodes: int) -> None:
        self.directory = directory
        self.nodes = nodes
        self.names = [f"node{i}" for i in range(1, nodes + 1)]

    def status(self) -> dict[str, testnet.NodeProcess]:
        return {p.name: p for p in testnet.status(self.directory)}

    def address(self, name: str) -> str:
        return str(self.status()[name].address)

    def node_id(self, name: str) -> str:
        return self.status()[name].node_id

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["P2PFS_IDENTITY"] = str(self.directory / testnet.CLIENT_DIR)
        env.pop("P2PFS_NODE", None)
        return env

    def cli(self, *args: str, node: str = "node1", check: bool = True, stdin: bytes | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "p2pfs", "--node", self.address(node), *args]
        result = subprocess.run(command, input=stdin, capture_output=True, env=self.env(),
                                timeout=CLI_TIMEOUT_S, cwd=cwd)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} at {node} exited {result.returncode}: {result.stderr.decode()}"
            )
        return result

    def json(self, *args: str, node: str = "node1") -> object:
        return json.loads(self.cli(*args, "--json", node=node).stdout)

    def cli_async(self, *args: str, node: str = "node1") -> subprocess.Popen:
        command = [sys.executable, "-m", "p2pfs", "--node", self.address(node), *args]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env())

    def kill(self, name: str) -> None:
        assert testnet.stop_node(self.directory / name, kill=True)

    def stop(self, name: str) -> None:
        assert testnet.stop_node(self.directory / name, kill=False)

    def start(self, name: str) -> None:
        testnet.start_node(self.directory / name)

    def live(self) -> list[str]:
        return [name for name, p in self.status().items() if p.running]


def read_all(net: Net, expected: dict[str, bytes], through: list[str], concurrency: int = 8) -> None:
    """Get every file through the client library (real TLS, real daemons) and compare bytes.

    Faster than a CLI process per file, which matters with hundreds of files.
    """
    import io

    import trio

    from p2pfs import identity
    from p2pfs.client import Client

    ident = identity.load_identity(net.directory / testnet.CLIENT_DIR)
    addresses = [net.status()[name].address for name in through]
    mismatched: list[str] = []

    async def main() -> None:
        limiter = trio.CapacityLimiter(concurrency)

        async def one(index: int, name: str) -> None:
            async with limiter:
                sink = io.BytesIO()
                with trio.fail_after(CLI_TIMEOUT_S):
                    async with Client.connect(ident, addresses[index % len(addresses)]) as client:
                        await client.get(name, sink)
                if sink.getvalue() != expected[name]:
                    mismatched.append(name)

        async with trio.open_nursery() as nursery:
            for index, name in enumerate(sorted(expected)):
                nursery.start_soon(one, index, name)

    trio.run(main)
    assert not mismatched, f"files read back wrong: {mismatched[:10]}"


def wait_for(condition: Callable[[], object], *, timeout_s: float, what: str, interval_s: float = 0.2):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (AssertionError, subprocess.SubprocessError, json.JSONDecodeError) as exc:
            last_error = exc
        time.sleep(interval_s)  # polling a condition of other processes, under a deadline
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last error: {last_error}")


@contextlib.contextmanager
def running_testnet(directory: Path, nodes: int = 5, overrides: dict | None = None) -> Iterator[Net]:
    """Start a network on a free block of loopback ports; stop every process on exit, even on failure."""
    rng = random.Random()
    for _ in range(20):
        base_port = rng.randrange(20000, 32000 - nodes)  # below the ephemeral range (32768+)
        try:
            testnet.create(directory, nodes, base_port, overrides)
            break
        except BadInput as exc:
            if "in use" not in str(exc):
                raise
    else:
        raise AssertionError("no free block of ports found")
    try:
        testnet.up(directory, nodes, base_port)
        yield Net(directory, nodes)
    finally:
        testnet.down(directory, timeout_s=10.0)
        for proc in testnet.status(directory):
            assert not proc.running, f"{proc.name} (pid {proc.pid}) survived testnet down"
