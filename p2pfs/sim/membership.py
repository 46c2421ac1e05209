"""A simulated membership cluster: many ``MembershipService``s on one ``SimNetwork``.

Used by the simulation tests (``SimCluster``: real drivers under trio; run it
inside ``p2pfs.sim.run_simulation`` so that time is a ``MockClock`` and the run
is a function of its seed) and ``scripts/bench_membership.py`` (``CoreCluster``:
the cores alone on one event loop, for thousands of members; with compact member
tables, ``p2pfs.membership.compact``, and ``CoreCluster.form``, for 10,000).
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import hashlib
import heapq
import math
import random
from typing import AsyncIterator, Callable, Iterable

import trio

from p2pfs import wire
from p2pfs.address import Address
from p2pfs.membership.compact import CompactView, MemberTable
from p2pfs.membership.config import MembershipConfig
from p2pfs.membership.driver import MembershipService
from p2pfs.membership.messages import MemberState
from p2pfs.membership.state import Membership, Send
from p2pfs.membership.view import MemberView

from .network import LinkFaults, SimNetwork

SIM_PORT = 7000
SIM_CAPACITY_BYTES = 10 * 1024**3


def sim_node_id(index: int) -> str:
    """A node id shaped like a real one (hex SHA-256), so message sizes are realistic."""
    return hashlib.sha256(f"sim-node-{index}".encode()).hexdigest()


def sim_address(index: int) -> Address:
    return Address(f"node{index}.sim", SIM_PORT)


@dataclasses.dataclass(slots=True)
class SimNode:
    index: int
    node_id: str
    address: Address
    service: MembershipService
    scope: trio.CancelScope
    crashed: bool = False

    @property
    def core(self) -> Membership:
        return self.service.core


class SimCluster:
    """Start, crash, pause and inspect simulated members.

    With ``record_states``, every node records each (subject, state) it ever
    holds other than ALIVE, in ``seen`` keyed by (observer id, subject id),
    so tests can assert that something never happened (e.g. a live node was
    never declared dead by anyone).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        network: SimNetwork,
        config: MembershipConfig,
        rng: random.Random,
        *,
        record_states: bool = False,
    ) -> None:
        self._nursery = nursery
        self.network = network
        self.config = config
        self._rng = rng
        self._record_states = record_states
        self.nodes: dict[int, SimNode] = {}
        self.seen: dict[tuple[str, str], set[MemberState]] = {}

    async def start(
        self, index: int, seeds: Iterable[Address] = (), *, incarnation_initial: int = 1, zone: str = ""
    ) -> SimNode:
        """Start node ``index`` (again, after a crash: same id and address, a new process)."""
        old = self.nodes.get(index)
        assert old is None or old.crashed, f"node {index} is running"
        address = sim_address(index)
        core = Membership(
            node_id=sim_node_id(index), address=address, zone=zone, capacity_bytes=SIM_CAPACITY_BYTES,
            protocol_version=wire.PROTOCOL_VERSION, incarnation_initial=incarnation_initial,
            config=self.config, rng=random.Random(self._rng.getrandbits(64)), now_s=trio.current_time(),
        )
        holder: list[MembershipService] = []
        transport = self.network.attach(address, lambda sender, msg: holder[0].deliver(sender, msg))
        service = MembershipService(core, transport)
        holder.append(service)
        node = SimNode(index, core.node_id, address, service, trio.CancelScope())
        self.nodes[index] = node
        await self._nursery.start(self._run_node, node, tuple(seeds))
        return node

    async def _run_node(self, node: SimNode, seeds: tuple[Address, ...], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with node.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.service.run, seeds)
                if self._record_states:
                    nursery.start_soon(self._watch, node)
                task_status.started()

    async def _watch(self, node: SimNode) -> None:
        while True:  # until the node is crashed or the simulation ends
            version = node.core.version
            for member in node.core.members():
                if member.state != MemberState.ALIVE:
                    self.seen.setdefault((node.node_id, member.node_id), set()).add(member.state)
            await node.service.wait_changed(version)

    def crash(self, node: SimNode) -> None:
        """Stop the node's tasks and drop its traffic."""
        node.crashed = True
        node.scope.cancel()
        self.network.crash(node.address)

    def pause(self, node: SimNode) -> None:
        self.network.pause(node.address)

    def resume(self, node: SimNode) -> None:
        self.network.resume(node.address)

    def running(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if not n.crashed]

    def ever(self, state: MemberState, subject_id: str) -> set[str]:
        """Observers that ever held ``subject_id`` in ``state`` (needs ``record_states``)."""
        assert self._record_states
        return {obs for (obs, subj), states in self.seen.items() if subj == subject_id and state in states}

    def converged(self, nodes: list[SimNode] | None = None) -> bool:
        """Every given (default: running) node has the same view: exactly the given
        nodes live, all ALIVE, each at the incarnation it has itself."""
        nodes = self.running() if nodes is None else nodes
        expected = {n.node_id: n.core.incarnation for n in nodes}
        for node in nodes:
            live = node.core.live_members()
            if len(live) != len(expected):
                return False
            for member in live:
                if member.state != MemberState.ALIVE or expected.get(member.node_id) != member.incarnation:
                    return False
        return True

    def dead_everywhere(self, subject_id: str, nodes: list[SimNode] | None = None) -> bool:
        """Every given (default: running) node holds ``subject_id`` as DEAD (or has reaped it)."""
        for node in self.running() if nodes is None else nodes:
            member = node.core.member(subject_id)
            if member is not None and member.state != MemberState.DEAD:
                return False
        return True


@contextlib.asynccontextmanager
async def open_sim_cluster(
    seed: int,
    *,
    config: MembershipConfig = MembershipConfig(),
    faults: LinkFaults = LinkFaults(),
    codec: bool = True,
    record_states: bool = False,
) -> AsyncIterator[SimCluster]:
    """A network and an empty cluster, all randomness from ``seed``; torn down on exit."""
    rng = random.Random(seed)
    network = SimNetwork(random.Random(rng.getrandbits(64)), faults, encode=codec)
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        yield SimCluster(nursery, network, config, rng, record_states=record_states)
        nursery.cancel_scope.cancel()


async def wait_until(predicate: Callable[[], bool], *, timeout_s: float, poll_s: float) -> float | None:
    """Simulated seconds until ``predicate()`` holds, checked every ``poll_s``; None on timeout.

    Polling is fine here: on a MockClock the sleeps are simulated time.
    """
    start_s = trio.current_time()
    with trio.move_on_after(timeout_s):
        while not predicate():
            await trio.sleep(poll_s)
        return trio.current_time() - start_s
    return None


class CoreCluster:
    """Many membership cores on one ``SimNetwork``, run by one event loop with its own clock.

    The same protocol as ``SimCluster`` without trio: no task, channel or
    cancel scope per node, only the cores, the network's heap and a heap of
    the cores' next deadlines, taken in time order by ``run_until``. That
    makes a thousand-node minute take seconds instead of minutes (in
    ``SimCluster`` most of the time went to trio's scheduling of each node's
    timer and send tasks, not to the protocol). What it leaves out is the
    driver (``MembershipService``): its send queue and deadlines never act on
    this network, whose sends are instant, so the cores see the same traffic.
    For ``scripts/bench_membership.py``; the tests run ``SimCluster``.
    """

    def __init__(self, seed: int, *, config: MembershipConfig = MembershipConfig(),
                 faults: LinkFaults = LinkFaults(), codec: bool = True, compact: bool = False) -> None:
        """``compact``: the cores hold their member tables as ``CompactView``s over one shared
        ``MemberTable`` (about 30 bytes per node and member instead of 700; same behaviour)."""
        self._rng = random.Random(seed)
        self.network = SimNetwork(random.Random(self._rng.getrandbits(64)), faults, encode=codec)
        self.config = config
        self.now_s = 0.0
        self.cores: dict[int, Membership] = {}
        self.crashed: set[int] = set()
        self._timers: list[tuple[float, int]] = []
        self._scheduled_s: dict[int, float] = {}
        self.table = MemberTable() if compact else None

    def _view(self, node_id: str, config: MembershipConfig, rng: random.Random) -> MemberView:
        if self.table is None:
            return MemberView(node_id, config, rng)
        return CompactView(node_id, config, rng, self.table)

    def _core(self, index: int, incarnation_initial: int) -> Membership:
        assert index not in self.cores or index in self.crashed, f"node {index} is running"
        core = Membership(
            node_id=sim_node_id(index), address=sim_address(index), zone="", capacity_bytes=SIM_CAPACITY_BYTES,
            protocol_version=wire.PROTOCOL_VERSION, incarnation_initial=incarnation_initial,
            config=self.config, rng=random.Random(self._rng.getrandbits(64)), now_s=self.now_s,
            view_factory=self._view,
        )
        self.cores[index] = core
        self.crashed.discard(index)
        self._scheduled_s[index] = math.inf
        self.network.attach(core.address, lambda sender, msg: self._deliver(index, sender, msg))
        return core

    def start(self, index: int, seeds: Iterable[Address] = (), *, incarnation_initial: int = 1) -> Membership:
        core = self._core(index, incarnation_initial)
        self._send(index, core.join(tuple(seeds), self.now_s))
        return core

    def form(self, n: int) -> None:
        """Nodes 0 to n-1, each already holding all n ALIVE: a cluster that has converged and gone quiet.

        The state every member holds after an all-at-once join of n and the
        end of its gossip, reached without simulating the join (at 10,000
        members, 10^8 facts each sent about 20 times: days of CPU here, and
        not what a running cluster ever sees). Needs ``compact``. Each core's
        periodic exchange is drawn at a uniform phase of its interval, as in a
        cluster that has run for longer than one.
        """
        assert self.table is not None, "form needs compact views"
        assert not self.cores, "form makes the whole cluster"
        incarnation_initial = 1
        cores = [self._core(i, incarnation_initial) for i in range(n)]
        assert [self.table.slot_of[core.node_id] for core in cores] == list(range(n))
        incarnations = array.array("q", [incarnation_initial]) * n
        for i, core in enumerate(cores):
            view = core._view
            assert isinstance(view, CompactView)
            view.hold_all(incarnations, self.now_s)
            core.redraw_push_pull_phase(self.now_s)
            self._send(i, [])

    def crash(self, index: int) -> None:
        """The node stops: no more timers, and the network drops its traffic."""
        self.crashed.add(index)
        self.network.crash(sim_address(index))

    def running(self) -> list[Membership]:
        return [core for i, core in self.cores.items() if i not in self.crashed]

    def run_until(self, until_s: float) -> None:
        """Deliver messages and run timers in time order up to ``until_s`` (simulated)."""
        network, timers = self.network, self._timers
        while True:  # each pass handles one instant; ends when the next is past until_s
            message_s = network.next_due_s()
            timer_s = timers[0][0] if timers else math.inf
            # A deadline already past (a core's timer due before the message that woke it
            # was handled) runs now, as trio runs a cancel scope whose deadline has passed.
            next_s = max(self.now_s, min(message_s, timer_s))
            if next_s > until_s:
                break
            self.now_s = next_s
            if message_s <= timer_s:
                network.deliver_due(next_s)
                continue
            while timers and timers[0][0] <= next_s:
                due_s, index = heapq.heappop(timers)
                if self._scheduled_s.get(index) != due_s or index in self.crashed:
                    continue  # superseded by an earlier deadline, or the node is gone
                self._scheduled_s[index] = math.inf
                self._send(index, self.cores[index].tick(next_s))
        self.now_s = max(self.now_s, until_s)

    def _deliver(self, index: int, sender: Address, msg: wire.Message) -> None:
        if index not in self.crashed:
            self._send(index, self.cores[index].handle(sender, msg, self.now_s))

    def _send(self, index: int, sends: list[Send]) -> None:
        """Put a core's sends on the network and keep its next deadline in the timer heap."""
        src = sim_address(index)
        for send in sends:
            self.network.send(src, send.to, send.msg, self.now_s)
        deadline_s = self.cores[index].next_deadline_s()
        if deadline_s < self._scheduled_s[index]:
            self._scheduled_s[index] = deadline_s
            heapq.heappush(self._timers, (deadline_s, index))

    def converged(self) -> bool:
        """Every running node holds exactly the running nodes live, all ALIVE at their own incarnations.

        The member counts are compared first (O(n)); the full check, O(n^2),
        runs only once they agree.
        """
        cores = self.running()
        if any(core.live_count != len(cores) for core in cores):
            return False
        expected = {core.node_id: core.incarnation for core in cores}
        for core in cores:
            for member in core.live_members():
                if member.state != MemberState.ALIVE or expected.get(member.node_id) != member.incarnation:
                    return False
        return True

    def dead_everywhere(self, subject_id: str) -> bool:
        for core in self.running():
            member = core.member(subject_id)
            if member is not None and member.state != MemberState.DEAD:
                return False
        return True
