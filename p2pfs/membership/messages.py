"""Membership messages (wire type codes 20-39) and their size caps.

All membership traffic is one-way messages, as SWIM is over UDP (Das, Gupta,
Motivala, DSN 2002): Ping/Ack/Nack/PingReq for failure detection, Gossip for
piggyback-only dissemination rounds, PushPull for full-state anti-entropy.
Request/response pairs are matched by sequence numbers inside the core, and
timeouts are the core's ``tick``. Updates about members ride on Ping, Ack,
PingReq and Gossip (SWIM's piggybacking); each is a ``MemberFact``.

Type codes and ``MemberState`` values are part of the wire protocol:
append-only. Every message checks its fields when built (and so when decoded:
the codec turns a ``ValueError`` into ``WireError``), so a peer cannot make us
hold oversized state.
"""

from __future__ import annotations

import enum

from p2pfs import wire

# A node id is the hex SHA-256 of the node's public key (64 characters); the
# cap leaves room for another hash without letting a peer send megabytes.
NODE_ID_CHARS_MAX = 128
ZONE_CHARS_MAX = 64
HOST_CHARS_MAX = 255  # longest DNS name
INCARNATION_MAX = 2**63 - 1  # msgpack int64; a wall-clock start (~1.7e9) leaves ample room
CAPACITY_BYTES_MAX = 2**63 - 1
# A member's signature on its own record (``records.py``): Ed25519, 64 bytes.
SIGNATURE_BYTES = 64
# A DER certificate carried with a member's record for receivers that do not
# know the member yet. Ours are about 450 bytes with claims; 2 KiB leaves room
# for longer names without letting a peer make us hold much.
CERT_BYTES_MAX = 2048
SEQ_MODULUS = 2**32  # sequence numbers wrap around, as 32-bit counters

# Piggybacked updates per Ping/Ack/PingReq message, by bytes and by count.
# 1200 bytes keeps a probe with its piggyback inside one 1400-byte datagram,
# memberlist's UDPBufferSize, so a datagram transport stays possible. About ten
# updates with 64-character node ids.
PIGGYBACK_BYTES_MAX = 1200
# Updates per Gossip message (a round's piggyback-only message) by bytes.
# Gossip rounds carry the bulk of dissemination (3 members every 200 ms), and
# during a mass join every member has every other member's arrival to spread.
# 1,000 simultaneous joins converge in 20 rounds with 16 KiB (about 150
# updates), 47 with 8 KiB and 100 with 4 KiB (docs/BENCHMARKS.md);
# a round costs at most 3 x 16 KiB, and nothing is sent when nothing is pending.
GOSSIP_BYTES_MAX = 16 * 1024
# Count cap checked on every decoded message; above what the byte caps allow.
UPDATES_PER_MESSAGE_MAX = 512
# Members in one PushPull message (memberlist's maxPushStateBytes plays this
# role). A bigger cluster sends its first PUSH_PULL_MEMBERS_MAX members (self
# and live ones first); the rest spreads by gossip or the next exchange.
PUSH_PULL_MEMBERS_MAX = 10_000
# Longest a relay waits for the target's ack before nacking (seconds); bounds
# how long a ping-req occupies a relay slot whatever the requester asks.
NACK_TIMEOUT_S_MAX = 60.0


class MemberState(enum.IntEnum):
    """A member's state. Values are on the wire: append-only.

    For facts with equal incarnation, the higher value wins: ALIVE < SUSPECT <
    DEAD < LEFT. LEFT wins over everything at the same incarnation because a
    graceful leave is the member's own, final word about that incarnation;
    only a new incarnation (a restart or a refutation) brings it back.
    """

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


def _check_node_id(node_id: str, what: str) -> None:
    if not 0 < len(node_id) <= NODE_ID_CHARS_MAX:
        raise ValueError(f"{what} must have 1 to {NODE_ID_CHARS_MAX} characters")


def _check_seq(seq: int) -> None:
    if not 0 <= seq < SEQ_MODULUS:
        raise ValueError(f"seq {seq} out of range")


def _check_updates(updates: tuple[MemberFact, ...]) -> None:
    if len(updates) > UPDATES_PER_MESSAGE_MAX:
        raise ValueError(f"{len(updates)} updates exceed UPDATES_PER_MESSAGE_MAX")


@wire.record
class MemberMeta:
    """What a member says about itself: where to reach it and what it offers."""

    host: str
    port: int
    zone: str
    capacity_bytes: int
    protocol_version: int

    def __post_init__(self) -> None:
        if not 0 < len(self.host) <= HOST_CHARS_MAX:
            raise ValueError("bad host length")
        if not 0 < self.port < 65536:
            raise ValueError(f"bad port {self.port}")
        if len(self.zone) > ZONE_CHARS_MAX:
            raise ValueError("zone too long")
        if not 0 <= self.capacity_bytes <= CAPACITY_BYTES_MAX:
            raise ValueError("bad capacity_bytes")
        if not 0 <= self.protocol_version < 2**16:
            raise ValueError("bad protocol_version")


@wire.record
class MemberFact:
    """One fact about a member: its state at an incarnation.

    Facts are ordered by ``(incarnation, state)`` (see ``MemberState``).
    ``accuser_id`` names who suspected or declared the member dead (empty for
    ALIVE and LEFT): Lifeguard counts distinct accusers as confirmations.
    ``meta`` is required for ALIVE (it introduces the member) and optional
    otherwise (gossip leaves it out to stay small; push-pull includes it).

    ``signature`` is the member's own signature (``records.py``) on
    (node_id, incarnation, LEFT if the state is LEFT else ALIVE, meta): what
    the member said about itself at that incarnation, which an accusation
    (SUSPECT, DEAD) carries along to prove the member reached that
    incarnation. ``cert`` is the member's DER certificate, carried for
    receivers that have not seen it yet (empty when the sender leaves it
    out). Both are empty in a cluster that does not sign (the simulation).
    """

    node_id: str
    incarnation: int
    state: MemberState
    accuser_id: str
    meta: MemberMeta | None
    signature: bytes = b""
    cert: bytes = b""

    def __post_init__(self) -> None:
        _check_node_id(self.node_id, "node_id")
        if len(self.accuser_id) > NODE_ID_CHARS_MAX:
            raise ValueError("accuser_id too long")
        if not 0 <= self.incarnation <= INCARNATION_MAX:
            raise ValueError(f"incarnation {self.incarnation} out of range")
        if self.state == MemberState.ALIVE and self.meta is None:
            raise ValueError("an ALIVE fact must carry the member's meta")
        if len(self.signature) not in (0, SIGNATURE_BYTES):
            raise ValueError(f"a signature has {SIGNATURE_BYTES} bytes")
        if self.signature and self.meta is None:
            raise ValueError("a signature signs the member's meta, which is missing")
        if len(self.cert) > CERT_BYTES_MAX:
            raise ValueError("cert too long")


@wire.message(20)
class Ping(wire.Message):
    """Direct probe (SWIM). ``target_id`` lets a node at a reused address refuse a ping meant for another."""

    seq: int
    target_id: str
    updates: tuple[MemberFact, ...]

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_node_id(self.target_id, "target_id")
        _check_updates(self.updates)


@wire.message(21)
class Ack(wire.Message):
    """Answer to a Ping, sent to the address the Ping came from; relays forward it to the requester."""

    seq: int
    updates: tuple[MemberFact, ...]

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_updates(self.updates)


@wire.message(22)
class Nack(wire.Message):
    """A relay's "I asked, the target did not answer" (Lifeguard).

    The requester counts nacks: a relay that answers proves the requester
    itself can still communicate, so missing nacks raise its awareness score.
    """

    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)


@wire.message(23)
class PingReq(wire.Message):
    """Indirect probe request (SWIM): "ping target for me, forward its ack".

    ``nack_timeout_s`` is how long the relay waits before sending a Nack; the
    requester sets it so the nack arrives before its own probe period ends.
    """

    seq: int
    target_id: str
    target_host: str
    target_port: int
    nack_timeout_s: float
    updates: tuple[MemberFact, ...]

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_node_id(self.target_id, "target_id")
        if not 0 < len(self.target_host) <= HOST_CHARS_MAX or not 0 < self.target_port < 65536:
            raise ValueError("bad target address")
        if not 0 <= self.nack_timeout_s <= NACK_TIMEOUT_S_MAX:
            raise ValueError("nack_timeout_s out of range")
        _check_updates(self.updates)


@wire.message(24)
class Gossip(wire.Message):
    """Piggyback-only message of a gossip round (memberlist's gossip), or a suspicion told to the suspect."""

    updates: tuple[MemberFact, ...]

    def __post_init__(self) -> None:
        _check_updates(self.updates)


@wire.message(25)
class PushPull(wire.Message):
    """Full-state exchange (anti-entropy). A request (``is_reply`` false) is answered with our state."""

    is_reply: bool
    members: tuple[MemberFact, ...]

    def __post_init__(self) -> None:
        if len(self.members) > PUSH_PULL_MEMBERS_MAX:
            raise ValueError(f"{len(self.members)} members exceed PUSH_PULL_MEMBERS_MAX")


MEMBERSHIP_MESSAGES: tuple[type[wire.Message], ...] = (Ping, Ack, Nack, PingReq, Gossip, PushPull)


def is_membership_message(msg: wire.Message) -> bool:
    """True for messages the node's dispatcher should hand to ``MembershipService.deliver``."""
    return isinstance(msg, MEMBERSHIP_MESSAGES)


# Slack for the array headers of a message whose update count grows past 15
# (msgpack fixarray) and for the fixed fields around the updates.
MESSAGE_OVERHEAD_BYTES = 64


def _int_bytes(value: int) -> int:
    """msgpack size of a non-negative int."""
    if value < 128:
        return 1
    if value < 2**8:
        return 2
    if value < 2**16:
        return 3
    if value < 2**32:
        return 5
    return 9


def _str_bytes(text: str) -> int:
    """msgpack size of a str."""
    n = len(text) if text.isascii() else len(text.encode())
    if n < 32:
        return 1 + n
    if n < 2**8:
        return 2 + n
    if n < 2**16:
        return 3 + n
    return 5 + n


def _bin_bytes(data: bytes) -> int:
    """msgpack size of a bin."""
    n = len(data)
    if n < 2**8:
        return 2 + n
    if n < 2**16:
        return 3 + n
    return 5 + n


def fact_size_bytes(fact: MemberFact) -> int:
    """Encoded size of one fact inside a message's update list.

    Computed from msgpack's format rather than by encoding, because the
    retransmit queue sizes every fact it holds; tests check it against
    ``wire.encode_message``.
    """
    size = (
        1 + _str_bytes(fact.node_id) + _int_bytes(fact.incarnation) + 1 + _str_bytes(fact.accuser_id)
        + _bin_bytes(fact.signature) + _bin_bytes(fact.cert)
    )
    meta = fact.meta
    if meta is None:
        return size + 1
    return size + (
        1 + _str_bytes(meta.host) + _int_bytes(meta.port) + _str_bytes(meta.zone)
        + _int_bytes(meta.capacity_bytes) + _int_bytes(meta.protocol_version)
    )
