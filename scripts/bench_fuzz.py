"""Fuzz the frame decoder in-process and every message handler of a live node over real TLS.

Run: .venv/bin/python scripts/bench.py fuzz [--decoder-inputs N] [--live-inputs N] [--seed S]

Two parts, one seed:

1. In-process: byte strings fed to ``wire.FrameDecoder`` in random splits; every
   frame that comes out goes to the stream multiplexer (``net.mux.Mux``, as a
   node serving a client or a node) and, if it carries a message, to
   ``wire.decode_message``. Anything but ``WireError``/``ProtocolViolation`` is a
   crash. The inputs are frames built from mutated valid messages of every type,
   random frames, truncated and oversized ones, and plain random bytes.
2. A live node: one real daemon (``p2pfs.testnet``, one node), holding a few
   files. Fuzz connections with a node certificate and with a client certificate
   (real TLS 1.3, a real hello) send frames of the same kinds: requests and
   one-way messages of every type the role may send (and some it may not),
   streamed puts, credit, cancel, error and stream frames with mutated payloads
   and stream ids, a frame cut short, a frame announcing more than the cap. Each
   connection sends up to ``FRAMES_PER_CONNECTION_MAX`` frames the in-process
   decoder and a mirror of the node's multiplexer accept, then one they refuse
   (the node closes the connection there), so every frame counted as sent reached
   the node's handlers or its decoder. Between batches, a fresh
   client asks the node for its status within ``HEALTH_DEADLINE_S``: the process
   gone is a crash, no answer in time a hang. The node's RSS is sampled at each
   health check.

``LeaveRequest`` is never sent whole: a valid one decommissions the node, as it
should. Messages are drawn by ``FieldGen`` from the message classes' annotations
(boundary values as in tests/hostile_strategies.py, kept here so the benchmark
needs no test code and no Hypothesis), and mutated at the byte level.

Prints a markdown table (or JSON) and each finding (a crash with its input, a hang)
on stderr; like every benchmark it exits 0 once it ran, whatever it found:
tests/test_fuzz.py reads the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import io
import json
import os
import random
import resource
import shutil
import ssl
import sys
import tempfile
import time
import types
import typing
from pathlib import Path

import msgpack
import trio

from p2pfs import identity, testnet, wire
from p2pfs.membership import messages as mm
from p2pfs.net.errors import ProtocolViolation
from p2pfs.net.mux import Mux
from p2pfs.node import messages as nm
from p2pfs.replication import messages as dm  # noqa: F401 (importing it registers the data messages)
from p2pfs.wire import FrameKind, Role

# A status request must be answered within this long, or the node counts as hung:
# far past any status answer (milliseconds), short enough to notice a stuck loop.
HEALTH_DEADLINE_S = 30.0
# Connection set-up and each send get this long: a node that stops reading for this
# long while we write is as good as hung (the health check then says so).
IO_DEADLINE_S = 30.0
# Frames sent on one fuzz connection before it is closed and a new one opened.
FRAMES_PER_CONNECTION_MAX = 64
# Frames drawn for one connection at most: those the node would refuse are set aside
# (one is sent last), so a connection carries up to FRAMES_PER_CONNECTION_MAX.
FRAME_DRAWS_PER_CONNECTION_MAX = 8 * FRAMES_PER_CONNECTION_MAX
# Fuzz connections open at once (the node's per-address limits are far above this).
CONNECTIONS_CONCURRENT = 8
# After the frame the node refuses, how long we wait to see it close the connection
# before closing it ourselves (a frame cut short keeps the node waiting for the rest
# for its frame_read_timeout_s, which we need not sit out).
CLOSE_WAIT_S = 1.0
# A health check (and an RSS sample) after this many fuzz connections.
CONNECTIONS_PER_HEALTH_CHECK = 50
# Largest random payload drawn, in bytes: past the small-message paths, well under the frame cap.
RANDOM_PAYLOAD_BYTES_MAX = 4096
# Crashes printed with their input (the count covers all).
CRASHES_SHOWN_MAX = 5

_BOUNDARY_INTS = [-1, 0, 1, 255, 256, 2**31 - 1, 2**32 - 1, 2**32, 2**48 - 1, 2**48, 2**63 - 1, -(2**63), 2**64 - 1]
_BOUNDARY_FLOATS = [float("nan"), float("inf"), float("-inf"), -0.0, -1.0, 1e308]
_BOUNDARY_TEXT = ["", "\x00", "a\x00b", "x" * 65, "x" * 129, "n" * 1025, "\u00e9" * 600, "AB" * 32, "ab" * 32]
_BYTE_LENGTHS = [0, 1, 15, 16, 17, 31, 32, 32, 32, 33, 63, 64, 65, 95]
_INTERESTING_BYTES = [0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xC4, 0xD9, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF]
LEAVE_TYPE = nm.LeaveRequest.TYPE
# A frame's body length counts its kind, stream id and type (the header less the length field).
_BODY_HEADER_BYTES = wire.FRAME_HEADER_BYTES - 4


class FieldGen:
    """Raw msgpack field values for a message class, valid more often than not, from a seeded rng."""

    def __init__(self, rng: random.Random, names: list[str], chunk_ids: list[bytes], node_ids: list[str]) -> None:
        self.rng = rng
        self.names = names or ["fuzz"]
        self.chunk_ids = chunk_ids or [bytes(32)]
        self.node_ids = node_ids or ["0" * 64]
        self._hints: dict[type, dict[str, typing.Any]] = {}

    def hints(self, cls: type) -> dict[str, typing.Any]:
        if cls not in self._hints:
            self._hints[cls] = typing.get_type_hints(cls)
        return self._hints[cls]

    def fields(self, cls: type) -> list:
        hints = self.hints(cls)
        return [self.value(hints[f.name]) for f in dataclasses.fields(cls)]

    def value(self, tp) -> typing.Any:
        rng = self.rng
        hostile = rng.random() < 0.15
        origin = typing.get_origin(tp)
        if tp is bool:
            return rng.random() < 0.5
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return rng.choice(_BOUNDARY_INTS) if hostile else rng.choice(list(tp)).value
        if tp is int:
            return rng.choice(_BOUNDARY_INTS) if hostile else rng.choice([0, 1, 2, 3, rng.randrange(1 << 16),
                                                                           rng.randrange(1 << 40)])
        if tp is float:
            return rng.choice(_BOUNDARY_FLOATS) if hostile else rng.uniform(0, 100)
        if tp is str:
            if hostile:
                return rng.choice(_BOUNDARY_TEXT)
            return rng.choice([rng.choice(self.names), rng.choice(self.node_ids), "node", "client",
                               "127.0.0.1", "", f"fuzz/{rng.randrange(1000)}"])
        if tp is bytes:
            if hostile:
                return rng.randbytes(rng.choice(_BYTE_LENGTHS))
            return rng.choice([rng.choice(self.chunk_ids), rng.randbytes(32), b"",
                               bytes.fromhex(rng.choice(self.node_ids))])
        if origin in (typing.Union, types.UnionType):
            (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
            return None if rng.random() < 0.3 else self.value(inner)
        if origin is tuple:
            return [self.value(typing.get_args(tp)[0]) for _ in range(rng.choice([0, 1, 1, 2, 3, 5]))]
        if dataclasses.is_dataclass(tp):
            return self.fields(tp)
        raise AssertionError(f"no values for {tp}")


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four byte-level changes: flips, interesting bytes, cuts, splices, growth."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        if choice == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif choice == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.choice(_INTERESTING_BYTES)
        elif choice == 2 and buf:
            del buf[rng.randrange(len(buf)):]
        elif choice == 3 and buf:
            i = rng.randrange(len(buf))
            j = rng.randrange(i, min(len(buf), i + 64) + 1)
            buf[i:i] = buf[i:j]
        elif choice == 4:
            buf[rng.randrange(len(buf) + 1):0] = rng.randbytes(rng.randint(1, 16))
        elif choice == 5 and buf:
            i = rng.randrange(len(buf))
            del buf[i : i + rng.randint(1, 16)]
        else:
            buf += rng.randbytes(rng.randint(1, 8))
    return bytes(buf)


class Inputs:
    """Frames to throw at a decoder or a node: mutated valid messages, random frames, broken headers."""

    def __init__(self, gen: FieldGen, types_by_role: dict[Role, list[type]]) -> None:
        self.gen = gen
        self.rng = gen.rng
        self.types_by_role = types_by_role
        self.all_types = sorted({c for cs in types_by_role.values() for c in cs}, key=lambda c: c.TYPE)
        # Payloads that decoded, per type: mutating a valid message reaches past the first check.
        self.corpus: dict[type, list[bytes]] = {c: [] for c in self.all_types}

    def payload(self, cls: type) -> bytes:
        rng = self.rng
        corpus = self.corpus[cls]
        if corpus and rng.random() < 0.5:
            return mutate(rng.choice(corpus), rng)
        payload = msgpack.packb(self.gen.fields(cls), use_bin_type=True)
        if rng.random() < 0.2:
            payload = mutate(payload, rng)
        return payload

    def note_valid(self, cls: type, payload: bytes) -> None:
        corpus = self.corpus[cls]
        if len(corpus) < 64:
            corpus.append(payload)
        else:
            corpus[self.rng.randrange(64)] = payload

    def message_frame(self, role: Role, stream_id: int) -> bytes:
        """A request (or one-way message) of a type ``role`` may send, mostly; encoded, header and all."""
        rng = self.rng
        own = self.types_by_role[role]
        cls = rng.choice(own if rng.random() < 0.9 else self.all_types)
        kind = FrameKind.ONEWAY if cls.__module__ == mm.__name__ and rng.random() < 0.8 else rng.choice(
            [FrameKind.REQUEST] * 6 + [FrameKind.REQUEST_STREAM, FrameKind.ONEWAY])
        return _frame(kind, stream_id, cls.TYPE, self.payload(cls))

    def random_frame(self, stream_id: int) -> bytes:
        rng = self.rng
        kind = rng.choice(list(FrameKind)) if rng.random() < 0.9 else rng.randrange(256)
        msg_type = rng.choice([c.TYPE for c in self.all_types]) if rng.random() < 0.7 else rng.randrange(1 << 16)
        payload_kind = rng.randrange(4)
        if payload_kind == 0:
            payload = wire.encode_credit(rng.choice([0, 1, 8, 2**32 - 1]))
        elif payload_kind == 1:
            payload = wire.encode_error(wire.ErrorCode.INTERNAL, "fuzz")
        else:
            payload = rng.randbytes(rng.choice([0, 1, 4, 16, rng.randrange(RANDOM_PAYLOAD_BYTES_MAX)]))
        if rng.random() < 0.3:
            stream_id = rng.choice([0, 1, 2, 3, 2**32 - 1, stream_id + 2])
        return _frame(kind, stream_id, msg_type, payload)

    def broken_header(self) -> bytes:
        """A header announcing a body over the cap, shorter than a header, or cut short."""
        rng = self.rng
        choice = rng.randrange(3)
        if choice == 0:
            return wire.FRAME_HEADER.pack(wire.FRAME_SIZE_BYTES_MAX + rng.randint(1, 2**20), 2, 1, 80)
        if choice == 1:
            return rng.randint(0, 6).to_bytes(4, "big") + rng.randbytes(rng.randint(0, 6))
        whole = _frame(FrameKind.REQUEST, 1, nm.StatusRequest.TYPE, b"\x90")
        return whole[: rng.randrange(1, len(whole))]

    def any_input(self, role: Role, stream_id: int) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.7:
            return self.message_frame(role, stream_id)
        if r < 0.9:
            return self.random_frame(stream_id)
        if r < 0.95:
            return self.broken_header()
        return rng.randbytes(rng.randrange(64))


def _frame(kind: int, stream_id: int, msg_type: int, payload: bytes) -> bytes:
    return wire.FRAME_HEADER.pack(_BODY_HEADER_BYTES + len(payload), kind, stream_id, msg_type) + payload


def message_types() -> dict[Role, list[type]]:
    """Every message type (the replies too: a peer may send anything), by the roles that may send it."""
    found: dict[Role, list[type]] = {Role.NODE: [], Role.CLIENT: []}
    for code, cls in sorted(wire.message_types().items()):
        if code == wire.Hello.TYPE:
            continue
        for role in cls.SENDERS:
            found[role].append(cls)
    return found


# -- part 1: in process ----------------------------------------------------------------


@dataclasses.dataclass
class DecoderResult:
    inputs: int = 0
    frames: int = 0
    messages_valid: int = 0
    refused: int = 0
    crashes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def fuzz_decoder(inputs: Inputs, count: int) -> DecoderResult:
    """``count`` inputs through FrameDecoder, Mux and decode_message; anything but their errors is a crash."""
    rng = inputs.rng
    result = DecoderResult()
    started = time.perf_counter()
    for i in range(count):
        role = Role.NODE if i % 2 else Role.CLIENT
        data = b"".join(inputs.any_input(role, 2 * rng.randrange(4) + 1) for _ in range(rng.randint(1, 3)))
        decoder = wire.FrameDecoder()
        mux = Mux(dialled=False, peer_role=role, serving=True)
        try:
            pos = 0
            while pos < len(data):
                step = rng.randint(1, len(data) - pos)
                decoder.feed(data[pos : pos + step])
                pos += step
                while (frame := decoder.next_frame()) is not None:
                    result.frames += 1
                    if frame.kind in (FrameKind.REQUEST, FrameKind.REQUEST_STREAM, FrameKind.ONEWAY):
                        try:
                            wire.decode_message(frame.msg_type, frame.payload)
                        except wire.WireError:
                            pass
                        else:
                            result.messages_valid += 1
                            cls = wire.message_types()[frame.msg_type]
                            if cls in inputs.corpus:
                                inputs.note_valid(cls, bytes(frame.payload))
                    mux.receive_frame(frame)
        except (wire.WireError, ProtocolViolation):
            result.refused += 1
        except Exception as exc:  # what the fuzzer looks for: report it with its input
            result.crashes.append(f"{type(exc).__name__}: {exc} on input {data[:200]!r}")
        result.inputs += 1
    result.seconds = time.perf_counter() - started
    return result


# -- part 2: a live node ---------------------------------------------------------------


@dataclasses.dataclass
class LiveResult:
    inputs_sent: int = 0
    connections: int = 0
    connections_closed_by_node: int = 0
    health_checks: int = 0
    crashes: int = 0
    hangs: int = 0
    rss_bytes: list[int] = dataclasses.field(default_factory=list)
    node_cpu_s: float = 0.0
    internal_errors: int = 0
    log_lines: int = 0
    seconds: float = 0.0
    findings: list[str] = dataclasses.field(default_factory=list)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LiveNode:
    """One daemon of a one-node test network, with a node and a client identity to fuzz it with."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        testnet.create(directory, 1, 0, {"replication": {"anti_entropy_interval_s": 5.0}})
        testnet.up(directory, 1, 0)
        (self.process,) = testnet.status(directory)
        self.client = identity.load_identity(directory / testnet.CLIENT_DIR)
        self.node = identity.create_identity(directory / "fuzz-node", identity.load_ca(directory / testnet.CA_DIR),
                                             Role.NODE)

    def alive(self) -> bool:
        try:
            os.kill(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        testnet.down(self.directory, timeout_s=30.0)


async def _seed_files(node: LiveNode, rng: random.Random) -> tuple[list[str], list[bytes]]:
    """A few files on the node, so that gets, stats and fetches reach real data."""
    from p2pfs.client import Client

    names = [f"seed/f{i}" for i in range(8)]
    chunk_ids: list[bytes] = []
    with trio.fail_after(HEALTH_DEADLINE_S):
        async with Client.connect(node.client, node.process.address) as client:
            for name in names:
                data = rng.randbytes(rng.choice([0, 100, 70_000]))
                await client.put(io.BytesIO(data), name, len(data))
                chunk_ids.extend(c.chunk_id for c in (await client.stat(name)).chunks)
    return names, chunk_ids


async def _health(node: LiveNode) -> bool:
    from p2pfs.client import Client

    with trio.move_on_after(HEALTH_DEADLINE_S):
        try:
            async with Client.connect(node.client, node.process.address) as client:
                await client.status()
            return True
        except Exception:  # any failure to answer is what this check looks for
            return False
    return False


async def _fuzz_connection(node: LiveNode, role: Role, inputs: Inputs, result: LiveResult) -> None:
    ident = node.node if role is Role.NODE else node.client
    context = ident.client_context()
    rng = inputs.rng
    with trio.move_on_after(IO_DEADLINE_S):
        try:
            tcp = await trio.open_tcp_stream(node.process.address.host, node.process.address.port)
        except OSError:
            return  # the health check after this batch tells why
        stream = trio.SSLStream(tcp, context, server_hostname=None)
        try:
            await stream.do_handshake()
            hello = wire.Hello(wire.PROTOCOL_VERSION, ident.cluster_id, role.value, "", 0)
            await stream.send_all(_frame(FrameKind.HELLO, 0, wire.Hello.TYPE, wire.encode_message(hello)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            await trio.aclose_forcefully(stream)
            return
        result.connections += 1
        closed_by_node = trio.Event()

        async def drain() -> None:
            try:
                while await stream.receive_some(65536):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
                pass
            closed_by_node.set()

        # What the node's multiplexer knows of this connection, as far as our frames tell.
        mirror = Mux(dialled=False, peer_role=role, serving=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            stream_id = 1
            refused: bytes | None = None
            wanted = rng.randint(1, FRAMES_PER_CONNECTION_MAX)
            sent = 0
            for _ in range(FRAME_DRAWS_PER_CONNECTION_MAX):
                if sent == wanted:
                    break
                data = inputs.any_input(role, stream_id)
                stream_id += 2
                if _is_leave(data):
                    continue  # a whole LeaveRequest decommissions the node, as it should
                if not _accepted(data, mirror):
                    refused = refused or data  # kept for last: the node closes the connection on it
                    continue
                if not await _send(stream, data, closed_by_node):
                    break
                sent += 1
                result.inputs_sent += 1
            if refused is not None and await _send(stream, refused, closed_by_node):
                result.inputs_sent += 1
                with trio.move_on_after(CLOSE_WAIT_S):
                    await closed_by_node.wait()
            if closed_by_node.is_set():
                result.connections_closed_by_node += 1
            nursery.cancel_scope.cancel()
        await trio.aclose_forcefully(stream)


async def _send(stream: trio.SSLStream, data: bytes, closed: trio.Event) -> bool:
    if closed.is_set():
        return False
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
        return False
    return True


def _accepted(data: bytes, mux: Mux) -> bool:
    """Whether the node's decoder and multiplexer take ``data`` without closing the connection.

    ``mux`` mirrors the node's (it does not see the node's answers, so a stream the
    node has already answered still looks open to it: the node may close a connection
    a little earlier than the mirror predicts, and a few frames counted as sent then
    went unread).
    """
    decoder = wire.FrameDecoder()
    decoder.feed(data)
    try:
        frame = decoder.next_frame()
        if frame is None or decoder.buffered_bytes:
            return False  # a frame cut short, or bytes after it: the node waits, then closes
        if frame.kind in (FrameKind.REQUEST, FrameKind.REQUEST_STREAM, FrameKind.ONEWAY):
            wire.decode_message(frame.msg_type, frame.payload)
        mux.receive_frame(frame)
    except (wire.WireError, ProtocolViolation):
        return False
    return True


def _is_leave(data: bytes) -> bool:
    """Whether ``data`` holds a frame of type LeaveRequest, of any kind, whatever its payload."""
    return len(data) >= wire.FRAME_HEADER_BYTES and wire.FRAME_HEADER.unpack_from(data)[3] == LEAVE_TYPE


async def fuzz_live(node: LiveNode, inputs: Inputs, count: int) -> LiveResult:
    result = LiveResult()
    started = time.perf_counter()
    cpu_before_s = _cpu_s(node.process.pid)
    result.rss_bytes.append(_rss_bytes(node.process.pid))
    limiter = trio.CapacityLimiter(CONNECTIONS_CONCURRENT)
    while result.inputs_sent < count:
        async with trio.open_nursery() as nursery:
            for i in range(CONNECTIONS_PER_HEALTH_CHECK):
                role = Role.NODE if i % 2 else Role.CLIENT

                async def one(role: Role = role) -> None:
                    async with limiter:
                        await _fuzz_connection(node, role, inputs, result)

                nursery.start_soon(one)
        result.health_checks += 1
        if not node.alive():
            result.crashes += 1
            result.findings.append(f"the node exited after {result.inputs_sent} inputs")
            break
        if not await _health(node):
            result.hangs += 1
            result.findings.append(f"no status answer within {HEALTH_DEADLINE_S} s after {result.inputs_sent} inputs")
            break
        result.rss_bytes.append(_rss_bytes(node.process.pid))
    if node.alive():
        result.node_cpu_s = _cpu_s(node.process.pid) - cpu_before_s
    result.seconds = time.perf_counter() - started
    log_text = (node.directory / node.process.name / testnet.LOG_FILE).read_text(errors="replace")
    result.log_lines = len(log_text.splitlines())
    result.internal_errors = log_text.count("Traceback")
    return result


# -- the run ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.py fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoder-inputs", type=int, default=1_000_000, metavar="N",
                        help="inputs to the in-process decoder and multiplexer (default 1,000,000)")
    parser.add_argument("--live-inputs", type=int, default=100_000, metavar="N",
                        help="frames to send to the live node, at least (default 100,000)")
    parser.add_argument("--seed", type=int, default=1, help="one seed for every random choice")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="run the node in DIR and keep it (its log) afterwards")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    directory = args.keep or Path(tempfile.mkdtemp(prefix="p2pfs-fuzz-"))
    types_by_role = message_types()
    node = None
    try:
        live = LiveResult()
        names: list[str] = []
        chunk_ids: list[bytes] = []
        if args.live_inputs > 0:
            node = LiveNode(directory / "net")
            names, chunk_ids = trio.run(_seed_files, node, rng)
        node_ids = [node.process.node_id, node.node.node_id] if node else []
        inputs = Inputs(FieldGen(rng, names, chunk_ids, node_ids), types_by_role)
        self_before = resource.getrusage(resource.RUSAGE_SELF)
        decoder = fuzz_decoder(inputs, args.decoder_inputs)
        self_after = resource.getrusage(resource.RUSAGE_SELF)
        if node is not None:
            live = trio.run(fuzz_live, node, inputs, args.live_inputs)
    finally:
        if node is not None:
            node.stop()
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)
    decoder_cpu_s = (self_after.ru_utime + self_after.ru_stime) - (self_before.ru_utime + self_before.ru_stime)
    figures = {
        "seed": args.seed,
        "decoder_inputs": decoder.inputs,
        "decoder_frames": decoder.frames,
        "decoder_messages_valid": decoder.messages_valid,
        "decoder_refused": decoder.refused,
        "decoder_crashes": len(decoder.crashes),
        "decoder_s": round(decoder.seconds, 1),
        "decoder_cpu_s": round(decoder_cpu_s, 1),
        "live_inputs": live.inputs_sent,
        "live_connections": live.connections,
        "live_connections_closed_by_node": live.connections_closed_by_node,
        "live_health_checks": live.health_checks,
        "live_crashes": live.crashes,
        "live_hangs": live.hangs,
        "live_internal_errors": live.internal_errors,
        "live_log_lines": live.log_lines,
        "live_s": round(live.seconds, 1),
        "node_cpu_s": round(live.node_cpu_s, 1),
        "node_rss_mb_first": round(live.rss_bytes[0] / 1e6, 1) if live.rss_bytes else None,
        "node_rss_mb_max": round(max(live.rss_bytes) / 1e6, 1) if live.rss_bytes else None,
        "node_rss_mb_last": round(live.rss_bytes[-1] / 1e6, 1) if live.rss_bytes else None,
        # At each quarter of the health checks: a leak grows from one to the next.
        "node_rss_mb_quarters": [round(live.rss_bytes[len(live.rss_bytes) * q // 4 - 1] / 1e6, 1)
                                 for q in range(1, 5)] if len(live.rss_bytes) >= 4 else [],
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print("| figure | value |\n|---|---|")
        for key, value in figures.items():
            print(f"| {key} | {value:,} |" if isinstance(value, int) else f"| {key} | {value} |")
    for line in decoder.crashes[:CRASHES_SHOWN_MAX] + live.findings:
        print(f"finding: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
