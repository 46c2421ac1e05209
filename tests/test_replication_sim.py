"""The data layer in simulation: a malformed peer answer costs one exchange, and time is the clock's."""

from __future__ import annotations

import dataclasses
import random

import pytest
import trio

from p2pfs.clock import SimClock
from p2pfs.errors import ConfigError
from p2pfs.membership import MembershipConfig
from p2pfs.sim.membership import sim_address, wait_until
from p2pfs.node.daemon import WALL_CLOCK_OFFSET_ENV, wall_clock_offset_ms
from p2pfs.replication import messages as dm
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.placement import name_key
from p2pfs.sim.data import DataCluster
from p2pfs.sim.network import SimNetwork, sim_seed

from sim_helpers import run_scenario

REPLICATION = ReplicationConfig(
    chunk_size_bytes=4096, replica_timeout_s=2.0, replica_backoff_s=2.0, dead_grace_s=20.0,
    hint_delivery_interval_s=1.0, anti_entropy_interval_s=5.0, scrub_bytes_per_s=0,
    gc_interval_s=10_000.0, leave_handoff_timeout_s=30.0,
)


async def _two_nodes(nursery: trio.Nursery, root, seed: int) -> DataCluster:
    rng = random.Random(seed)
    network = SimNetwork(random.Random(rng.getrandbits(64)))
    await nursery.start(network.run)
    cluster = DataCluster(nursery, network, root, rng, MembershipConfig(), REPLICATION)
    for index in (1, 2):
        await cluster.start(index, (sim_address(1),))
    assert await wait_until(lambda: all(len(n.membership.members()) == 2 for n in cluster.running()),
                            timeout_s=60, poll_s=0.5) is not None
    return cluster


def _unchecked(cls, *values):
    """A message the wire would refuse (its fields are checked at decode), built past those checks."""
    msg = object.__new__(cls)
    for field, value in zip(dataclasses.fields(cls), values):
        object.__setattr__(msg, field.name, value)
    return msg


async def _pieces(data: bytes):
    yield data


async def malformed_sync_scenario(root, seed: int) -> None:
    async with trio.open_nursery() as nursery:
        cluster = await _two_nodes(nursery, root, seed)
        healthy, broken = cluster.nodes[1], cluster.nodes[2]
        await healthy.data.put("a", _pieces(b"x" * 5000), 5000)  # both nodes now hold its chunks
        asked = 0

        async def garbage(request):
            nonlocal asked
            asked += 1
            # Not a list of 32-byte ids: built past the checks, as a peer could send it.
            return _unchecked(dm.SyncChunksReply, (_unchecked(dm.BucketChunks, 0, b"\x00" * 33),))

        broken.routes[dm.SyncChunks] = garbage
        # Several anti-entropy rounds pass: each is cut short with that peer, none stops the node.
        assert await wait_until(lambda: asked >= 3, timeout_s=10 * REPLICATION.anti_entropy_interval_s,
                                poll_s=1.0) is not None
        entry = await healthy.data.put("b", _pieces(b"still serving"), 13)
        assert entry.manifest is not None
        nursery.cancel_scope.cancel()


def test_a_malformed_sync_answer_fails_that_exchange_and_never_the_node(tmp_path):
    seed = sim_seed(7101)
    run_scenario(malformed_sync_scenario, tmp_path, seed)


async def clock_scenario(root, seed: int) -> None:
    async with trio.open_nursery() as nursery:
        cluster = await _two_nodes(nursery, root, seed)
        entry = await cluster.nodes[1].data.put("a", _pieces(b"hello"), 5)
        # The version and the manifest's time come from the simulated clock, not the host's.
        now_ms = SimClock().wall_ms()
        assert now_ms - 1000 <= entry.version.wall_ms <= now_ms
        assert entry.manifest.created_ms == entry.version.wall_ms
        nursery.cancel_scope.cancel()


def test_versions_are_stamped_by_the_data_layers_clock(tmp_path):
    seed = sim_seed(7102)
    run_scenario(clock_scenario, tmp_path, seed)


def test_the_daemon_reads_its_wall_clock_offset_from_the_environment():
    assert wall_clock_offset_ms({}) == 0
    assert wall_clock_offset_ms({WALL_CLOCK_OFFSET_ENV: "-2500"}) == -2500
    with pytest.raises(ConfigError, match=WALL_CLOCK_OFFSET_ENV):
        wall_clock_offset_ms({WALL_CLOCK_OFFSET_ENV: "1.5s"})


async def hint_expiry_scenario(root, seed: int) -> None:
    ttl_s = 60.0
    config = dataclasses.replace(REPLICATION, hint_ttl_s=ttl_s, dead_grace_s=10_000.0)
    rng = random.Random(seed)
    network = SimNetwork(random.Random(rng.getrandbits(64)))
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        cluster = DataCluster(nursery, network, root, rng, MembershipConfig(), config)
        for index in range(1, 5):
            await cluster.start(index, (sim_address(1),))
        assert await wait_until(lambda: all(len(n.membership.members()) == 4 for n in cluster.running()),
                                timeout_s=60, poll_s=0.5) is not None
        owner = cluster.by_id[cluster.nodes[1].data.ring().preference_list(name_key("x"), 3)[-1]]
        cluster.crash(owner)
        writer = next(n for n in cluster.running())
        # Wait until the writer sees the owner down, so the write goes to a stand-in with a hint.
        assert await wait_until(lambda: owner.node_id in writer.data.view.unavailable(),
                                timeout_s=60, poll_s=0.5) is not None
        await writer.data.put("x", _pieces(b"hinted"), 6)

        def hinted() -> bool:
            return any(owner.node_id in n.data.local.hints.owners() for n in cluster.running())

        assert hinted()
        written_s = trio.current_time()
        # The owner never comes back: the hint lives out its time-to-live on the data layer's
        # clock (simulated here), then goes.
        await trio.sleep(ttl_s / 2)
        assert hinted()
        took_s = await wait_until(lambda: not hinted(), timeout_s=ttl_s, poll_s=0.5)
        assert took_s is not None
        assert ttl_s <= trio.current_time() - written_s <= ttl_s + 2 * config.hint_delivery_interval_s + 1
        nursery.cancel_scope.cancel()


def test_hints_expire_on_the_data_layers_clock(tmp_path):
    seed = sim_seed(7103)
    run_scenario(hint_expiry_scenario, tmp_path, seed)
