"""A user-space packet delayer on an NFQUEUE: the chaos run's stand-in for ``tc netem``.

The kernel the project runs on has no sch_netem, but it has NFQUEUE: an
iptables rule hands each matching packet to a netlink socket, and the packet
waits in the kernel until a program returns a verdict for it. Returning
``NF_ACCEPT`` ``delay_ms`` +- ``jitter_ms`` after the packet arrived delays it
by that much. Release times never go backwards, so packets leave in the order
they came (netem without reordering): TCP sees latency, not reordering.

Only packet metadata is copied to user space (``NFQNL_COPY_META``); the queue
is set to fail open, so when it overflows the kernel lets packets through
instead of dropping them. With ``--queue-bypass`` on the rule, packets pass
untouched while no delayer is bound. Stdlib only: it runs as
``python -m p2pfs.chaos.nfq`` inside the chaos sandbox, exits after
``--lifetime-s`` at the latest, and on SIGTERM accepts everything it holds
before it unbinds.

Message layouts: linux/netfilter/nfnetlink_queue.h and linux/netlink.h.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NF_ACCEPT = 1
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
NFGEN_HEADER = struct.Struct("=BBH")  # family, version, resource id (queue number, big-endian)
NLATTR_HEADER = struct.Struct("=HH")  # length, type

# Packets the kernel holds for us at most; past it the queue fails open.
QUEUE_PACKETS_MAX = 8192
# Receive buffer for netlink messages: a burst of packet notices must fit.
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
# Longest wait in select(), so that signals and the lifetime are noticed promptly.
POLL_INTERVAL_S = 0.2
# Never run longer than this, whatever happens to the process that started us.
LIFETIME_S_DEFAULT = 3600.0


def _attribute(kind: int, payload: bytes) -> bytes:
    length = NLATTR_HEADER.size + len(payload)
    return NLATTR_HEADER.pack(length, kind) + payload + bytes(-length % 4)


class QueueSocket:
    """One bound nfnetlink queue: configuration, packet notices, verdicts."""

    def __init__(self, queue_num: int) -> None:
        self.queue_num = queue_num
        self._sequence = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self.sock.bind((0, 0))

    def _send(self, msg_type: int, attributes: list[bytes], flags: int) -> None:
        self._sequence += 1
        body = NFGEN_HEADER.pack(socket.AF_UNSPEC, 0, socket.htons(self.queue_num)) + b"".join(attributes)
        header = NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type,
                                   flags, self._sequence, 0)
        self.sock.send(header + body)

    def _configure(self, attribute: bytes) -> None:
        """Send one config attribute and wait for the kernel's acknowledgement."""
        self._send(NFQNL_MSG_CONFIG, [attribute], NLM_F_REQUEST | NLM_F_ACK)
        reply = self.sock.recv(65536)
        _, msg_type, _, _, _ = NLMSG_HEADER.unpack_from(reply)
        if msg_type == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", reply, NLMSG_HEADER.size)
            if code != 0:
                raise OSError(-code, f"nfqueue config: {errno.errorcode.get(-code, -code)}")

    def bind(self) -> None:
        self._configure(_attribute(NFQA_CFG_CMD, struct.pack("=BBH", NFQNL_CFG_CMD_BIND, 0, 0)))
        self._configure(_attribute(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META) + bytes(3)))
        self._configure(_attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", QUEUE_PACKETS_MAX)))
        self._send(NFQNL_MSG_CONFIG, [
            _attribute(NFQA_CFG_FLAGS, struct.pack(">I", NFQA_CFG_F_FAIL_OPEN)),
            _attribute(NFQA_CFG_MASK, struct.pack(">I", NFQA_CFG_F_FAIL_OPEN)),
        ], NLM_F_REQUEST)  # older kernels lack fail-open; not asking for an ack keeps that harmless

    def unbind(self) -> None:
        self._send(NFQNL_MSG_CONFIG, [_attribute(NFQA_CFG_CMD, struct.pack("=BBH", NFQNL_CFG_CMD_UNBIND, 0, 0))],
                   NLM_F_REQUEST)

    def accept(self, packet_id: int) -> None:
        self._send(NFQNL_MSG_VERDICT, [_attribute(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, packet_id))],
                   NLM_F_REQUEST)

    def packet_ids(self) -> list[int]:
        """Ids of the packets announced in one receive (empty if the buffer overflowed)."""
        try:
            data = self.sock.recv(RECEIVE_BUFFER_BYTES)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # notices were lost; those packets failed open
                return []
            raise
        ids = []
        offset = 0
        packet_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
        while offset + NLMSG_HEADER.size <= len(data):
            length, msg_type, _, _, _ = NLMSG_HEADER.unpack_from(data, offset)
            if length < NLMSG_HEADER.size:
                break
            if msg_type == packet_type:
                position = offset + NLMSG_HEADER.size + NFGEN_HEADER.size
                while position + NLATTR_HEADER.size <= offset + length:
                    attr_length, attr_type = NLATTR_HEADER.unpack_from(data, position)
                    if attr_length < NLATTR_HEADER.size:
                        break
                    if attr_type & 0x7FFF == NFQA_PACKET_HDR:
                        ids.append(struct.unpack_from(">I", data, position + NLATTR_HEADER.size)[0])
                    position += (attr_length + 3) & ~3
            offset += (length + 3) & ~3
        return ids


def release_time_s(now_s: float, delay_ms: float, jitter_ms: float, last_release_s: float,
                   rng: random.Random) -> float:
    """When a packet that arrived at ``now_s`` leaves: delay +- jitter, never before the previous one."""
    delay_s = max(0.0, delay_ms + rng.uniform(-jitter_ms, jitter_ms)) / 1000.0
    return max(now_s + delay_s, last_release_s)


def serve(queue: QueueSocket, delay_ms: float, jitter_ms: float, lifetime_s: float, rng: random.Random) -> int:
    """Delay packets until SIGTERM or the lifetime ends; return how many passed through."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    held: list[tuple[float, int, int]] = []  # (release time, arrival order, packet id)
    arrivals = 0
    last_release_s = 0.0
    deadline_s = time.monotonic() + lifetime_s
    try:
        while not stopping and time.monotonic() < deadline_s:
            now_s = time.monotonic()
            while held and held[0][0] <= now_s:
                queue.accept(heapq.heappop(held)[2])
            wait_s = min(POLL_INTERVAL_S, held[0][0] - now_s) if held else POLL_INTERVAL_S
            readable, _, _ = select.select([queue.sock], [], [], max(0.0, wait_s))
            if not readable:
                continue
            for packet_id in queue.packet_ids():
                arrivals += 1
                last_release_s = release_time_s(time.monotonic(), delay_ms, jitter_ms, last_release_s, rng)
                heapq.heappush(held, (last_release_s, arrivals, packet_id))
    finally:
        for _, _, packet_id in held:  # never strand a packet in the kernel
            queue.accept(packet_id)
        queue.unbind()
    return arrivals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, required=True, help="NFQUEUE number to bind")
    parser.add_argument("--delay-ms", type=float, required=True, help="mean delay per packet, ms")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="uniform jitter around the delay, ms")
    parser.add_argument("--lifetime-s", type=float, default=LIFETIME_S_DEFAULT, help="exit after this long, s")
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    options = parser.parse_args()
    queue = QueueSocket(options.queue)
    queue.bind()
    print(f"nfq: bound queue {options.queue}: delay {options.delay_ms} ms +- {options.jitter_ms} ms", flush=True)
    passed = serve(queue, options.delay_ms, options.jitter_ms, options.lifetime_s, random.Random(options.seed))
    print(f"nfq: queue {options.queue} passed {passed} packets", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
