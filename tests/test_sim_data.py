"""The simulated data cluster carries streamed bodies: a client's put and get run as over TLS."""

from __future__ import annotations

import random

import pytest
import trio

from p2pfs import net
from p2pfs.membership import MembershipConfig
from p2pfs.replication import messages as dm
from p2pfs.replication.config import ReplicationConfig
from p2pfs.sim.data import STREAM_IDLE_TIMEOUT_S, DataCluster
from p2pfs.sim.membership import sim_address, wait_until
from p2pfs.sim.network import SEED_ENV, SimNetwork, run_simulation, sim_seed

NODES = 4
REPLICATION = ReplicationConfig(
    chunk_size_bytes=4096, replica_timeout_s=2.0, replica_backoff_s=2.0, dead_grace_s=20.0,
    hint_delivery_interval_s=1.0, anti_entropy_interval_s=5.0, scrub_bytes_per_s=0,
    gc_interval_s=10_000.0, leave_handoff_timeout_s=30.0,
)


@pytest.fixture
def seed(request):
    value = sim_seed(7001)
    request.node.add_report_section("call", "simulation seed", f"seed {value}; replay with {SEED_ENV}={value}")
    return value


async def with_cluster(root, seed: int, body) -> object:
    rng = random.Random(seed)
    network = SimNetwork(random.Random(rng.getrandbits(64)))
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        cluster = DataCluster(nursery, network, root, rng, MembershipConfig(), REPLICATION)
        for index in range(1, NODES + 1):
            await cluster.start(index, (sim_address(1),))
        assert await wait_until(lambda: all(len(n.membership.members()) == NODES for n in cluster.running()),
                                timeout_s=60, poll_s=0.5) is not None
        result = await body(cluster, rng)
        nursery.cancel_scope.cancel()
    return result


def test_a_streamed_put_then_get_round_trips_through_the_simulation(tmp_path, seed):
    content = random.Random(seed).randbytes(50_000)  # 13 chunks, sent in uneven pieces

    async def body(cluster: DataCluster, rng: random.Random) -> None:
        client = cluster.client("alice")

        async def pieces():
            for start in range(0, len(content), 3000):
                yield content[start : start + 3000]

        reply = await client.request(sim_address(2), dm.PutFile("f", len(content)), timeout_s=30.0, body=pieces())
        assert isinstance(reply, dm.PutFileReply)
        assert reply.size_bytes == len(content)
        assert reply.chunks == 13
        async with client.open_request(sim_address(3), dm.GetFile("f"), timeout_s=30.0) as response:
            assert isinstance(response.msg, dm.GetFileReply)
            assert response.body is not None
            received = b"".join([data async for data in response.body])
            assert response.body.finished
        assert received == content
        assert response.msg.file_hash == reply.file_hash

    run_simulation(with_cluster, tmp_path, seed, body, seed=seed)


def test_a_put_without_a_body_is_refused(tmp_path, seed):
    async def body(cluster: DataCluster, rng: random.Random) -> None:
        with pytest.raises(net.RemoteError, match="body"):
            await cluster.client("alice").request(sim_address(1), dm.PutFile("f", 0), timeout_s=5.0)

    run_simulation(with_cluster, tmp_path, seed, body, seed=seed)


def test_a_get_from_a_node_that_crashes_midway_ends_with_a_network_error(tmp_path, seed):
    content = random.Random(seed).randbytes(200_000)

    async def body(cluster: DataCluster, rng: random.Random) -> None:
        client = cluster.client("alice")

        async def pieces():
            yield content

        await client.request(sim_address(2), dm.PutFile("f", len(content)), timeout_s=30.0, body=pieces())
        started_s = trio.current_time()
        with pytest.raises((net.ConnectionClosed, net.RequestTimeout)):
            async with client.open_request(sim_address(4), dm.GetFile("f"), timeout_s=30.0) as response:
                async for _ in response.body:
                    cluster.crash(cluster.nodes[4])
        assert trio.current_time() - started_s <= STREAM_IDLE_TIMEOUT_S + 5.0

    run_simulation(with_cluster, tmp_path, seed, body, seed=seed)


def test_a_node_that_crashes_while_its_answer_is_under_way_loses_the_answer(tmp_path, seed):
    """The handler runs in the caller's task and can finish after its node crashed; what it
    would stream then never leaves the dead node. A ``bench_sim.py --duration 60`` run ended
    here, at seed 5133 of a 300-seed sweep, with RuntimeError: the answer's body was started
    in the crashed node's closed nursery. (That seed rerun alone in a new process passed.)"""
    async def body(cluster: DataCluster, rng: random.Random) -> None:
        client = cluster.client("alice")

        async def pieces():
            yield b"x" * 10_000

        await client.request(sim_address(2), dm.PutFile("f", 10_000), timeout_s=30.0, body=pieces())
        node = cluster.nodes[4]
        answer = node.routes[dm.GetFile]

        async def crash_then_answer(request):
            reply = await answer(request)
            cluster.crash(node)
            await trio.sleep(1.0)  # simulated: the node's tasks are gone and its nursery closed
            return reply

        node.routes[dm.GetFile] = crash_then_answer
        with pytest.raises((net.ConnectionClosed, net.RequestTimeout)):
            async with client.open_request(sim_address(4), dm.GetFile("f"), timeout_s=10.0) as response:
                async for _ in response.body:
                    pass

    run_simulation(with_cluster, tmp_path, seed, body, seed=seed)
