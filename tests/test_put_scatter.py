"""A message carrying a chunk is sent from the chunk's own bytes, not from a copy per replica.

``net.mux.encode_payload`` gives a message's payload in parts when a field is large,
the large field being the very object the message holds; the parts together are
exactly ``wire.encode_message``'s bytes, so the receiving end is unchanged.
"""

from __future__ import annotations

import pytest
import trio

from p2pfs import net, wire
from p2pfs.address import Address
from p2pfs.net import mux as m
from p2pfs.replication import messages as dm
from p2pfs.storage import chunk_id_of
from p2pfs.wire import Role

from hostile_strategies import RawMessage
from wire_helpers import Echo

BIG = bytes(range(256)) * (m.SCATTER_FIELD_BYTES_MIN // 256)  # exactly the threshold
CHUNK = BIG * 16 + b"tail"


@wire.message(60301, senders=(Role.NODE, Role.CLIENT))
class TwoBlobs(wire.Message):
    """Test-only: large fields first and in the middle, scalars around them."""

    first: bytes
    count: int
    second: bytes
    note: str
    flag: bool
    ratio: float
    missing: int | None


@wire.message(60302, senders=(Role.NODE, Role.CLIENT))
class BlobAndTuple(wire.Message):
    """Test-only: a large field beside one that is not a plain value (packed as encode_message packs it)."""

    blob: bytes
    items: tuple[int, ...]


@pytest.mark.parametrize("msg, scattered", [
    (dm.StoreChunk(chunk_id_of(CHUNK), CHUNK, ""), True),
    (dm.StoreChunk(chunk_id_of(CHUNK), CHUNK, "b" * 64), True),  # a stand-in's write: its hint after
    (dm.ChunkData(CHUNK), True),
    (TwoBlobs(BIG, -3, CHUNK, "ünïcode", True, 0.5, None), True),
    (dm.StoreChunk(chunk_id_of(BIG[:-1]), BIG[:-1], ""), False),  # one byte short of the threshold
    (BlobAndTuple(CHUNK, (1, 2, 3)), True),
    # A chain's chunk, with the records of the rest of the chain after it.
    (dm.StoreChunkChain(chunk_id_of(CHUNK), CHUNK, "", (dm.ChainLink("c" * 64, ""), dm.ChainLink("d" * 64, "e" * 64)),
                        9000), True),
    (dm.FetchChunk(chunk_id_of(b"x")), False),
])
def test_a_payload_in_parts_is_the_encoded_message_byte_for_byte(msg, scattered):
    payload = m.encode_payload(msg)
    assert isinstance(payload, m.Scattered) is scattered
    assert bytes(payload) == wire.encode_message(msg)
    assert len(payload) == len(wire.encode_message(msg))
    assert wire.decode_message(msg.TYPE, bytes(payload)) == msg


def test_a_message_that_is_not_a_dataclass_is_encoded_whole():
    """``wire.encode_message`` writes any sequence as an array (tests send raw fields that way)."""
    raw = RawMessage(dm.ChunkData.TYPE, [CHUNK])
    assert m.encode_payload(raw) == wire.encode_message(raw)


def test_the_large_fields_are_sent_from_the_message_itself():
    msg = TwoBlobs(BIG, 7, CHUNK, "n", False, 1.0, 5)
    payload = m.encode_payload(msg)
    large = [part for part in payload.parts if len(part) >= m.SCATTER_FIELD_BYTES_MIN]
    assert len(large) == 2
    assert large[0] is msg.first
    assert large[1] is msg.second
    assert len(payload.parts[0]) < 16  # the head goes out with the frame header


def test_a_chains_chunk_is_sent_from_the_message_itself():
    """The default chunk write (a chain) sends its chunk uncopied at the coordinator and at every
    node that passes it on, as a star write does; it was packed whole (copied) for its records."""
    msg = dm.StoreChunkChain(chunk_id_of(CHUNK), CHUNK, "", (dm.ChainLink("c" * 64, ""),), 9000)
    payload = m.encode_payload(msg)
    assert isinstance(payload, m.Scattered)
    assert [part for part in payload.parts if part is msg.data] == [msg.data]
    assert bytes(payload) == wire.encode_message(msg)


def test_requests_and_answers_carry_scattered_payloads():
    msg = dm.StoreChunk(chunk_id_of(CHUNK), CHUNK, "")
    dialler = m.Mux(dialled=True, peer_role=Role.NODE, serving=True)
    _, frame = dialler.start_request(msg, with_body=False)
    assert isinstance(frame.payload, m.Scattered)
    assert isinstance(dialler.oneway(msg).payload, m.Scattered)


class _EchoHandlers:
    async def handle_request(self, request: net.IncomingRequest):
        return request.msg

    def handle_oneway(self, conn, msg) -> None:
        pass


async def test_large_messages_cross_a_real_connection_both_ways_byte_exact(make_identity, nursery):
    """Over TLS on 127.0.0.1: a scattered request, answered by the same message scattered back,
    with small requests interleaved on the same connection."""
    endpoint = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), _EchoHandlers())
    await nursery.start(endpoint.run)
    address = Address("127.0.0.1", endpoint.bound_port)
    sizes = [m.SCATTER_FIELD_BYTES_MIN, len(CHUNK), 3]
    answers: dict[int, wire.Message] = {}
    async with net.client_connection(make_identity(Role.CLIENT), address) as conn:
        async def one(index: int, size: int) -> None:
            payload = bytes((index + i) % 251 for i in range(size))
            answers[index] = (await conn.request(Echo(payload), timeout_s=60), payload)

        with trio.fail_after(120):
            async with trio.open_nursery() as requests:
                for index, size in enumerate(sizes * 3):
                    requests.start_soon(one, index, size)
    assert len(answers) == 9
    for answer, payload in answers.values():
        assert answer == Echo(payload)
