"""A simulated data cluster: membership and the data service of many nodes in one process.

Each node runs the real ``MembershipService`` over the ``SimNetwork`` and the
real ``DataService`` over a ``SimEndpoint``, with its chunk store and indexes
on real disk (in a temporary directory) and disk work done inline, so that on
``MockClock`` simulated time passes only when every task waits. Requests
between nodes go straight to the target's handlers, through the network's
crashes, pauses and partitions, and through the wire codec.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Callable

import trio

from p2pfs import net, wire
from p2pfs.address import Address
from p2pfs.identity import PeerIdentity
from p2pfs.membership import Membership, MembershipConfig, MembershipService
from p2pfs.sim.membership import SIM_CAPACITY_BYTES, sim_address, sim_node_id
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.service import DataService
from p2pfs.sim.network import SimNetwork
from p2pfs.wire import Role


async def run_inline(fn: Callable, *args):
    """Disk work without a thread: on a MockClock, time must not pass while it runs."""
    return fn(*args)


def _through_codec(msg: wire.Message) -> wire.Message:
    return wire.decode_message(msg.TYPE, wire.encode_message(msg))


@dataclasses.dataclass(frozen=True, slots=True)
class _SimConn:
    peer: PeerIdentity


class SimEndpoint:
    """What ``DataService`` needs of ``net.Endpoint``: ``request``, over the simulation."""

    def __init__(self, cluster: "DataCluster", address: Address, node_id: str) -> None:
        self._cluster = cluster
        self._address = address
        self._peer = PeerIdentity(node_id, Role.NODE)

    async def request(self, address: Address, msg: wire.Message, *, timeout_s: float,
                      node_id: str | None = None, body=None) -> wire.Message:
        assert body is None, "streamed bodies are not simulated"
        network = self._cluster.network
        target = self._cluster.by_address.get(address)
        if target is None or target.crashed or network.blocked(self._address, address):
            raise net.ConnectError(f"cannot connect to {address}")
        if node_id is not None and target.node_id != node_id:
            raise net.HandshakeError(f"{address} is another node")
        try:
            with trio.fail_after(timeout_s):
                await trio.sleep(self._cluster.rng.uniform(0.0005, 0.002))
                while network.blocked(self._address, address):
                    await trio.sleep(0.1)  # paused or cut off: the request hangs until its deadline
                request = net.IncomingRequest(_SimConn(self._peer), _through_codec(msg), None)
                reply = await target.routes[type(request.msg)](request)
                if network.blocked(address, self._address) or target.crashed:
                    await trio.sleep_forever()  # the answer is lost on the way back
        except trio.TooSlowError:
            raise net.RequestTimeout(f"no answer from {address} within {timeout_s} s") from None
        return _through_codec(reply)


@dataclasses.dataclass(slots=True)
class DataNode:
    index: int
    node_id: str
    address: Address
    data_dir: Path
    membership: MembershipService
    data: DataService
    scope: trio.CancelScope
    routes: dict = dataclasses.field(default_factory=dict)
    crashed: bool = False


class DataCluster:
    """Start, crash, restart, add and remove simulated nodes that store data."""

    def __init__(self, nursery: trio.Nursery, network: SimNetwork, root: Path, rng: random.Random,
                 membership_config: MembershipConfig, replication_config: ReplicationConfig) -> None:
        self._nursery = nursery
        self.network = network
        self.root = root
        self.rng = rng
        self.membership_config = membership_config
        self.replication_config = replication_config
        self.nodes: dict[int, DataNode] = {}
        self.by_address: dict[Address, DataNode] = {}
        self.by_id: dict[str, DataNode] = {}

    async def start(self, index: int, seeds: tuple[Address, ...] = ()) -> DataNode:
        """Start node ``index``: new, or again after a crash with its data dir as it was."""
        old = self.nodes.get(index)
        assert old is None or old.crashed, f"node {index} is running"
        address = sim_address(index)
        node_id = sim_node_id(index)
        core = Membership(
            node_id=node_id, address=address, zone="", capacity_bytes=SIM_CAPACITY_BYTES,
            protocol_version=wire.PROTOCOL_VERSION,
            incarnation_initial=int(trio.current_time() * 1000) + 1,  # grows across restarts
            config=self.membership_config, rng=random.Random(self.rng.getrandbits(64)),
            now_s=trio.current_time(),
        )
        holder: list[MembershipService] = []
        transport = self.network.attach(address, lambda sender, msg: holder[0].deliver(sender, msg))
        membership = MembershipService(core, transport)
        holder.append(membership)
        data_dir = self.root / f"node{index}"
        node = DataNode(index, node_id, address, data_dir, membership, None, trio.CancelScope())
        node.data = DataService(
            node_id=node_id, data_dir=data_dir, capacity_bytes=SIM_CAPACITY_BYTES,
            config=self.replication_config, endpoint=SimEndpoint(self, address, node_id),
            members=membership.members, offload=run_inline,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        node.routes = node.data.routes()
        self.nodes[index] = node
        self.by_address[address] = node
        self.by_id[node_id] = node
        await self._nursery.start(self._run, node, seeds)
        return node

    async def _run(self, node: DataNode, seeds: tuple[Address, ...], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with node.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.data.run)
                await nursery.start(node.membership.run, seeds)
                task_status.started()

    def crash(self, node: DataNode) -> None:
        node.crashed = True
        node.scope.cancel()
        self.network.crash(node.address)

    async def leave(self, node: DataNode) -> None:
        """A graceful leave: hand off, announce, stop (as SIGTERM does in the daemon)."""
        with trio.move_on_after(self.replication_config.leave_handoff_timeout_s):
            await node.data.healer.hand_off_everything()
        await node.membership.leave(timeout_s=5.0)
        self.crash(node)

    def running(self) -> list[DataNode]:
        return [n for n in self.nodes.values() if not n.crashed]
