"""Chain writes in the whole-node simulation: each link cut mid-chunk, older nodes, hostile chains.

Five simulated nodes (rf = 3, w = 2) with their real data services; node 1 coordinates every
put. A test cuts a link of a chain while the chunk is on it (at the moment the chain message
reaches its head, or the plain store reaches its tail) and checks the write quorum, where the
hints went, and that the file reads back byte-exact through another node.
"""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
import trio

from p2pfs import net
from p2pfs.membership import MembershipConfig
from p2pfs.replication import messages as dm
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.hints import HintKind
from p2pfs.sim.data import DataCluster, DataNode
from p2pfs.sim.membership import sim_address, wait_until
from p2pfs.sim.network import SimNetwork, sim_seed
from p2pfs.storage import chunk_id_of
from p2pfs.wire import ErrorCode

from sim_helpers import run_scenario

CHUNK_BYTES = 4096
REPLICATION = ReplicationConfig(
    chunk_size_bytes=CHUNK_BYTES, replica_timeout_s=2.0, replica_backoff_s=2.0, dead_grace_s=600.0,
    hint_delivery_interval_s=1000.0, anti_entropy_interval_s=1000.0, scrub_bytes_per_s=0,
    gc_interval_s=10_000.0, leave_handoff_timeout_s=30.0, inline_file_bytes_max=0,
)
NODES = 5
FILE_BYTES = 6 * CHUNK_BYTES + 100


async def _pieces(data: bytes):
    yield data


async def start_cluster(nursery: trio.Nursery, root, seed: int, old: tuple[int, ...] = ()) -> DataCluster:
    """Five nodes, those in ``old`` advertising the wire version before chains."""
    rng = random.Random(seed)
    network = SimNetwork(random.Random(rng.getrandbits(64)))
    await nursery.start(network.run)
    cluster = DataCluster(nursery, network, root, rng, MembershipConfig(), REPLICATION)
    for index in range(1, NODES + 1):
        version = 2 if index in old else dm.CHAIN_WIRE_VERSION
        await cluster.start(index, (sim_address(1),), wire_version=version)
    assert await wait_until(lambda: all(len(n.membership.members()) == NODES for n in cluster.running()),
                            timeout_s=120, poll_s=0.5) is not None
    return cluster


async def read_back(node: DataNode, name: str) -> bytes:
    entry = await node.data.read_name(name)
    assert entry is not None and entry.manifest is not None
    return b"".join([await node.data.fetch_chunk(ref.chunk_id) for ref in entry.manifest.chunks])


def holders(cluster: DataCluster, chunk_id: bytes) -> set[str]:
    return {n.node_id for n in cluster.running() if n.data.local.chunks.has(chunk_id)}


def hinted_for(cluster: DataCluster, owner: str) -> dict[str, set[bytes]]:
    """Per running node, the chunk ids it keeps under a hint for ``owner``."""
    found = {}
    for node in cluster.running():
        keys = {h.key for h in node.data.local.hints.for_owner(owner) if h.kind is HintKind.CHUNK}
        if keys:
            found[node.node_id] = keys
    return found


@dataclasses.dataclass
class Cut:
    """The first chain's head and chunk, as the wrapped route saw it arrive."""

    head: DataNode | None = None
    tail: DataNode | None = None
    chunk_id: bytes = b""
    chains_seen: int = 0


def wrap(node: DataNode, message_type: type, before) -> None:
    """Run ``before(request)`` when ``message_type`` reaches ``node``, then its real handler."""
    handler = node.routes[message_type]

    async def wrapped(request: net.IncomingRequest):
        await before(request)
        return await handler(request)

    node.routes[message_type] = wrapped


async def put_and_check(cluster: DataCluster, cut: Cut, name: str) -> bytes:
    """Put a file at node 1 (its quorum met), and read it back byte-exact at another node.

    The content is drawn from the file's name: its chunk ids decide which replicas each chunk
    has, and so whether any chunk's replicas form a chain at all (with older nodes about, a
    random file sometimes made none, and the test failed on a draw)."""
    content = random.Random(name).randbytes(FILE_BYTES)
    coordinator = cluster.nodes[1]
    entry = await coordinator.data.put(name, _pieces(content), len(content))
    assert entry.manifest.size_bytes == len(content)
    assert cut.chains_seen > 0, "the put sent no chain: the test would prove nothing"
    reader = next(n for n in cluster.running() if n.index != 1 and n is not cut.head)
    assert await read_back(reader, name) == content
    return content


# -- each link cut mid-chunk ---------------------------------------------------------


@pytest.mark.parametrize("how", ["kill", "pause"])
def test_b_lost_mid_chunk_gets_a_stand_in_with_a_hint_and_c_is_written_directly(tmp_path, how):
    async def scenario(root, seed: int) -> None:
        async with trio.open_nursery() as nursery:
            cluster = await start_cluster(nursery, root, seed)
            cut = Cut()
            for node in cluster.running():
                if node.index == 1:
                    continue

                async def at_head(request, node=node):
                    cut.chains_seen += 1
                    if cut.head is None:
                        cut.head, cut.chunk_id = node, request.msg.chunk_id
                        cut.tail = cluster.by_id[request.msg.rest[-1].node_id]
                        if how == "kill":
                            cluster.crash(node)
                        else:
                            cluster.network.pause(node.address)
                        await trio.sleep_forever()  # the answer never comes back: the caller's deadline decides

                wrap(node, dm.StoreChunkChain, at_head)
            await put_and_check(cluster, cut, "cut-b")
            b = cut.head.node_id
            # B's copy went to a stand-in that keeps a hint for B, and C got its copy directly.
            stand_ins = {n for n, keys in hinted_for(cluster, b).items() if cut.chunk_id in keys}
            assert len(stand_ins) == 1
            assert cut.tail.data.local.chunks.has(cut.chunk_id)
            assert len(holders(cluster, cut.chunk_id) - {b}) == REPLICATION.rf
            if how == "pause":
                cluster.network.resume(cut.head.address)
            nursery.cancel_scope.cancel()

    run_scenario(scenario, tmp_path, sim_seed(7301 if how == "kill" else 7302))


def test_c_killed_behind_a_healthy_b_is_reported_by_b_and_replaced_with_a_hint(tmp_path):
    async def scenario(root, seed: int) -> None:
        async with trio.open_nursery() as nursery:
            cluster = await start_cluster(nursery, root, seed)
            coordinator = cluster.nodes[1]
            cut = Cut()
            answered: list[float] = []
            for node in cluster.running():
                if node.index == 1:
                    continue
                chain_handler = node.routes[dm.StoreChunkChain]

                async def at_head(request, node=node, chain_handler=chain_handler):
                    cut.chains_seen += 1
                    started_s = trio.current_time()
                    reply = await chain_handler(request)
                    if node is cut.head:
                        answered.append(trio.current_time() - started_s)
                        assert [o.stored for o in reply.outcomes] == [True, False]
                    return reply

                async def at_tail(request, node=node):
                    if request.peer.node_id != coordinator.node_id and cut.tail is None:
                        cut.tail, cut.chunk_id = node, request.msg.chunk_id
                        cut.head = cluster.by_id[request.peer.node_id]
                        cluster.crash(node)
                        await trio.sleep_forever()

                node.routes[dm.StoreChunkChain] = at_head
                wrap(node, dm.StoreChunk, at_tail)
            await put_and_check(cluster, cut, "cut-c")
            c = cut.tail.node_id
            # B answered, in time, with C's failure: never silence past the coordinator's deadline.
            assert answered and answered[0] < REPLICATION.replica_timeout_s
            assert cut.head.node_id not in coordinator.data.view.unavailable()
            stand_ins = {n for n, keys in hinted_for(cluster, c).items() if cut.chunk_id in keys}
            assert len(stand_ins) == 1
            assert cut.head.data.local.chunks.has(cut.chunk_id)
            assert len(holders(cluster, cut.chunk_id)) == REPLICATION.rf
            nursery.cancel_scope.cancel()

    run_scenario(scenario, tmp_path, sim_seed(7303))


# -- older nodes -------------------------------------------------------------------------


def test_nodes_that_advertise_an_older_wire_version_get_no_chain_and_star_writes(tmp_path):
    async def scenario(root, seed: int) -> None:
        async with trio.open_nursery() as nursery:
            cluster = await start_cluster(nursery, root, seed, old=(2, 3))
            cut = Cut()
            for node in cluster.running():
                old = node.index in (2, 3)

                async def count(request, old=old):
                    assert not old, "a chain reached a node that does not know chains"
                    cut.chains_seen += 1

                if old:
                    node.routes[dm.StoreChunkChain] = count  # an older node would not even decode it
                else:
                    wrap(node, dm.StoreChunkChain, count)
            content = await put_and_check(cluster, cut, "mixed")
            entry = await cluster.nodes[4].data.read_name("mixed")
            for ref in entry.manifest.chunks:
                assert len(holders(cluster, ref.chunk_id)) == REPLICATION.rf
            assert await read_back(cluster.nodes[2], "mixed") == content
            nursery.cancel_scope.cancel()

    run_scenario(scenario, tmp_path, sim_seed(7304))


def test_star_shape_sends_no_chain(tmp_path):
    async def scenario(root, seed: int) -> None:
        async with trio.open_nursery() as nursery:
            cluster = await start_cluster(nursery, root, seed)
            sent = []
            for node in cluster.running():
                async def count(request):
                    sent.append(request)

                wrap(node, dm.StoreChunkChain, count)
            coordinator = cluster.nodes[1]
            coordinator.data.coordinator.config = dataclasses.replace(REPLICATION, chunk_write_shape="star")
            content = os.urandom(FILE_BYTES)
            await coordinator.data.put("star", _pieces(content), len(content))
            assert sent == []
            assert await read_back(cluster.nodes[3], "star") == content
            nursery.cancel_scope.cancel()

    run_scenario(scenario, tmp_path, sim_seed(7305))


# -- hostile chains ----------------------------------------------------------------------


def test_a_malformed_chain_costs_only_that_exchange(tmp_path):
    async def scenario(root, seed: int) -> None:
        async with trio.open_nursery() as nursery:
            cluster = await start_cluster(nursery, root, seed)
            hostile, target = cluster.nodes[5], cluster.nodes[2]
            others = [cluster.nodes[i].node_id for i in (1, 3, 4)]
            data = os.urandom(CHUNK_BYTES)
            good_id = chunk_id_of(data)

            def link(node_id: str) -> dm.ChainLink:
                return dm.ChainLink(node_id, "")

            refused = {
                "names itself": dm.StoreChunkChain(good_id, data, "", (link(others[0]), link(target.node_id)), 2000),
                "repeats": dm.StoreChunkChain(good_id, data, "", (link(others[0]), link(others[0])), 2000),
                "longer than rf": dm.StoreChunkChain(good_id, data, "", tuple(link(n) for n in others), 2000),
                "wrong id": dm.StoreChunkChain(bytes(32), data, "", (link(others[0]),), 2000),
            }
            endpoint = hostile.data._endpoint
            for why, msg in refused.items():
                with pytest.raises(net.RemoteError) as raised:
                    await endpoint.request(target.address, msg, timeout_s=5.0, node_id=target.node_id)
                assert raised.value.code is ErrorCode.BAD_REQUEST, why
                assert not target.data.local.chunks.has(good_id), why
            # A chain naming a node nobody knows: the receiver stores and reports that link failed.
            unknown = "f" * 64
            reply = await endpoint.request(
                target.address, dm.StoreChunkChain(good_id, data, "", (link(unknown),), 60_000),
                timeout_s=5.0, node_id=target.node_id,
            )
            assert [(o.node_id, o.stored) for o in reply.outcomes] == [(target.node_id, True), (unknown, False)]
            # The node still serves: a put through it succeeds and reads back.
            content = os.urandom(FILE_BYTES)
            await target.data.put("after", _pieces(content), len(content))
            assert await read_back(cluster.nodes[3], "after") == content
            nursery.cancel_scope.cancel()

    run_scenario(scenario, tmp_path, sim_seed(7306))


@pytest.mark.parametrize("lie", ["other nodes", "too many", "reordered"])
def test_a_head_answering_out_of_its_chain_counts_as_failed_and_the_rest_is_written_directly(tmp_path, lie):
    async def scenario(root, seed: int) -> None:
        async with trio.open_nursery() as nursery:
            cluster = await start_cluster(nursery, root, seed)
            cut = Cut()
            liar = cluster.nodes[2]

            async def lying(request):
                cut.chains_seen += 1
                msg = request.msg
                chain = [liar.node_id] + [link.node_id for link in msg.rest]
                if lie == "other nodes":
                    named = [cluster.nodes[5].node_id, cluster.nodes[4].node_id]
                elif lie == "too many":
                    named = chain + [cluster.nodes[5].node_id]
                else:
                    named = list(reversed(chain))
                if cut.head is None:
                    cut.head, cut.chunk_id = liar, msg.chunk_id
                return dm.StoreChunkChainReply(tuple(dm.ChainOutcome(n, True, "") for n in named))

            liar.routes[dm.StoreChunkChain] = lying
            content = os.urandom(FILE_BYTES)
            coordinator = cluster.nodes[1]
            entry = await coordinator.data.put("lied-to", _pieces(content), len(content))
            if cut.head is None:
                pytest.skip("node 2 headed no chain of this file")  # the seed fixes the placement
            # The liar stored nothing, and is not counted: rf real copies elsewhere.
            assert not liar.data.local.chunks.has(cut.chunk_id)
            assert len(holders(cluster, cut.chunk_id)) == REPLICATION.rf
            assert cut.chunk_id in set().union(*hinted_for(cluster, liar.node_id).values())
            assert entry.manifest.size_bytes == len(content)
            assert await read_back(cluster.nodes[3], "lied-to") == content
            nursery.cancel_scope.cancel()

    run_scenario(scenario, tmp_path, sim_seed(7307))
