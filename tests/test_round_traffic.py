"""A background round's own traffic: what the requests made under ``net.metered()`` send and bring.

The per-node benchmark could only sample each daemon's sockets, whose bytes mix a round's
traffic with everything else the node does at the time; the daemon now counts a round's
requests itself and logs the counts on the round's line.
"""

from __future__ import annotations

import logging
import os
import random

import trio
import trio.testing

from p2pfs import net
from p2pfs.address import Address
from p2pfs.replication import antientropy, gc
from p2pfs.wire import Role
from test_data_scale import NODES, cluster, files
from test_net import FAST, Download, EchoHandlers, Upload, pattern, server  # noqa: F401 (server: the fixture)
from wire_helpers import Echo

# What a message adds to what it carries (its encoding), at most: the bounds below stay loose
# enough for any encoding and tight enough to catch a body counted twice or not at all.
MESSAGE_OVERHEAD_BYTES_MAX = 64


async def test_requests_in_a_metered_block_are_counted_with_their_bodies_and_others_are_not(server, make_identity):
    upload_bytes, download_bytes, echo_bytes = 200_003, 700_001, 1_000
    data = pattern(upload_bytes)

    async def body():
        for start in range(0, upload_bytes, 65_536):
            yield data[start : start + 65_536]

    async with net.client_connection(make_identity(Role.CLIENT), server.address, config=FAST) as conn:
        assert await conn.request(Echo(b"before"), timeout_s=10) == Echo(b"before")  # no meter: nothing to count
        with net.metered() as meter:
            assert net.current_meter() is meter
            assert await conn.request(Echo(b"e" * echo_bytes), timeout_s=10) == Echo(b"e" * echo_bytes)
            assert await conn.request(Upload(upload_bytes), timeout_s=30, body=body()) == Upload(upload_bytes)
            read_bytes = 0
            async with conn.open_request(Download(download_bytes), timeout_s=30) as response:
                async for piece in response.body:
                    read_bytes += len(piece)
            assert read_bytes == download_bytes
            # A task started in the block counts into the same meter (trio copies the context).
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: conn.request(Echo(b"c" * echo_bytes), timeout_s=10))
        assert net.current_meter() is None
        counts = (meter.bytes_sent, meter.bytes_received, meter.requests)
        assert await conn.request(Echo(b"after"), timeout_s=10) == Echo(b"after")
        assert (meter.bytes_sent, meter.bytes_received, meter.requests) == counts  # the block has ended

    assert meter.requests == 4
    sent_least = 2 * echo_bytes + upload_bytes
    received_least = 2 * echo_bytes + download_bytes
    assert sent_least <= meter.bytes_sent <= sent_least + 4 * MESSAGE_OVERHEAD_BYTES_MAX
    assert received_least <= meter.bytes_received <= received_least + 4 * MESSAGE_OVERHEAD_BYTES_MAX


class Metering:
    """A replica standing in for one across the network: each call counts as a request of
    ``REQUEST_BYTES`` sent and ``ANSWER_BYTES`` received into the meter of the task making it."""

    REQUEST_BYTES = 100
    ANSWER_BYTES = 7

    def __init__(self, replica, calls: list[str] | None = None) -> None:
        self._replica = replica
        self.node_id = replica.node_id
        self.calls: list[str] = [] if calls is None else calls  # the methods called, in order

    def __getattr__(self, name):
        method = getattr(self._replica, name)

        async def metered(*args):
            self.calls.append(name)
            meter = net.current_meter()
            assert meter is not None, "a round's request made outside its meter"
            meter.requests += 1
            meter.bytes_sent += self.REQUEST_BYTES
            meter.bytes_received += self.ANSWER_BYTES
            return await method(*args)

        return metered


def test_a_gc_rounds_line_carries_the_traffic_of_its_requests_and_of_its_tasks(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(gc, "GC_BATCH_IDS", 100)
    entries, blobs = files(300, random.Random(35))
    garbage = [os.urandom(20) for _ in range(20)]  # candidates: the other nodes' names are read too
    nodes = cluster(tmp_path, entries, blobs + garbage)
    node = nodes[NODES[0]]
    metering = {n: Metering(nodes[n].replica) for n in NODES}
    node.gc._replicas = lambda n: metering[n]
    with caplog.at_level(logging.INFO, logger="p2pfs.replication.gc"):
        removed, _ = trio.run(node.gc.round)
    assert removed == len(garbage)
    calls = sum(len(m.calls) for m in metering.values())
    assert metering[NODES[1]].calls and metering[NODES[2]].calls  # read in tasks of the round's nursery
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gc round:")]
    assert line.endswith(f", {calls * Metering.REQUEST_BYTES} bytes sent and {calls * Metering.ANSWER_BYTES} "
                         f"received in {calls} requests"), line


def test_an_anti_entropy_rounds_line_carries_the_traffic_of_its_exchanges_and_pulls(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(antientropy, "IDS_PER_MESSAGE_MAX", 100)
    entries, blobs = files(100, random.Random(36))
    nodes = cluster(tmp_path, entries, blobs)
    victim = nodes[NODES[2]]
    for chunk_id in sorted(victim.local.chunks.iter_ids())[::10]:
        victim.local.chunks.delete(chunk_id)
    replicas = victim.anti_entropy._replicas
    remote, calls = replicas.remote, []
    monkeypatch.setattr(replicas, "remote", lambda peer: Metering(remote(peer), calls))
    with caplog.at_level(logging.INFO, logger="p2pfs.replication.antientropy"):
        trio.run(victim.anti_entropy.round)
    assert victim.anti_entropy.received_chunks > 0 and calls
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("anti-entropy round:")]
    assert line.endswith(f", {len(calls) * Metering.REQUEST_BYTES} bytes sent and "
                         f"{len(calls) * Metering.ANSWER_BYTES} received in {len(calls)} requests"), line


def test_a_round_its_deadline_cuts_in_its_walk_still_logs_its_line_with_its_traffic(tmp_path, monkeypatch, caplog):
    entries, blobs = files(20, random.Random(37))
    nodes = cluster(tmp_path, entries, blobs)
    anti_entropy = nodes[NODES[0]].anti_entropy

    async def endless_walk(*args):
        await trio.sleep_forever()

    monkeypatch.setattr(anti_entropy, "_walk", endless_walk)

    async def cut_round() -> None:
        with trio.move_on_after(600):
            await anti_entropy.round()

    with caplog.at_level(logging.INFO, logger="p2pfs.replication.antientropy"):
        trio.run(cut_round, clock=trio.testing.MockClock(autojump_threshold=0))
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("anti-entropy round:")]
    assert line == ("anti-entropy round: 600.000 s, cut in its walk (the next round goes on with it), "
                    "0 bytes sent and 0 received in 0 requests"), line


class RecordingHandlers(EchoHandlers):
    """Echo handlers that note the meter each request is served under."""

    def __init__(self) -> None:
        super().__init__()
        self.meters: list[net.TrafficMeter | None] = []

    async def handle_request(self, request: net.IncomingRequest):
        self.meters.append(net.current_meter())
        return await super().handle_request(request)


async def test_a_connection_dialled_in_a_metered_block_serves_the_peer_outside_the_meter(
        server, make_identity, nursery):
    handlers = RecordingHandlers()
    client = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), handlers, config=FAST)
    await nursery.start(client.run)
    with net.metered() as meter:
        conn = await client.connect(server.address)  # dialled from the round's task
        assert await conn.request(Echo(b"mine"), timeout_s=10) == Echo(b"mine")
        with trio.fail_after(10):
            while not server.connections():
                await trio.sleep(0.01)
    (back,) = server.connections()
    # The peer asks this node over that connection: the handler runs in the connection's task,
    # whose context was copied from the round's when it was dialled.
    assert await back.request(Echo(b"theirs"), timeout_s=10) == Echo(b"theirs")
    assert handlers.meters == [None]
    assert meter.requests == 1
