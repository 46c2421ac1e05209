"""Hostile quantities from clients with a valid certificate, against a real daemon: what it holds, what it logs.

* Memory: 100 connections each hold a frame declared at the largest size
  (8 MiB) minus one byte and never finish it; one connection sends 8 requests
  whose handler ignores a body (GetFile takes none), 8 frames of 8 MiB each;
  one get's client never grants credit. The node's RSS must stay within its
  configured memory budget plus its idle size (the node with the same
  connections open and nothing asked) plus what each connection's TLS layer
  keeps once it has carried data (``TLS_BUFFER_BYTES_PER_CONNECTION``), and
  come back to within ``RSS_RETURN_MARGIN_BYTES`` of the idle size once the
  connections are gone (the node gives its free heap back: ``net/heap.py``).
  Meanwhile the node writes fewer than 100 log lines a minute, none at ERROR.
  The node's get prefetch is not input and not in the budget: the test keeps it
  small ([replication] get_window_chunks) so that what is measured is input.
* Logs: 512 puts that announce a body and never send it (the node gives up on
  each after its stream idle timeout), puts with no body at all, gets whose client never grants credit, and clients
  that disconnect in the middle of a get. No traceback and no ERROR line may
  appear, and fewer than 100 lines a minute, the access log (one INFO line per
  client request, collapsed per client: ``observe.AccessLogCollapsed``) included.
  Every request is still accounted for: by its own access-log line, or in the
  count of a collapsed interval.

The node's budget is configured small (``BUDGET_BYTES``) so that the test is
fast and the bound is tight.
"""

from __future__ import annotations

import io
import re
import struct
import threading
import time
from pathlib import Path

import trio

from p2pfs import identity, testnet, wire
from p2pfs.address import Address
from p2pfs.client import Client
from p2pfs.replication import messages as dm
from p2pfs.wire import Frame, FrameKind

from testnet_helpers import running_testnet, wait_for

MIB = 1024 * 1024
BUDGET_BYTES = 32 * MIB
# Longest a stalled get is kept by the node: short, so that the test sees the node give up.
STREAM_IDLE_TIMEOUT_S = 3.0
# Longest the abusive connections push (until everything is sent, or the node stops
# reading and they are blocked). With the budget, the node stops taking bytes within 2.5 s
# (load 33 on 2 cores; 13 s with the attacker's process niced at load 43, where it encrypts
# ~7 MiB/s); on the code before the budget, the node took in all of it (over 1 GiB), and
# at 7 MiB/s it would take twice the bound's allowance within this time.
ATTACK_S = 20.0
# The RSS can only come back once the partial frames time out, so this, not the attack,
# sets how long the test takes: 5 s past the attack's end.
FRAME_READ_TIMEOUT_S = ATTACK_S + 5.0
OVERRIDES = {
    "net": {
        "memory_budget_bytes": BUDGET_BYTES,
        "stream_idle_timeout_s": STREAM_IDLE_TIMEOUT_S,
        # Beyond the attack (ATTACK_S): only the budget may stop the partial frames from growing.
        # The node cannot see that an attacker waiting for it to read has gone (the close comes
        # behind the bytes it has not read), so this is also when it lets go of them after.
        "frame_read_timeout_s": FRAME_READ_TIMEOUT_S,
    },
    "replication": {"get_window_chunks": 1},
}
FILE_BYTES = 24 * MIB  # more than a get's stream window (8 MiB): its sender must wait for credit

PARTIAL_FRAME_CONNECTIONS = 100
UNREAD_BODY_REQUESTS = 8
UNREAD_BODY_FRAMES = 8
RSS_SAMPLE_INTERVAL_S = 0.1
# What the node holds beyond the bytes its budget counts, whatever the number of abusive
# connections: a frame being decoded is copied once (up to 8 MiB, the largest frame) before
# the buffer it came from is freed; the decoders' buffers are over-allocated by up to 1/8
# (CPython's bytearray growth: 4 MiB of a 32 MiB budget); the stalled get's answer in flight
# (a 1 MiB frame and its ciphertext); and the allocator's rounding.
RSS_SLACK_BYTES = 20 * MIB
# What a connection's TLS layer keeps, outside the budget, once it has carried data: its
# memory BIO grows to one socket read of ciphertext (net.config.RECEIVE_BYTES, 256 KiB) and
# does not shrink, and OpenSSL's record buffers (~34 KiB). Freed when the connection closes.
TLS_BUFFER_BYTES_PER_CONNECTION = 300 * 1024
# After the abuse, the node's RSS must come back to its idle size, within this margin: what
# the heap cannot give back (blocks still in use between free ones, Python's partly used
# arenas). Before the node gave its free heap back, glibc kept what the budget's buffers and
# the TLS buffers had used (RSS stayed ~64 MiB above idle with a 32 MiB budget); before the
# budget, RSS stayed above 700 MiB.
RSS_RETURN_MARGIN_BYTES = 8 * MIB
# The partial frames time out (FRAME_READ_TIMEOUT_S after they began, so at most ~5 s after
# the attack), then the node waits for its buffered bytes to stay low (net.config.HEAP_TRIM_SETTLE_S).
RSS_RETURN_TIMEOUT_S = 60.0

BODYLESS_PUTS = 512
PLAIN_PUTS = 64
STALLED_GETS = 8
DISCONNECTING_GETS = 8
LOG_LINES_PER_MINUTE_MAX = 100
LOG_WAIT_S = 120.0


class _PeakRss:
    """The node's largest RSS, sampled from a thread of its own: the attacker's trio loop is
    busy encrypting, and would sample late and rarely."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.peak_bytes = _rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_INTERVAL_S):
            self.peak_bytes = max(self.peak_bytes, _rss_bytes(self._pid))

    def __enter__(self) -> "_PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, _rss_bytes(self._pid))


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def _authenticated(ident: identity.Identity, address: Address) -> trio.SSLStream:
    """A TLS connection with the client's certificate and hello, driven by hand."""
    tcp = await trio.open_tcp_stream(address.host, address.port)
    stream = trio.SSLStream(tcp, ident.client_context(), server_hostname=None)
    await stream.do_handshake()
    hello = wire.Hello(wire.PROTOCOL_VERSION, ident.cluster_id, "client", "", 0)
    await stream.send_all(wire.encode_frame(Frame(FrameKind.HELLO, 0, wire.Hello.TYPE, wire.encode_message(hello))))
    return stream


def _request(kind: FrameKind, stream_id: int, msg: wire.Message) -> bytes:
    return wire.encode_frame(Frame(kind, stream_id, msg.TYPE, wire.encode_message(msg)))


SEND_PIECE_BYTES = 64 * 1024


async def _send_quietly(stream: trio.SSLStream, data) -> None:
    """Send what the node takes; a node that hangs up on us is one way of refusing it."""
    view = memoryview(data)
    try:
        for offset in range(0, len(view), SEND_PIECE_BYTES):
            await stream.send_all(view[offset:offset + SEND_PIECE_BYTES])
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _frames_until(stream: trio.SSLStream, wanted) -> Frame | None:
    """Read frames (granting no credit) until ``wanted(frame)``; None if the node hung up first."""
    decoder = wire.FrameDecoder()
    while True:
        while (frame := decoder.next_frame()) is not None:
            if wanted(frame):
                return frame
        try:
            data = await stream.receive_some(256 * 1024)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if not data:
            return None
        decoder.feed(data)


def _put_file(net, name: str, size_bytes: int) -> None:
    ident = identity.load_identity(net.directory / testnet.CLIENT_DIR)
    address = net.status()["node1"].address

    async def main() -> None:
        with trio.fail_after(120):
            async with Client.connect(ident, address) as client:
                await client.put(io.BytesIO(b"\x5a" * size_bytes), name, size_bytes)

    trio.run(main)


def test_abusive_connections_stay_within_the_memory_budget(tmp_path):
    with running_testnet(tmp_path / "net", nodes=1, overrides=OVERRIDES) as net:
        _put_file(net, "big", FILE_BYTES)
        node = net.status()["node1"]
        ident = identity.load_identity(tmp_path / "net" / testnet.CLIENT_DIR)
        samples: dict[str, int] = {}

        async def main() -> None:
            partial = [await _authenticated(ident, node.address) for _ in range(PARTIAL_FRAME_CONNECTIONS)]
            unread = await _authenticated(ident, node.address)
            stalled = await _authenticated(ident, node.address)
            # The idle size: the node with these connections open and nothing asked of it.
            await trio.sleep(1.0)  # let the node take the hellos in; a measurement, not a synchronisation
            samples["idle"] = _rss_bytes(node.pid)

            declared = wire.FRAME_SIZE_BYTES_MAX - 1
            partial_frame = struct.pack(">I", declared) + b"\0" * (declared - 1)

            async def hold_a_partial_frame(stream: trio.SSLStream) -> None:
                await _send_quietly(stream, partial_frame)

            async def unread_bodies() -> None:
                payload = b"\0" * (wire.FRAME_SIZE_BYTES_MAX - wire.FRAME_HEADER_BYTES + 4)
                for i in range(UNREAD_BODY_REQUESTS):
                    stream_id = 2 * i + 1
                    await _send_quietly(unread, _request(FrameKind.REQUEST_STREAM, stream_id, dm.GetFile("big")))
                    for _ in range(UNREAD_BODY_FRAMES):
                        await _send_quietly(unread, wire.encode_frame(Frame(FrameKind.STREAM_DATA, stream_id, 0, payload)))

            with _PeakRss(node.pid) as rss:
                with trio.move_on_after(ATTACK_S):
                    async with trio.open_nursery() as nursery:
                        await _send_quietly(stalled, _request(FrameKind.REQUEST, 1, dm.GetFile("big")))
                        for stream in partial:
                            nursery.start_soon(hold_a_partial_frame, stream)
                        nursery.start_soon(unread_bodies)
            samples["peak"] = rss.peak_bytes
            for stream in [*partial, unread, stalled]:
                await trio.aclose_forcefully(stream)

        log_file = tmp_path / "net" / "node1" / testnet.LOG_FILE
        log_size_before = log_file.stat().st_size
        started = time.monotonic()
        trio.run(main)
        idle, peak = samples["idle"], samples["peak"]
        connections = PARTIAL_FRAME_CONNECTIONS + 2
        bound = idle + BUDGET_BYTES + connections * TLS_BUFFER_BYTES_PER_CONNECTION + RSS_SLACK_BYTES
        assert peak <= bound, (
            f"RSS went from {idle / MIB:.0f} MiB idle to {peak / MIB:.0f} MiB "
            f"with a budget of {BUDGET_BYTES / MIB:.0f} MiB"
        )
        back_bytes = idle + RSS_RETURN_MARGIN_BYTES
        wait_for(lambda: _rss_bytes(node.pid) <= back_bytes, timeout_s=RSS_RETURN_TIMEOUT_S,
                 what=f"RSS back within {back_bytes / MIB:.0f} MiB (idle {idle / MIB:.0f} MiB) once the "
                 f"connections closed, from a peak of {peak / MIB:.0f} MiB")
        # What the node wrote meanwhile: the peer's faults (partial frames timed out, bodies
        # refused, a get without credit), one collapsed WARNING per kind per interval.
        elapsed_min = max(1.0, (time.monotonic() - started) / 60)
        with log_file.open("rb") as log:
            log.seek(log_size_before)
            lines = log.read().decode(errors="replace").splitlines()
        text = "\n".join(lines)
        assert "Traceback" not in text and not [line for line in lines if " ERROR " in line], text[-4000:]
        assert len(lines) / elapsed_min < LOG_LINES_PER_MINUTE_MAX, f"{len(lines)} lines:\n" + text[-4000:]


def _access_log_line(line: str) -> bool:
    return " for client " in line and " operation=" in line


# A collapsed interval's line: "... p2pfs.access: client ID: N more requests ...: put_file unavailable 3, ..."
_COLLAPSED_LINE = re.compile(r" p2pfs\.access: client \w+: \d+ more requests [^:]*: (.*) \(slowest ")


def _requests_logged(lines: list[str], operation: str) -> int:
    """Requests of ``operation`` the access log accounts for: its own lines and collapsed counts."""
    count = 0
    for line in lines:
        if _access_log_line(line) and line.split()[4] == operation:
            count += 1
        elif (collapsed := _COLLAPSED_LINE.search(line)) is not None:
            for entry in collapsed.group(1).split(", "):
                entry_operation, _, entry_count = entry.split(" ")
                count += int(entry_count) if entry_operation == operation else 0
    return count


def test_hostile_clients_write_no_errors_and_few_lines(tmp_path):
    with running_testnet(tmp_path / "net", nodes=1, overrides=OVERRIDES) as net:
        _put_file(net, "big", FILE_BYTES)
        node = net.status()["node1"]
        ident = identity.load_identity(tmp_path / "net" / testnet.CLIENT_DIR)
        log_file = tmp_path / "net" / "node1" / testnet.LOG_FILE
        log_size_before = log_file.stat().st_size

        def new_lines() -> list[str]:
            with log_file.open("rb") as log:
                log.seek(log_size_before)
                return log.read().decode(errors="replace").splitlines()

        def answered(operation: str) -> int:
            return _requests_logged(new_lines(), operation)

        async def errors_answered(stream: trio.SSLStream, count: int) -> None:
            decoder = wire.FrameDecoder()
            errors = 0
            while errors < count:
                data = await stream.receive_some(256 * 1024)
                assert data, f"the node hung up after {errors} of {count} answers"
                decoder.feed(data)
                errors += sum(1 for frame in decoder.frames() if frame.kind is FrameKind.ERROR)

        async def bodyless_puts(stream: trio.SSLStream, kind: FrameKind, count: int, prefix: str) -> None:
            # REQUEST_STREAM: puts that announce a body and never send it (the node gives up
            # after its stream idle timeout); REQUEST: puts without a body at all.
            for i in range(count):
                await stream.send_all(_request(kind, 2 * i + 1, dm.PutFile(f"{prefix}{i}", 1000)))
            await errors_answered(stream, count)
            await trio.aclose_forcefully(stream)

        async def stalled_get(stream: trio.SSLStream) -> None:
            await stream.send_all(_request(FrameKind.REQUEST, 1, dm.GetFile("big")))
            # Read what the node sends, but grant no credit: it gives up after its idle timeout.
            frame = await _frames_until(stream, lambda f: f.kind is FrameKind.ERROR)
            assert frame is not None, "the node hung up instead of ending the stalled get"
            await trio.aclose_forcefully(stream)

        async def disconnecting_get(stream: trio.SSLStream) -> None:
            await stream.send_all(_request(FrameKind.REQUEST, 1, dm.GetFile("big")))
            frame = await _frames_until(stream, lambda f: f.kind is FrameKind.STREAM_DATA)
            assert frame is not None, "the node sent no body"
            await trio.aclose_forcefully(stream)

        async def main() -> None:
            with trio.fail_after(LOG_WAIT_S):
                # Opened one by one: the node sheds a source address's 17th connection still in its handshake.
                streams = [await _authenticated(ident, node.address)
                           for _ in range(2 + STALLED_GETS + DISCONNECTING_GETS)]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(bodyless_puts, streams.pop(), FrameKind.REQUEST_STREAM, BODYLESS_PUTS, "never")
                    nursery.start_soon(bodyless_puts, streams.pop(), FrameKind.REQUEST, PLAIN_PUTS, "plain")
                    for _ in range(STALLED_GETS):
                        nursery.start_soon(stalled_get, streams.pop())
                    for _ in range(DISCONNECTING_GETS):
                        nursery.start_soon(disconnecting_get, streams.pop())

        started = time.monotonic()
        trio.run(main)
        # Every request has been handled once the access log accounts for it (the count of a
        # collapsed interval is told within observe.ACCESS_LOG_INTERVAL_S of its end).
        wait_for(lambda: answered("put_file") >= BODYLESS_PUTS + PLAIN_PUTS, timeout_s=LOG_WAIT_S,
                 what=f"{BODYLESS_PUTS + PLAIN_PUTS} puts answered")
        wait_for(lambda: answered("get_file") >= STALLED_GETS + DISCONNECTING_GETS, timeout_s=LOG_WAIT_S,
                 what=f"{STALLED_GETS + DISCONNECTING_GETS} gets answered")
        elapsed_min = max(1.0, (time.monotonic() - started) / 60)
        lines = new_lines()
        assert _requests_logged(lines, "put_file") == BODYLESS_PUTS + PLAIN_PUTS
        assert _requests_logged(lines, "get_file") == STALLED_GETS + DISCONNECTING_GETS
        text = "\n".join(lines)
        assert "Traceback" not in text, text[-4000:]
        assert not [line for line in lines if " ERROR " in line], text[-4000:]
        assert len(lines) / elapsed_min < LOG_LINES_PER_MINUTE_MAX, f"{len(lines)} lines:\n" + text[-4000:]
