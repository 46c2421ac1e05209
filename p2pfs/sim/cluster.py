"""The whole-cluster simulation: the real data layer of 5-7 nodes under faults, seeded and checked.

In the manner of FoundationDB's simulator and TigerBeetle's VOPR: one process,
one simulated clock (``MockClock(autojump_threshold=0)``), one seeded network,
and the product's own code (``MembershipService`` and ``DataService``, with
chunk stores and name indexes on disk) on every node. Clients put, get and
remove files through the client-facing requests with streamed bodies; a
nemesis crashes and restarts nodes, makes them leave (hand-off) and come
back, pauses them, partitions the network and makes links lossy, while
anti-entropy, hinted hand-off, read repair and garbage collection run as they
do in a daemon. Every operation and fault goes into a history in the chaos
suite's format (``p2pfs.chaos.history``); after the faults heal and the
cluster settles, every name is read through every node, and the chaos checker
(``p2pfs.chaos.checker``) judges reads, final values and membership.

Everything random comes from the seed: the network, the nodes' ``Random``s,
the workload's plans, the nemesis, and trio's scheduler (``run_simulation``).
So ``run_seed(seed)`` writes the same history, byte for byte, every time in
the same interpreter build and with the same ``PYTHONHASHSEED`` (set and
iteration order of strings depend on it). A failing seed is a replayable bug.

Wall time. Versions, hint expiry and GC ages come from each node's
``SimClock``, a function of the simulated clock, so a run replays; the
nemesis skews a node by moving its clock's offset. Chunk files get their
modification times from the same clock, so chunk GC runs on simulated time
as tombstone GC does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from pathlib import Path
from typing import AsyncIterator

import trio

from p2pfs import net
from p2pfs.chaos.checker import (
    READ_ERROR_PREFIX,
    Violation,
    check_final_values,
    check_membership,
    check_reads,
)
from p2pfs.chaos.history import ABSENT, DELETE, FAIL, GET, INFO, OK, PUT, Fault, HistoryWriter, Op
from p2pfs.clock import SimClock
from p2pfs.membership.config import MembershipConfig
from p2pfs.membership.messages import MemberState
from p2pfs.replication import messages as dm
from p2pfs.replication.config import ReplicationConfig
from p2pfs.wire import ErrorCode

from .data import DataCluster, DataNode, SimEndpoint
from .membership import sim_address, wait_until
from .network import LinkFaults, SimNetwork, run_simulation

# Wall time at simulated time 0 (milliseconds since the Unix epoch).
SIM_EPOCH_MS = 1_700_000_000_000
# Op ids are worker * OP_ID_STRIDE + sequence number: unique and stable across replays.
OP_ID_STRIDE = 1_000_000
# The operation mix, as weights.
MIX = ((PUT, 45), (GET, 35), (DELETE, 20))
# File sizes in bytes, as (weight, smallest, largest): empty to one chunk, and several chunks.
SIZES = ((60, 0, 4096), (40, 4097, 20_000))
# A fault kind's weight in the nemesis's choice.
FAULT_WEIGHTS = {"crash": 3, "partition": 3, "loss": 2, "pause": 2, "leave": 1, "skew": 2}
# Clock offsets the skew fault gives a node, in milliseconds (either sign).
SKEW_MS_MAX = 2_000
# Drop probability of a lossy link, uniform in [min, max].
LOSS_PROBABILITY_MIN, LOSS_PROBABILITY_MAX = 0.05, 0.3
# After the faults: how long the cluster may take to agree on membership, seconds.
CONVERGE_S_MAX = 120.0
# Rounds of "wait, then read every name through every node" until the nodes agree.
SETTLE_ROUNDS_MAX = 10

# Fast timings for a simulated cluster: seconds where a daemon has minutes, so that
# repair, hand-off and GC all happen within a few simulated minutes.
REPLICATION = ReplicationConfig(
    chunk_size_bytes=4096,
    replica_timeout_s=2.0,
    replica_backoff_s=2.0,
    dead_grace_s=30.0,
    hint_delivery_interval_s=1.0,
    anti_entropy_interval_s=10.0,
    scrub_bytes_per_s=0,  # scrubbing finds disk rot, which a simulation does not inject
    gc_interval_s=30.0,
    chunk_gc_grace_s=60.0,
    # Longer than any outage the nemesis makes (fault_s_max) plus repair rounds: a node
    # back from an outage learns a delete before its tombstone may go.
    tombstone_gc_grace_s=120.0,
    leave_handoff_timeout_s=30.0,
)
MEMBERSHIP = MembershipConfig()


@dataclasses.dataclass(frozen=True, slots=True)
class SimSettings:
    """One simulated run's shape. Times in simulated seconds."""

    nodes: int = 5
    duration_s: float = 120.0  # of workload and faults; settling comes after
    workers: int = 3
    names: int = 6  # a small pool: overwrites and deletes of one name through different nodes
    op_timeout_s: float = 10.0
    think_s_min: float = 0.2
    think_s_max: float = 1.5
    fault_gap_s_min: float = 2.0
    fault_gap_s_max: float = 10.0
    fault_s_min: float = 2.0
    fault_s_max: float = 20.0

    def __post_init__(self) -> None:
        assert self.nodes >= 3, self.nodes  # partitions need two sides, writes W of RF=3
        assert self.duration_s > 0
        assert self.fault_s_max + 2 * REPLICATION.anti_entropy_interval_s < REPLICATION.tombstone_gc_grace_s


@dataclasses.dataclass(slots=True)
class SimResult:
    seed: int
    history_path: Path
    ops: list[Op]
    faults: list[Fault]
    violations: list[Violation]
    simulated_s: float


def run_seed(seed: int, root: Path, settings: SimSettings = SimSettings()) -> SimResult:
    """Run one seeded simulation in ``root`` (a fresh directory); history in root/history.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    assert not any(root.iterdir()), f"{root} is not empty: a run starts from empty disks"
    return run_simulation(_Run(seed, root, settings).main, seed=seed)


def content(seed: int, op_id: int, size_bytes: int) -> bytes:
    """What put ``op_id`` writes: unique to the op, so a read's hash names the put it saw."""
    prefix = f"p2pfs sim seed {seed} op {op_id}\n".encode()
    return prefix + random.Random(f"content-{seed}-{op_id}").randbytes(max(0, size_bytes - len(prefix)))


class _Run:
    def __init__(self, seed: int, root: Path, settings: SimSettings) -> None:
        self.seed = seed
        self.root = root
        self.settings = settings
        self.rng = random.Random(seed)
        self.names = [f"sim/file-{i:02d}" for i in range(settings.names)]
        self.clocks = {i: SimClock(SIM_EPOCH_MS) for i in range(1, settings.nodes + 1)}
        self.ops: list[Op] = []
        self.faults: list[Fault] = []
        self.t0_s = 0.0
        self.history: HistoryWriter | None = None
        self.cluster: DataCluster | None = None

    def now_s(self) -> float:
        return trio.current_time() - self.t0_s

    def node_name(self, index: int) -> str:
        return f"node{index}"

    async def main(self) -> SimResult:
        settings = self.settings
        network = SimNetwork(random.Random(self.rng.getrandbits(64)), LinkFaults())
        header = {
            "source": "p2pfs.sim.cluster", "seed": self.seed,
            **dataclasses.asdict(settings),
        }
        self.history = HistoryWriter(self.root / "history.jsonl", header)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(network.run)
                self.cluster = DataCluster(nursery, network, self.root / "nodes",
                                           random.Random(self.rng.getrandbits(64)), MEMBERSHIP, REPLICATION)
                for index in range(1, settings.nodes + 1):
                    await self._start(index)
                converged = await wait_until(self._membership_converged, timeout_s=CONVERGE_S_MAX, poll_s=0.5)
                assert converged is not None, f"seed {self.seed}: the cluster never formed"
                self.t0_s = trio.current_time()
                stop = trio.Event()
                async with trio.open_nursery() as run:
                    for worker in range(settings.workers):
                        run.start_soon(self._worker, worker, stop)
                    run.start_soon(self._nemesis, stop)
                    await trio.sleep(settings.duration_s)
                    stop.set()
                violations = await self._settle_and_check()
                nursery.cancel_scope.cancel()
        finally:
            self.history.close()
        return SimResult(self.seed, self.history.path, self.ops, self.faults, violations,
                         trio.current_time())

    async def _start(self, index: int) -> DataNode:
        seeds = (sim_address(1), sim_address(2))
        return await self.cluster.start(index, seeds, clock=self.clocks[index])

    def _membership_converged(self) -> bool:
        want = {node.node_id for node in self.cluster.nodes.values()}
        for node in self.cluster.running():
            alive = {m.node_id for m in node.membership.members() if m.state == MemberState.ALIVE}
            if alive != want or len(node.membership.members()) != len(want):
                return False
        return len(self.cluster.running()) == len(want)

    # -- the workload ----------------------------------------------------------

    async def _worker(self, worker: int, stop: trio.Event) -> None:
        settings = self.settings
        rng = random.Random(f"sim-workload-{self.seed}-{worker}")
        client = self.cluster.client(f"worker{worker}")
        kinds, kind_weights = zip(*MIX)
        size_weights = [w for w, _, _ in SIZES]
        for sequence in range(OP_ID_STRIDE):
            kind = rng.choices(kinds, kind_weights)[0]
            _, smallest, largest = rng.choices(SIZES, size_weights)[0]
            size_bytes = rng.randint(smallest, largest) if kind == PUT else 0
            name = rng.choice(self.names)
            index = rng.randint(1, settings.nodes)
            with trio.move_on_after(rng.uniform(settings.think_s_min, settings.think_s_max)):
                await stop.wait()
            if stop.is_set():
                return
            op = Op(op_id=worker * OP_ID_STRIDE + sequence, worker=worker, kind=kind, name=name,
                    node=self.node_name(index), invoke_s=self.now_s(), size_bytes=size_bytes)
            await self._execute(client, index, op)
            self.ops.append(op)
            self.history.write(op.as_json())
        raise AssertionError(f"worker {worker} ran out of planned operations")

    async def _execute(self, client: SimEndpoint, index: int, op: Op) -> None:
        """Run ``op`` through node ``index`` and set its outcome, as the chaos workload does."""
        timeout_s = self.settings.op_timeout_s
        data = content(self.seed, op.op_id, op.size_bytes) if op.kind == PUT else b""
        if op.kind == PUT:
            op.value = hashlib.sha256(data).hexdigest()
        address = sim_address(index)
        try:
            with trio.move_on_after(timeout_s) as scope:
                if op.kind == PUT:
                    await client.request(address, dm.PutFile(op.name, len(data)), timeout_s=timeout_s,
                                         body=_pieces(data))
                elif op.kind == GET:
                    op.value = await _read(client, address, op.name, timeout_s)
                else:
                    await client.request(address, dm.RemoveFile(op.name), timeout_s=timeout_s)
            if scope.cancelled_caught:
                op.outcome, op.error = (FAIL if op.kind == GET else INFO), "TIMEOUT: no answer in time"
            else:
                op.outcome, op.answered = OK, True
        except net.RemoteError as exc:
            op.answered = True
            op.error = f"{exc.code.name}: {exc.text}"
            if exc.code is ErrorCode.NOT_FOUND and op.kind == GET:
                op.outcome, op.value, op.error = OK, ABSENT, ""
            elif exc.code is ErrorCode.NOT_FOUND or op.kind == GET:
                op.outcome = FAIL  # rm found nothing and wrote nothing; a failed read changes nothing
            else:
                op.outcome = INFO
        except net.ConnectError as exc:
            op.outcome, op.error = FAIL, f"CONNECT: {exc}"  # nothing was sent
        except net.NetError as exc:
            op.outcome, op.error = (FAIL if op.kind == GET else INFO), f"{type(exc).__name__}: {exc}"
        op.complete_s = self.now_s()

    # -- the nemesis -----------------------------------------------------------

    async def _nemesis(self, stop: trio.Event) -> None:
        settings = self.settings
        rng = random.Random(f"sim-nemesis-{self.seed}")
        kinds = list(FAULT_WEIGHTS)
        weights = [FAULT_WEIGHTS[k] for k in kinds]
        while True:  # until stopped: each round one fault, then its repair
            with trio.move_on_after(rng.uniform(settings.fault_gap_s_min, settings.fault_gap_s_max)):
                await stop.wait()
            if stop.is_set():
                return
            kind = rng.choices(kinds, weights)[0]
            duration_s = rng.uniform(settings.fault_s_min, settings.fault_s_max)
            fault = await self._inject(kind, rng)
            self.faults.append(fault)
            with trio.move_on_after(duration_s):
                await stop.wait()
            await self._repair(fault)
            fault.end_s = self.now_s()
            self.history.write(fault.as_json())

    async def _inject(self, kind: str, rng: random.Random) -> Fault:
        cluster = self.cluster
        indexes = sorted(cluster.nodes)
        fault = Fault(kind, [], self.now_s())
        if kind in ("crash", "pause", "leave", "skew"):
            index = rng.choice(indexes)
            fault.targets = [self.node_name(index)]
            node = cluster.nodes[index]
            if kind == "crash":
                cluster.crash(node)
            elif kind == "pause":
                cluster.network.pause(node.address)
            elif kind == "leave":
                await cluster.leave(node)  # hands its data off first, as SIGTERM does
            else:
                offset_ms = rng.choice([-1, 1]) * rng.randint(100, SKEW_MS_MAX)
                self.clocks[index].skew_ms = offset_ms
                fault.params = {"offsets_s": {fault.targets[0]: offset_ms / 1000}, "settle_s": 0.0}
        elif kind == "partition":
            shuffled = list(indexes)
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(shuffled) - 1)
            groups = [sorted(shuffled[:cut]), sorted(shuffled[cut:])]
            cluster.network.partition(*[[sim_address(i) for i in group] for group in groups])
            fault.targets = [self.node_name(i) for i in groups[0]]
            fault.params = {"groups": [[self.node_name(i) for i in group] for group in groups]}
        else:
            assert kind == "loss", kind
            probability = round(rng.uniform(LOSS_PROBABILITY_MIN, LOSS_PROBABILITY_MAX), 3)
            cluster.network.set_faults(dataclasses.replace(cluster.network.faults, drop_probability=probability))
            fault.params = {"drop_probability": probability}
        return fault

    async def _repair(self, fault: Fault) -> None:
        cluster = self.cluster
        network = cluster.network
        if fault.kind in ("crash", "leave"):
            await self._start(int(fault.targets[0].removeprefix("node")))
        elif fault.kind == "pause":
            network.resume(sim_address(int(fault.targets[0].removeprefix("node"))))
        elif fault.kind == "skew":
            self.clocks[int(fault.targets[0].removeprefix("node"))].skew_ms = 0
        elif fault.kind == "partition":
            network.heal()
        else:
            network.set_faults(dataclasses.replace(network.faults, drop_probability=0.0))

    # -- the end: settle, read everything back, check ----------------------------

    async def _settle_and_check(self) -> list[Violation]:
        converged = await wait_until(self._membership_converged, timeout_s=CONVERGE_S_MAX, poll_s=0.5)
        views = {self.node_name(n.index): self._view(n) for n in self.cluster.running()}
        node_ids = {self.node_name(n.index): n.node_id for n in self.cluster.nodes.values()}
        violations = check_reads(self.ops)
        if converged is None:
            violations += check_membership(views, node_ids)
        final: dict[str, dict[str, str]] = {}
        checker = self.cluster.client("checker")
        for _ in range(SETTLE_ROUNDS_MAX):
            await trio.sleep(2 * REPLICATION.anti_entropy_interval_s)
            final = await self._read_everything(checker)
            if all(len(set(reads.values())) == 1 for reads in final.values()):
                break
        for name, reads in sorted(final.items()):
            self.history.write({"type": "final", "name": name, "reads": reads})
        violations += check_final_values(self.ops, self.faults, final)
        for violation in violations:
            self.history.write({"type": "violation", **violation.as_json()})
        return violations

    def _view(self, node: DataNode) -> dict[str, str]:
        return {m.node_id: m.state.name.lower() for m in node.membership.members()}

    async def _read_everything(self, client: SimEndpoint) -> dict[str, dict[str, str]]:
        final: dict[str, dict[str, str]] = {}
        for name in self.names:
            reads = final.setdefault(name, {})
            for node in sorted(self.cluster.running(), key=lambda n: n.index):
                try:
                    reads[self.node_name(node.index)] = await _read(
                        client, node.address, name, self.settings.op_timeout_s)
                except net.RemoteError as exc:
                    reads[self.node_name(node.index)] = (
                        ABSENT if exc.code is ErrorCode.NOT_FOUND else f"{READ_ERROR_PREFIX} {exc.code.name}: {exc.text}")
                except net.NetError as exc:
                    reads[self.node_name(node.index)] = f"{READ_ERROR_PREFIX} {type(exc).__name__}: {exc}"
        return final


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    """A client's upload in uneven pieces, as a file read in blocks would arrive."""
    for start in range(0, len(data), 3000):
        yield data[start : start + 3000]


async def _read(client: SimEndpoint, address, name: str, timeout_s: float) -> str:
    """sha256 of the file ``name`` read through ``address``, streamed."""
    hasher = hashlib.sha256()
    try:
        with trio.fail_after(timeout_s):
            async with client.open_request(address, dm.GetFile(name), timeout_s=timeout_s) as response:
                if response.body is None:
                    raise net.ConnectionClosed(f"a get of {name!r} came without a body")
                async for data in response.body:
                    hasher.update(data)
    except trio.TooSlowError:
        raise net.RequestTimeout(f"reading {name!r} took over {timeout_s} s") from None
    return hasher.hexdigest()
