"""The machine's ceiling for the data path, measured in the same run as bench_data.py's figures.

A stream over one mutually authenticated TLS 1.3 connection between two trio processes on
loopback (identities from p2pfs.identity, plain trio.SSLStream, 1 MiB writes), and the same
through p2pfs.net's streamed bodies (an upload in a request, a download in an answer).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import time
from pathlib import Path

import trio

from p2pfs import identity, net, wire
from p2pfs.address import Address
from p2pfs.wire import ErrorCode, Role

from bench_procs import cpu_s

MIB = 1024 * 1024
GIB = 1024 * MIB
# Bytes per write in the ceiling runs: the figure PERFORMANCE.md found fastest for TLS.
WRITE_BYTES = MIB
# Bytes asked per receive in the ceiling runs: what p2pfs.net's reader asks for.
RECEIVE_BYTES = 256 * 1024
# Slowest rate a transfer may run at before it is abandoned as hung, in bytes per second, and a
# fixed allowance on top (start-up, handshakes, the final fsync).
TRANSFER_RATE_BYTES_PER_S_MIN = 5_000_000
TRANSFER_ALLOWANCE_S = 60.0


def transfer_deadline_s(size_bytes: int) -> float:
    return TRANSFER_ALLOWANCE_S + size_bytes / TRANSFER_RATE_BYTES_PER_S_MIN


@wire.message(61001, senders=(Role.NODE, Role.CLIENT), takes_body=True)
class BenchUpload(wire.Message):
    """Benchmark-only request whose streamed body the receiver counts and drops."""

    size_bytes: int


@wire.message(61002, senders=(Role.NODE, Role.CLIENT))
class BenchDownload(wire.Message):
    """Benchmark-only request answered with a streamed body of ``size_bytes``."""

    size_bytes: int


# ---------------------------------------------------------------------------
# The ceiling: one TLS connection between two processes


def _child_main(kind: str, node_dir: str, size_bytes: int, report) -> None:
    """Entry point of the receiving process (multiprocessing, spawn): sends its port on ``report``."""
    ident = identity.load_identity(Path(node_dir))
    if kind == "tls":
        trio.run(_tls_sink, ident, size_bytes, report)
    else:
        trio.run(_net_server, ident, report)


async def _tls_sink(ident: identity.Identity, size_bytes: int, report) -> None:
    """Accept one connection, read ``size_bytes`` and answer one byte: the sender's clock stops then."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    report.send(listeners[0].socket.getsockname()[1])
    with trio.fail_after(transfer_deadline_s(size_bytes)):
        tcp = await listeners[0].accept()
        stream = trio.SSLStream(tcp, ident.server_context(), server_side=True)
        await stream.do_handshake()
        received = 0
        while received < size_bytes:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise ConnectionError(f"sender closed after {received} of {size_bytes} bytes")
            received += len(data)
        await stream.send_all(b"k")
        await stream.aclose()


class _SinkHandlers:
    """Serves BenchUpload (counts and drops the body) and BenchDownload (streams random bytes)."""

    def __init__(self) -> None:
        self._piece = os.urandom(WRITE_BYTES)

    async def handle_request(self, request: net.IncomingRequest) -> wire.Message | net.Reply:
        msg = request.msg
        if isinstance(msg, BenchUpload) and request.body is not None:
            received = 0
            async for data in request.body:
                received += len(data)
            return BenchUpload(received)
        if isinstance(msg, BenchDownload):
            async def body(send) -> None:
                for _ in range(msg.size_bytes // WRITE_BYTES):
                    await send(self._piece)
            return net.Reply(msg, body)
        raise net.RemoteError(ErrorCode.BAD_REQUEST, f"{type(msg).__name__} is not served here")

    def handle_oneway(self, conn: net.Connection, msg: wire.Message) -> None:
        pass  # nothing is sent one-way in this benchmark


async def _net_server(ident: identity.Identity, report) -> None:
    endpoint = net.Endpoint(ident, Address("127.0.0.1", 0), _SinkHandlers())
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.run)
        report.send(endpoint.bound_port)


@contextlib.contextmanager
def _receiver(kind: str, node_dir: Path, size_bytes: int):
    """A receiving process, killed on exit; yields (its pid, its port)."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter, as a real peer would be
    ours, theirs = context.Pipe()
    child = context.Process(target=_child_main, args=(kind, str(node_dir), size_bytes, theirs), daemon=True)
    child.start()
    try:
        if not multiprocessing.connection.wait([ours, child.sentinel], TRANSFER_ALLOWANCE_S) or not ours.poll():
            raise RuntimeError(f"the {kind} receiver did not start within {TRANSFER_ALLOWANCE_S} s "
                               f"(exit code {child.exitcode})")
        yield child.pid, ours.recv()
    finally:
        child.kill()
        child.join(10)


def _ceiling_row(path: str, size_bytes: int, seconds: float, sender_cpu_s: float, receiver_cpu_s: float) -> dict:
    return {
        "path": path,
        "mb_s": size_bytes / seconds / 1e6,
        "sender_cpu_s_per_gib": sender_cpu_s * GIB / size_bytes,
        "receiver_cpu_s_per_gib": receiver_cpu_s * GIB / size_bytes,
    }


def measure_tls(node_dir: Path, client_ident: identity.Identity, size_bytes: int) -> dict:
    """Plain trio.SSLStream, mutual TLS 1.3, 1 MiB writes, one connection, two processes."""
    piece = os.urandom(WRITE_BYTES)
    with _receiver("tls", node_dir, size_bytes) as (pid, port):

        async def send() -> tuple[float, float, float]:
            with trio.fail_after(transfer_deadline_s(size_bytes)):
                tcp = await trio.open_tcp_stream("127.0.0.1", port)
                stream = trio.SSLStream(tcp, client_ident.client_context(), server_hostname=None)
                await stream.do_handshake()
                start, cpu_start, their_cpu_start = time.perf_counter(), time.process_time(), cpu_s(pid)
                for _ in range(size_bytes // WRITE_BYTES):
                    await stream.send_all(piece)
                if await stream.receive_some(1) != b"k":
                    raise ConnectionError("the receiver did not confirm")
                result = (time.perf_counter() - start, time.process_time() - cpu_start, cpu_s(pid) - their_cpu_start)
                await stream.aclose()
                return result

        seconds, ours, theirs = trio.run(send)
    return _ceiling_row("TLS 1.3, trio.SSLStream, 1 MiB writes", size_bytes, seconds, ours, theirs)


def measure_net(node_dir: Path, client_ident: identity.Identity, size_bytes: int) -> list[dict]:
    """p2pfs.net: a streamed request body (upload) and a streamed answer (download), 1 MiB pieces."""
    piece = os.urandom(WRITE_BYTES)
    rows = []
    with _receiver("net", node_dir, size_bytes) as (pid, port):

        async def both() -> None:
            async with net.client_connection(client_ident, Address("127.0.0.1", port)) as conn:
                async def body():
                    for _ in range(size_bytes // WRITE_BYTES):
                        yield piece

                start, cpu_start, their_cpu_start = time.perf_counter(), time.process_time(), cpu_s(pid)
                reply = await conn.request(BenchUpload(size_bytes), timeout_s=transfer_deadline_s(size_bytes), body=body())
                if reply != BenchUpload(size_bytes):
                    raise RuntimeError(f"upload answered {reply}")
                rows.append(_ceiling_row(
                    "p2pfs.net streamed request body (upload)", size_bytes, time.perf_counter() - start,
                    time.process_time() - cpu_start, cpu_s(pid) - their_cpu_start,
                ))
                start, cpu_start, their_cpu_start = time.perf_counter(), time.process_time(), cpu_s(pid)
                received = 0
                with trio.fail_after(transfer_deadline_s(size_bytes)):
                    async with conn.open_request(BenchDownload(size_bytes), timeout_s=TRANSFER_ALLOWANCE_S) as resp:
                        async for data in resp.body:
                            received += len(data)
                if received != size_bytes:
                    raise RuntimeError(f"download brought {received} of {size_bytes} bytes")
                rows.append(_ceiling_row(
                    "p2pfs.net streamed answer (download)", size_bytes, time.perf_counter() - start,
                    cpu_s(pid) - their_cpu_start, time.process_time() - cpu_start,
                ))

        trio.run(both)
    return rows


def ceiling_identities(work_dir: Path) -> tuple[Path, identity.Identity]:
    """A node identity directory for the receiver and a client identity for the sender."""
    authority = identity.create_ca()
    node_dir = work_dir / "ceiling-node"
    identity.create_identity(node_dir, authority, Role.NODE)
    return node_dir, identity.create_identity(work_dir / "ceiling-client", authority, Role.CLIENT)


def measure_ceiling(node_dir: Path, client_ident: identity.Identity, size_bytes: int) -> list[dict]:
    return [measure_tls(node_dir, client_ident, size_bytes), *measure_net(node_dir, client_ident, size_bytes)]


def best_tls_mb_s(report: dict) -> float:
    """The ceiling ratios are taken to: the better of the plain TLS runs before and after (the
    machine's load drifts during a run; the better run is the nearer to what it can do)."""
    return max(run[0]["mb_s"] for run in report["ceiling"].values())
