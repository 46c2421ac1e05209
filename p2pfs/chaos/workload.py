"""The seeded workload: concurrent puts, overwrites, gets and deletes of files of mixed sizes.

Each worker follows its own plan, a pure function of the seed and the worker
number (``plan``), so a replay issues the same operations in the same order;
only how many fit in the run and what they return depend on timing. Names come
from a small pool, so overwrites and deletes of the same name by different
workers through different coordinators are common: that is where ordering bugs
live. Every put writes content no other put writes (it starts with the seed
and the op id), so the checker can tell from a read's hash which put it saw.

Operations go through the client library (``p2pfs.client.Cluster``), the same
code the CLI runs, given every node's address (the planned node first, then the
others in the order of their index), so an operation whose first node is
impaired fails over as a user's would. Each runs under its own deadline, and is
recorded in the history with an outcome the checker can reason about (see
``history``), judged from every attempt it made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import random
from typing import Callable, Iterator

import trio

from p2pfs import net
from p2pfs.address import Address
from p2pfs.client import Cluster as ClientCluster
from p2pfs.client import NodeUnreachable
from p2pfs.cli import exit_code_for
from p2pfs.errors import NotFound, P2pfsError
from p2pfs.chaos.cluster import Cluster, user_error_in
from p2pfs.chaos.history import ABSENT, DELETE, FAIL, GET, INFO, OK, PUT, Op

log = logging.getLogger(__name__)

# Op ids are worker * OP_ID_STRIDE + sequence number: unique, and stable across replays.
OP_ID_STRIDE = 1_000_000
# Operations one worker may plan at most (a bound on the plan, far above what a run uses).
OPS_PER_WORKER_MAX = OP_ID_STRIDE - 1
# The operation mix, as weights.
MIX = ((PUT, 45), (GET, 35), (DELETE, 20))
# File sizes as (weight, smallest, largest) in bytes: small files, files around the
# chunk size (256 KiB in chaos runs), and files of several chunks.
SIZES = ((50, 0, 4096), (35, 16 * 1024, 400 * 1024), (15, 400 * 1024, 1536 * 1024))
# Think time between a worker's operations, seconds (uniform).
THINK_S_MIN, THINK_S_MAX = 0.05, 0.4


@dataclasses.dataclass(frozen=True, slots=True)
class Planned:
    """An operation as planned from the seed, before it runs."""

    op_id: int
    kind: str
    name: str
    node_index: int  # 0-based index into the cluster's nodes
    size_bytes: int
    think_s: float


def name_pool(count: int) -> list[str]:
    return [f"chaos/file-{i:02d}" for i in range(count)]


def content(seed: int, op_id: int, size_bytes: int) -> bytes:
    """The bytes put ``op_id`` writes: a unique prefix, then seeded random bytes."""
    prefix = f"p2pfs chaos seed {seed} op {op_id}\n".encode()
    body = random.Random(f"content-{seed}-{op_id}").randbytes(max(0, size_bytes - len(prefix)))
    return prefix + body


def plan(seed: int, worker: int, names: list[str], node_count: int) -> Iterator[Planned]:
    """Worker ``worker``'s operations for ``seed``: the same sequence every time."""
    rng = random.Random(f"workload-{seed}-{worker}")
    kinds, kind_weights = zip(*MIX)
    size_weights = [w for w, _, _ in SIZES]
    for sequence in range(OPS_PER_WORKER_MAX):
        kind = rng.choices(kinds, kind_weights)[0]
        _, smallest, largest = rng.choices(SIZES, size_weights)[0]
        yield Planned(
            op_id=worker * OP_ID_STRIDE + sequence,
            kind=kind,
            name=rng.choice(names),
            node_index=rng.randrange(node_count),
            size_bytes=rng.randint(smallest, largest) if kind == PUT else 0,
            think_s=rng.uniform(THINK_S_MIN, THINK_S_MAX),
        )


# One attempt of an operation at one node: its error, or None if it succeeded there.
Attempt = tuple[Address, "P2pfsError | None"]


def _sent_nothing(error: P2pfsError | None) -> bool:
    """The attempt never reached a coordinator: no connection, or no handshake."""
    return isinstance(error, NodeUnreachable) or isinstance(
        error.__context__ if error is not None else None, (net.ConnectError, net.HandshakeError))


def _finished(error: P2pfsError | None) -> bool:
    """The attempt's coordinator is done with it: it succeeded, or answered with an error.

    The client library chains the network error it translated as ``__context__``:
    a ``RemoteError`` means the coordinator answered.
    """
    return error is None or _sent_nothing(error) or isinstance(error.__context__, net.RemoteError)


def classify(op: Op, error: P2pfsError, attempts: list[Attempt]) -> None:
    """Set a failed op's outcome from the error the client raised and every attempt it made.

    The op certainly had no effect (``fail``) if no attempt reached a coordinator;
    ``answered`` holds if no coordinator that was reached may still be working on it.
    """
    last = attempts[-1][1] if attempts else error
    op.error = f"{exit_code_for(error).name}: {error}"  # as the CLI would report it
    op.answered = all(_finished(e) for _, e in attempts)
    earlier_sent_nothing = all(_sent_nothing(e) for _, e in attempts[:-1])
    answered_not_found = isinstance(last, NotFound) and isinstance(last.__context__, net.RemoteError)
    if attempts and all(_sent_nothing(e) for _, e in attempts):
        op.outcome = FAIL
    elif op.kind == GET and answered_not_found:
        op.outcome, op.value, op.error = OK, ABSENT, ""
    elif op.kind == DELETE and answered_not_found and earlier_sent_nothing:
        op.outcome = FAIL  # rm found no file and wrote nothing
    elif op.kind == GET:
        op.outcome = FAIL  # a failed read changes nothing
    else:
        op.outcome = INFO


class Workload:
    """Runs the workers' plans against a cluster until told to stop; records every op."""

    def __init__(self, *, cluster: Cluster, seed: int, workers: int, names: list[str], op_timeout_s: float,
                 clock: Callable[[], float], record: Callable[[Op], None]) -> None:
        self._cluster = cluster
        self._seed = seed
        self._workers = workers
        self._names = names
        self._op_timeout_s = op_timeout_s
        self._clock = clock
        self._record = record

    async def run(self, stop: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            for worker in range(self._workers):
                nursery.start_soon(self._worker, worker, stop)

    async def _worker(self, worker: int, stop: trio.Event) -> None:
        for planned in plan(self._seed, worker, self._names, len(self._cluster.nodes)):
            with trio.move_on_after(planned.think_s):
                await stop.wait()
            if stop.is_set():
                return
            self._record(await self.execute(worker, planned))
        raise AssertionError(f"worker {worker} ran out of planned operations")

    async def execute(self, worker: int, planned: Planned) -> Op:
        nodes = self._cluster.nodes
        order = [nodes[(planned.node_index + i) % len(nodes)] for i in range(len(nodes))]
        name_of = {node.address: node.name for node in order}
        attempts: list[Attempt] = []
        client = ClientCluster(self._cluster.client_identity, [node.address for node in order],
                               on_attempt=lambda address, error: attempts.append((address, error)))
        op = Op(op_id=planned.op_id, worker=worker, kind=planned.kind, name=planned.name, node=order[0].name,
                invoke_s=self._clock(), size_bytes=planned.size_bytes)
        data = content(self._seed, op.op_id, planned.size_bytes) if op.kind == PUT else b""
        if op.kind == PUT:
            op.value = hashlib.sha256(data).hexdigest()
        received = io.BytesIO()
        try:
            with trio.move_on_after(self._op_timeout_s) as scope:
                if op.kind == PUT:
                    await client.put(io.BytesIO(data), op.name, len(data))
                elif op.kind == GET:
                    await client.get(op.name, received)
                else:
                    await client.rm(op.name)
            if scope.cancelled_caught:
                op.outcome, op.error = (FAIL if op.kind == GET else INFO), "TIMEOUT: no answer in time"
            else:
                op.outcome, op.answered = OK, all(_finished(e) for _, e in attempts)
                if op.kind == GET:
                    op.value = hashlib.sha256(received.getvalue()).hexdigest()
        except (P2pfsError, BaseExceptionGroup) as exc:
            error = user_error_in(exc)
            if error is None:
                raise
            classify(op, error, attempts)
        if attempts:
            op.node = name_of[attempts[-1][0]]  # the node that served it, or the last one tried
        op.attempts = max(1, len(attempts))
        op.complete_s = self._clock()
        return op
