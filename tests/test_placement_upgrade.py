"""After the switch to a new placement: data held at the old homes moves to the new ones.

Once a cluster places by a new version, almost every key has other replicas than before. What
carries the data over is the path that already handles a ring change: each node's anti-entropy
round finds the chunks and names it holds but no longer replicates, and hands them to their new
owners (docs/ARCHITECTURE.md, "Placement"; tests/test_placement_upgrade_processes.py does it with
real daemons across the switch). Simulated here by putting a file, then moving every copy to
nodes that are not its replicas, as a cluster that just switched would hold it.
"""

from __future__ import annotations

import random

import trio

from p2pfs.membership import MembershipConfig
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.placement import name_key
from p2pfs.sim.data import DataCluster, DataNode
from p2pfs.sim.membership import sim_address, wait_until
from p2pfs.sim.network import SimNetwork, run_simulation, sim_seed

NODES = 6  # rf 3 owners and 3 other nodes for every key
QUIET = ReplicationConfig(
    chunk_size_bytes=4096, replica_timeout_s=2.0, replica_backoff_s=2.0, dead_grace_s=20.0,
    hint_delivery_interval_s=10_000.0, anti_entropy_interval_s=10_000.0, scrub_bytes_per_s=0,
    gc_interval_s=10_000.0, leave_handoff_timeout_s=30.0,
)
CONTENT = bytes(random.Random(7).randbytes(3 * 4096 + 100))  # four chunks


async def pieces(data: bytes):
    yield data


def move_to_old_homes(nodes: list[DataNode], name: str) -> dict[bytes, set[str]]:
    """Move every copy of ``name`` and its chunks from their replicas to the other nodes.

    Returns the replicas (node ids) of every key: where the data must end up."""
    by_id = {n.node_id: n for n in nodes}
    ring = nodes[0].data.ring()
    rf = QUIET.rf
    entry = next(n.data.local.names.get(name) for n in nodes if n.data.local.names.get(name))
    owners_of: dict[bytes, set[str]] = {}
    for key in [name_key(name)] + [ref.chunk_id for ref in entry.manifest.chunks]:
        owners = set(ring.preference_list(key, rf))
        owners_of[key] = owners
        store_chunk = key != name_key(name)
        data = nodes_holding_chunk(nodes, key) if store_chunk else b""
        for node_id, node in by_id.items():
            if node_id in owners:
                if store_chunk:
                    node.data.local.chunks.delete(key)
                else:
                    node.data.local.names.remove_if(name, entry.version, entry.writer)
            elif store_chunk:
                node.data.local.chunks.put(key, data)
            else:
                node.data.local.names.apply(entry)
    return owners_of


def nodes_holding_chunk(nodes: list[DataNode], chunk_id: bytes) -> bytes:
    return next(n.data.local.chunks.get(chunk_id) for n in nodes if n.data.local.chunks.has(chunk_id))


async def read_back(node: DataNode, name: str) -> bytes | None:
    entry = await node.data.read_name(name)
    if entry is None or entry.manifest is None:
        return None
    return b"".join([await node.data.fetch_chunk(ref.chunk_id) for ref in entry.manifest.chunks])


async def upgrade_scenario(root, seed: int) -> None:
    rng = random.Random(seed)
    network = SimNetwork(random.Random(rng.getrandbits(64)))
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        cluster = DataCluster(nursery, network, root, rng, MembershipConfig(), QUIET)
        seeds = (sim_address(1),)
        for index in range(1, NODES + 1):
            await cluster.start(index, seeds)
        assert await wait_until(lambda: all(len(n.membership.members()) == NODES for n in cluster.running()),
                                timeout_s=60, poll_s=0.5) is not None
        nodes = cluster.running()
        await nodes[0].data.put("f", pieces(CONTENT), len(CONTENT))
        owners_of = move_to_old_homes(nodes, "f")
        for key, owners in owners_of.items():
            holders = {n.node_id for n in nodes
                       if (n.data.local.chunks.has(key) if len(key) == 32 else n.data.local.names.get("f"))}
            assert holders and not holders & owners, "the copies sit at the old homes only"
        # Chunks are found where they sit: a fetch walks the fallbacks after the replicas.
        chunk_id = next(k for k in owners_of if len(k) == 32)
        assert await nodes[0].data.fetch_chunk(chunk_id) == nodes_holding_chunk(nodes, chunk_id)

        for node in nodes:  # one anti-entropy round (and its hand-off) on every node
            await node.data._anti_entropy_and_hand_off()

        for key, owners in owners_of.items():
            holders = {n.node_id for n in nodes
                       if (n.data.local.chunks.has(key) if len(key) == 32 else n.data.local.names.get("f"))}
            assert holders == owners, "every copy moved to its new replicas, and only there"
        assert await read_back(nodes[-1], "f") == CONTENT
        nursery.cancel_scope.cancel()


def test_an_upgraded_cluster_moves_data_from_its_old_homes_in_one_anti_entropy_round(tmp_path):
    seed = sim_seed(1601)
    try:
        run_simulation(upgrade_scenario, tmp_path, seed, seed=seed)
    except BaseException:
        print(f"simulation seed {seed} (replay: P2PFS_SIM_SEED={seed})")
        raise
