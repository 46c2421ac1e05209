"""Real multi-process test networks for integration tests: start, drive through the CLI, clean up."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from p2pfs import identity, testnet
from p2pfs.errors import P2pfsError

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
            cwd: Path | None = None, identity_dir: Path | None = None) -> subprocess.CompletedProcess:
        """Run ``p2pfs --node NODE ARGS`` as the network's admin client, or as ``identity_dir``'s."""
        as_client = ["--identity", str(identity_dir)] if identity_dir is not None else []
        command = [sys.executable, "-m", "p2pfs", *as_client, "--node", self.address(node), *args]
        result = subprocess.run(command, input=stdin, capture_output=True, env=self.env(),
                                timeout=CLI_TIMEOUT_S, cwd=cwd)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} at {node} exited {result.returncode}: {result.stderr.decode()}"
            )
        return result

    def json(self, *args: str, node: str = "node1") -> object:
        return json.loads(self.cli(*args, "--json", node=node).stdout)

    def new_client(self, directory: Path, *options: str) -> identity.Identity:
        """A client identity signed by this network's CA, made as an operator does (``p2pfs client
        init``, e.g. with ``--role write``); the node id it prints is the one it saved."""
        made = self.cli("client", "init", str(directory), "--ca", str(self.directory / testnet.CA_DIR), *options,
                        "--json")
        client = identity.load_identity(directory)
        assert json.loads(made.stdout)["node_id"] == client.node_id
        return client

    def cli_async(self, *args: str, node: str = "node1") -> subprocess.Popen:
        command = [sys.executable, "-m", "p2pfs", "--node", self.address(node), *args]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env())

    def kill(self, name: str) -> None:
        assert testnet.stop_node(self.directory / name, kill=True)

    def stop(self, name: str) -> None:
        """SIGTERM: the node stops without leaving the cluster."""
        assert testnet.stop_node(self.directory / name, kill=False)

    def leave(self, name: str) -> None:
        """Decommission (`p2pfs leave`): hand off, leave, exit; wait for the exit."""
        assert testnet.leave_node(self.directory / name)

    def start(self, name: str) -> None:
        testnet.start_node(self.directory / name)

    def live(self) -> list[str]:
        return [name for name, p in self.status().items() if p.running]


def read_all(net: Net, expected: dict[str, bytes], through: list[str], concurrency: int = 8) -> None:
    """Get every file through the client library (real TLS, real daemons) and compare bytes:
    ``concurrency`` clients at a time, each getting its share one after another on one connection.

    Faster than a CLI process per file, which matters with hundreds of files, and than a
    connection (a TLS handshake) per file.
    """
    import io

    import trio

    from p2pfs.client import Client

    ident = identity.load_identity(net.directory / testnet.CLIENT_DIR)
    assert len(through) <= concurrency, "each node in `through` needs a client of its own"
    addresses = [net.status()[name].address for name in through]
    names = sorted(expected)
    mismatched: list[str] = []

    async def main() -> None:
        async def share(index: int) -> None:
            with trio.fail_after(CLI_TIMEOUT_S):
                async with Client.connect(ident, addresses[index % len(addresses)]) as client:
                    for name in names[index::concurrency]:
                        sink = io.BytesIO()
                        await client.get(name, sink)
                        if sink.getvalue() != expected[name]:
                            mismatched.append(name)

        async with trio.open_nursery() as nursery:
            for index in range(min(concurrency, len(names))):
                nursery.start_soon(share, index)

    trio.run(main)
    assert not mismatched, f"files read back wrong: {mismatched[:10]}"


def write_all(net: Net, files: dict[str, bytes], through: list[str], concurrency: int = 8) -> None:
    """Put every file through the client library (real TLS, real daemons), ``concurrency`` clients at
    a time, each putting its share one after another on one connection.

    Faster than one put after another: each put mostly waits for its replicas' disks.
    """
    import io

    import trio

    from p2pfs.client import Client

    ident = identity.load_identity(net.directory / testnet.CLIENT_DIR)
    assert len(through) <= concurrency, "each node in `through` needs a client of its own"
    addresses = [net.status()[name].address for name in through]
    names = sorted(files)

    async def main() -> None:
        async def share(index: int) -> None:
            with trio.fail_after(CLI_TIMEOUT_S):
                async with Client.connect(ident, addresses[index % len(addresses)]) as client:
                    for name in names[index::concurrency]:
                        await client.put(io.BytesIO(files[name]), name, len(files[name]))

        async with trio.open_nursery() as nursery:
            for index in range(min(concurrency, len(names))):
                nursery.start_soon(share, index)

    trio.run(main)


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


# Times a test network is re-created when another program took one of its ports
# between the system choosing it and the daemon binding it.
TESTNET_ATTEMPTS = 3


@contextlib.contextmanager
def running_testnet(directory: Path, nodes: int = 5, overrides: dict | None = None) -> Iterator[Net]:
    """Start a network on ports the system chose; stop every process on exit, even on failure."""
    try:
        for attempt in range(1, TESTNET_ATTEMPTS + 1):
            testnet.create(directory, nodes, 0, overrides)
            try:
                testnet.up(directory, nodes, 0)
                break
            except P2pfsError as exc:
                if "already in use" not in str(exc) or attempt == TESTNET_ATTEMPTS:
                    raise
                testnet.down(directory, timeout_s=10.0)
                shutil.rmtree(directory)
        yield Net(directory, nodes)
    finally:
        if (directory / testnet.CA_DIR / identity.CA_CERT_FILE).is_file():
            testnet.down(directory, timeout_s=10.0)
            for proc in testnet.status(directory):
                assert not proc.running, f"{proc.name} (pid {proc.pid}) survived testnet down"


def raise_fd_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to ``needed`` (a flood test holds more connections than the
    common default of 1,024); daemons started after inherit it. Skips when the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")


async def status_calls_while_flooding(client_identity, address, silent: list, *, reopen_per_s: float, calls: int,
                                      timeout_s: float, failures_allowed: int | None = None) -> list[bool]:
    """``calls`` status requests, one after another, while an attacker keeps replacing the oldest of
    the ``silent`` TCP connections with a new one ``reopen_per_s`` times a second; the outcome of each
    (stops early past ``failures_allowed``). Every stream in ``silent`` is closed at the end."""
    import trio

    from p2pfs.client import Client

    outcomes: list[bool] = []

    async def keep_flooding() -> None:
        while True:
            await trio.sleep(1 / reopen_per_s)  # the attacker's pace, not a synchronisation
            silent.append(await trio.open_tcp_stream(address.host, address.port))
            await trio.aclose_forcefully(silent.pop(0))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_flooding)
            for _ in range(calls):
                try:
                    with trio.fail_after(timeout_s):
                        async with Client.connect(client_identity, address) as client:
                            await client.status()
                    outcomes.append(True)
                except Exception:  # any failure counts against the fraction
                    outcomes.append(False)
                    if failures_allowed is not None and outcomes.count(False) > failures_allowed:
                        break
            nursery.cancel_scope.cancel()
    finally:
        for stream in silent:
            await trio.aclose_forcefully(stream)
    return outcomes
