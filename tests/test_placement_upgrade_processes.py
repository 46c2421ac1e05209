"""Upgrading a running cluster to a newer placement version, node by node, with real daemons:
from 1 to 2, and from 2 to 3.

The nodes start at the old placement version, as a cluster of old nodes (a node set to an older
``placement_version`` advertises that version and no newer one, as a node of the old code does),
and get files: small ones inside their name entries, bigger ones in chunks. Then each node is
restarted with the new version, one after another, and every file is read through every live node
after each step: while any member still runs the old version the cluster places by it and nothing
moves; once the last one runs the new version every node switches, and a name whose new replicas
do not have it yet is found at its old replicas (``RingView.other_ring``). Afterwards anti-entropy
has moved every name and chunk to its replicas under the new version, and off the others.

rf 2 and r 1, so that a name's two replicas under each version are often disjoint and a read
asks one replica: with rf 3 on four nodes, any two replica sets share two nodes and a read
quorum of two always meets one that holds the name, whichever placement it reads by.

From 1 to 2: four nodes, anti-entropy every 20 s. Without the lookup under version 1 the reads
right after the switch fail (checked with placement_fallback_s = 0): the first anti-entropy
rounds come after them. From 2 to 3: every key keeps its coordinator (the rings' tokens are the
same) and about half change their other replica on three nodes; three nodes and anti-entropy
every 5 s keep it short (docs/BENCHMARKS.md, "Placement version 3 upgrade").
"""

from __future__ import annotations

import random
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from p2pfs import identity, testnet
from p2pfs.client import Client
from p2pfs.config import CONFIG_FILE
from p2pfs.errors import P2pfsError
from p2pfs.replication.placement import name_key, ring_weight
from p2pfs.ring import Ring, RingMember
from p2pfs.storage import NAMES_FILE_NAME
from p2pfs.storage.chunkstore import CHUNKS_DIR_NAME
from p2pfs.storage.manifest import chunk_id_of
from p2pfs.wire import placement_version_of

from testnet_helpers import CLI_TIMEOUT_S, Net, read_all, running_testnet, wait_for, write_all

pytestmark = pytest.mark.integration

RF = 2
CHUNK_SIZE_BYTES = 16 * 1024
CAPACITY_BYTES = 10 * 1024**3  # the test network's default: weight 1
MOVE_TIMEOUT_S = 180.0  # generous: the machine running the suite may be loaded


@dataclass(frozen=True)
class Upgrade:
    old: int  # the placement version the cluster starts at
    new: int
    nodes: int
    # Anti-entropy rounds often enough to move the data within the test; from 1 to 2, seldom
    # enough that the reads right after the switch mostly come before the first round, so that
    # they need the old replicas.
    anti_entropy_interval_s: float
    # At least this share of the names change replicas, so that the test means something.
    moved_share_min: float


UPGRADES = [
    pytest.param(Upgrade(1, 2, nodes=4, anti_entropy_interval_s=20.0, moved_share_min=0.5), id="1-to-2"),
    pytest.param(Upgrade(2, 3, nodes=3, anti_entropy_interval_s=5.0, moved_share_min=0.3), id="2-to-3"),
]


def files() -> dict[str, bytes]:
    rng = random.Random(16)
    small = {f"small/{i}.txt": rng.randbytes(rng.randrange(1, 2048)) for i in range(24)}
    big = {f"big/{i}.bin": rng.randbytes(2 * CHUNK_SIZE_BYTES + 100 * i + 1) for i in range(4)}
    return small | big

def chunk_ids(data: bytes) -> list[bytes]:
    return [chunk_id_of(data[i:i + CHUNK_SIZE_BYTES]) for i in range(0, len(data), CHUNK_SIZE_BYTES)]

def advertised_versions(net: Net) -> list[set[int]]:
    """The placement versions each node sees its members advertise (through the client library:
    a CLI process per node costs seconds on a loaded machine)."""
    ident = identity.load_identity(net.directory / testnet.CLIENT_DIR)

    async def ask(address) -> set[int]:
        try:
            with trio.fail_after(CLI_TIMEOUT_S):
                async with Client.connect(ident, address) as client:
                    return {placement_version_of(m.protocol_version) for m in await client.members()}
        except P2pfsError:  # not listening yet
            return set()

    async def main() -> list[set[int]]:
        return [await ask(p.address) for p in net.status().values()]

    return trio.run(main)

def upgrade_config(node_dir: Path, old: int, new: int) -> None:
    path = node_dir / CONFIG_FILE
    text, count = re.subn(rf"(?m)^placement_version = {old}$", f"placement_version = {new}", path.read_text())
    assert count == 1, f"no placement_version setting in {path}"
    path.write_text(text)

def names_held(node_dir: Path) -> set[str]:
    uri = f"file:{node_dir / 'data' / NAMES_FILE_NAME}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        return {bytes(row[0]).decode() for row in conn.execute("SELECT name FROM names")}

def chunk_held(node_dir: Path, chunk_id: bytes) -> bool:
    hex_id = chunk_id.hex()  # the store's layout: chunks/<first 2 hex digits>/<the rest>
    return (node_dir / "data" / CHUNKS_DIR_NAME / hex_id[:2] / hex_id[2:]).is_file()

@pytest.mark.parametrize("upgrade", UPGRADES)
def test_a_cluster_upgraded_node_by_node_reads_every_file_and_moves_data_to_the_new_homes(tmp_path, upgrade):
    old, new, nodes = upgrade.old, upgrade.new, upgrade.nodes
    overrides = {"replication": {"placement_version": old, "rf": RF, "w": RF, "r": 1,
                                 "chunk_size_bytes": CHUNK_SIZE_BYTES,
                                 "anti_entropy_interval_s": upgrade.anti_entropy_interval_s}}
    expected = files()
    with running_testnet(tmp_path / "net", nodes=nodes, overrides=overrides) as net:
        ids = {name: net.node_id(name) for name in net.names}
        members = [RingMember(i, "", ring_weight(CAPACITY_BYTES)) for i in ids.values()]
        old_ring, new_ring = Ring.of_version(members, old), Ring.of_version(members, new)

        def homes(key: bytes, ring: Ring) -> set[str]:
            return {n for n, i in ids.items() if i in ring.preference_list(key, RF)}

        def names_at_homes(ring: Ring, *, only: bool) -> bool:
            """Every name at its replicas under ``ring``; with ``only``, nowhere else."""
            held = {n: names_held(net.directory / n) for n in net.names}
            return all(
                (f in held[n]) == at_home if only else f in held[n] or not at_home
                for f in expected for n in net.names for at_home in [n in homes(name_key(f), ring)]
            )

        def chunks_at_homes(ring: Ring, *, only: bool) -> bool:
            return all(
                held == at_home if only else held or not at_home
                for data in expected.values() if len(data) > CHUNK_SIZE_BYTES
                for chunk_id in chunk_ids(data) for n in net.names
                for held, at_home in [(chunk_held(net.directory / n, chunk_id), n in homes(chunk_id, ring))]
            )

        moved = [f for f in expected if homes(name_key(f), old_ring) != homes(name_key(f), new_ring)]
        assert len(moved) >= upgrade.moved_share_min * len(expected)

        assert advertised_versions(net) == [{old}] * nodes
        write_all(net, expected, through=net.names)
        read_all(net, expected, through=net.names)
        assert names_at_homes(old_ring, only=True) and chunks_at_homes(old_ring, only=True)

        for upgraded, name in enumerate(net.names, start=1):
            net.stop(name)
            read_all(net, expected, through=[n for n in net.names if n != name])
            upgrade_config(net.directory / name, old, new)
            net.start(name)
            seen = {new} if upgraded == nodes else {old, new}
            wait_for(lambda: advertised_versions(net) == [seen] * nodes, timeout_s=60,
                     what=f"{name} to rejoin advertising placement version {new}")
            read_all(net, expected, through=net.names)
            # While a member runs the old version, everyone places by it: the data stays. (Not only
            # there: reads while a node is stopped leave copies with stand-ins, for the node's hints.)
            if upgraded < nodes:
                assert names_at_homes(old_ring, only=False) and chunks_at_homes(old_ring, only=False)

        wait_for(lambda: names_at_homes(new_ring, only=True), timeout_s=MOVE_TIMEOUT_S,
                 what=f"every name at its version-{new} replicas only")
        wait_for(lambda: chunks_at_homes(new_ring, only=True), timeout_s=MOVE_TIMEOUT_S,
                 what=f"every chunk at its version-{new} replicas only")
        read_all(net, expected, through=net.names)
