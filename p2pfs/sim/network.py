"""A simulated network for many trio services in one process, seeded and reproducible.

``SimNetwork`` carries one-way messages between addresses. Each endpoint gets
a ``SimTransport`` (``async send(to, msg)``, the shape of
``membership.GossipTransport``) and registers a ``deliver(sender, msg)``
callback. The network can drop (probability), delay (uniform range, which
also reorders), duplicate, further reorder (an extra delay for some
messages), partition (groups of addresses that cannot reach each other) and
heal, and crash or pause endpoints. Every random choice comes from one
``random.Random``; with ``run_simulation`` (which also makes trio's scheduling
a function of the seed and runs on ``MockClock(autojump_threshold=0)``), a
seed replays a run.

Messages are encoded and decoded with the wire codec by default, so a
simulation also checks that every message survives the codec, and the
``NetworkStats`` count real frame sizes.

Nothing here knows about membership: the data layer can attach its own
services to the same network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import os
import random
from typing import Any, Awaitable, Callable, Iterable, Iterator

import trio
import trio.testing

from p2pfs import wire
from p2pfs.address import Address


# Messages in flight at once; beyond this a send is dropped (a congested
# network). High enough that no test near its limits meets it.
IN_FLIGHT_MESSAGES_MAX = 1_000_000
# Environment variable that overrides a simulation test's seed, to replay a failure.
SEED_ENV = "P2PFS_SIM_SEED"

DeliverFn = Callable[[Address, wire.Message], None]


@dataclasses.dataclass(frozen=True, slots=True)
class LinkFaults:
    """How every link misbehaves. Probabilities in [0, 1], delays in seconds."""

    drop_probability: float = 0.0
    # One-way delay, uniform in [min, max]. Keep min above 0: a reply then
    # always lands at a later simulated instant than its cause.
    delay_s_min: float = 0.0005
    delay_s_max: float = 0.002
    duplicate_probability: float = 0.0
    # With this probability a message is held back a further uniform
    # [0, reorder_delay_s_max], so later messages overtake it.
    reorder_probability: float = 0.0
    reorder_delay_s_max: float = 0.05

    def __post_init__(self) -> None:
        for p in (self.drop_probability, self.duplicate_probability, self.reorder_probability):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"probability {p} out of [0, 1]")
        if not 0.0 <= self.delay_s_min <= self.delay_s_max or self.reorder_delay_s_max < 0:
            raise ValueError("need 0 <= delay_s_min <= delay_s_max and reorder_delay_s_max >= 0")


@dataclasses.dataclass(slots=True)
class NetworkStats:
    """Counters since the network was made (or ``reset_stats``)."""

    messages_sent: int = 0
    bytes_sent: int = 0          # encoded frames (header + payload), when encoding is on
    messages_delivered: int = 0
    messages_dropped: int = 0    # by loss, partition, crash, pause, no such endpoint, or congestion
    by_type: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # name -> [count, bytes]


class SimTransport:
    """One endpoint's way out: ``send`` never blocks and never raises."""

    def __init__(self, network: SimNetwork, address: Address) -> None:
        self.network = network
        self.address = address

    async def send(self, to: Address, msg: wire.Message, to_id: str | None = None) -> None:
        # Addresses are never shared in the simulation: the address names the node.
        self.network.send(self.address, to, msg)


class SimNetwork:
    def __init__(self, rng: random.Random, faults: LinkFaults = LinkFaults(), *, encode: bool = True) -> None:
        self._rng = rng
        self.faults = faults
        self.encode = encode  # may be switched during a run, e.g. on only for a measured phase
        self._endpoints: dict[Address, DeliverFn] = {}
        self._heap: list[tuple[float, int, Address, Address, Any]] = []
        self._counter = itertools.count()
        self._crashed: set[Address] = set()
        self._paused: set[Address] = set()
        self._group_of: dict[Address, int] = {}
        self._wake_scope: trio.CancelScope | None = None
        self.stats = NetworkStats()

    # -- endpoints and faults ------------------------------------------

    def attach(self, address: Address, deliver: DeliverFn) -> SimTransport:
        """Register ``deliver(sender, msg)`` for ``address`` (replacing any earlier one) and
        clear a crash or pause of that address: a restarted process."""
        self._endpoints[address] = deliver
        self._crashed.discard(address)
        self._paused.discard(address)
        return SimTransport(self, address)

    def set_faults(self, faults: LinkFaults) -> None:
        self.faults = faults

    def partition(self, *groups: Iterable[Address]) -> None:
        """Split the network: addresses in different groups cannot reach each other.

        Addresses in no group can reach everyone. Messages already in flight
        across the cut are dropped on arrival.
        """
        self._group_of = {}
        for i, group in enumerate(groups):
            for address in group:
                self._group_of[address] = i

    def heal(self) -> None:
        self._group_of = {}

    def crash(self, address: Address) -> None:
        """The endpoint is gone: everything to or from it is dropped from now on."""
        self._crashed.add(address)

    def pause(self, address: Address) -> None:
        """The endpoint stops talking (like SIGSTOP behind a lossy link): it receives
        nothing and nothing it sends leaves, until ``resume``. Its own timers
        still run, as the simulation has one clock."""
        self._paused.add(address)

    def resume(self, address: Address) -> None:
        self._paused.discard(address)

    def reset_stats(self) -> None:
        self.stats = NetworkStats()

    def blocked(self, src: Address, dst: Address) -> bool:
        """Whether ``src`` cannot reach ``dst`` now (crash, pause or partition), for
        layers that simulate requests over this network (``p2pfs.sim.data``)."""
        return self._blocked(src, dst)

    def _blocked(self, src: Address, dst: Address) -> bool:
        if src in self._crashed or dst in self._crashed or src in self._paused or dst in self._paused:
            return True
        groups = self._group_of
        if not groups:
            return False
        src_group = groups.get(src)
        dst_group = groups.get(dst)
        return src_group is not None and dst_group is not None and src_group != dst_group

    # -- sending and delivery ------------------------------------------

    def send(self, src: Address, dst: Address, msg: wire.Message, now_s: float | None = None) -> None:
        """Put ``msg`` in flight. ``now_s`` is the sending time for a caller that keeps its own
        clock (``sim.membership.CoreCluster``); by default trio's."""
        stats = self.stats
        stats.messages_sent += 1
        if self.encode:
            payload = wire.encode_message(msg)
            size_bytes = wire.FRAME_HEADER_BYTES + len(payload)
            item: Any = payload
        else:
            size_bytes = 0
            item = msg
        stats.bytes_sent += size_bytes
        counts = stats.by_type.setdefault(type(msg).__name__, [0, 0])
        counts[0] += 1
        counts[1] += size_bytes
        faults = self.faults
        rng = self._rng
        if self._blocked(src, dst) or (faults.drop_probability and rng.random() < faults.drop_probability):
            stats.messages_dropped += 1
            return
        copies = 2 if faults.duplicate_probability and rng.random() < faults.duplicate_probability else 1
        if now_s is None:
            now_s = trio.current_time()
        for _ in range(copies):
            if len(self._heap) >= IN_FLIGHT_MESSAGES_MAX:
                stats.messages_dropped += 1
                return
            delay_s = rng.uniform(faults.delay_s_min, faults.delay_s_max)
            if faults.reorder_probability and rng.random() < faults.reorder_probability:
                delay_s += rng.uniform(0.0, faults.reorder_delay_s_max)
            at_s = now_s + delay_s
            heapq.heappush(self._heap, (at_s, next(self._counter), src, dst, (msg.TYPE, item)))
            scope = self._wake_scope
            if scope is not None and at_s < scope.deadline:
                scope.deadline = at_s

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Deliver messages when they are due. Runs until cancelled."""
        task_status.started()
        heap = self._heap
        while True:  # runs until the simulation is cancelled
            with trio.CancelScope(deadline=heap[0][0] if heap else float("inf")) as scope:
                self._wake_scope = scope
                await trio.sleep_forever()
            self._wake_scope = None
            self.deliver_due(trio.current_time())

    def next_due_s(self) -> float:
        """When the next message in flight arrives (inf if none)."""
        return self._heap[0][0] if self._heap else float("inf")

    def deliver_due(self, now_s: float) -> None:
        """Deliver every message due at ``now_s``; ``run`` calls it, or a caller with its own clock."""
        heap = self._heap
        while heap and heap[0][0] <= now_s:
            _, _, src, dst, (msg_type, item) = heapq.heappop(heap)
            deliver = self._endpoints.get(dst)
            if deliver is None or self._blocked(src, dst):
                self.stats.messages_dropped += 1
                continue
            # Decided per message: encoding may have been switched on or off while it flew.
            msg = wire.decode_message(msg_type, item) if isinstance(item, bytes) else item
            self.stats.messages_delivered += 1
            deliver(src, msg)


# -- reproducible runs -------------------------------------------------


def sim_seed(default: int) -> int:
    """The seed for a simulation: ``$P2PFS_SIM_SEED`` if set (to replay a failure), else ``default``."""
    text = os.environ.get(SEED_ENV, "").strip()
    return int(text) if text else default


@contextlib.contextmanager
def _deterministic_trio_scheduler(seed: int) -> Iterator[None]:
    """Make the order in which trio runs tasks that wake together a function of ``seed``.

    trio runs each batch of runnable tasks in an order drawn from a private
    module-level ``random.Random`` (``trio._core._run._r``), to shake out ordering
    assumptions, and a batch is assembled in the order deadlines expire, which for
    equal deadlines (three replica requests started together, timing out
    together) is the order of the cancel scopes' memory addresses. trio has no
    public way to fix either: its only supported route is the Hypothesis plugin,
    which turns on ``_ALLOW_DETERMINISTIC_SCHEDULING`` (sort each batch by task
    creation order, then shuffle with ``_r``) and registers ``_r`` with
    ``hypothesis.register_random``, so it is seeded only inside a ``@given``
    example. A MockClock and a seeded network fix *when* tasks wake, not this
    order, so we do what that plugin does, with our seed, for the length of the
    run, and fail loudly if a trio release moves these names: a simulation that
    cannot replay its seed would be worse than none.
    """
    run_module = getattr(getattr(trio, "_core", None), "_run", None)
    scheduler_rng = getattr(run_module, "_r", None)
    if not isinstance(scheduler_rng, random.Random) or not hasattr(run_module, "_ALLOW_DETERMINISTIC_SCHEDULING"):
        raise RuntimeError(
            f"trio {trio.__version__} schedules differently: simulations could not replay a seed "
            "(see p2pfs.sim.network._deterministic_trio_scheduler)"
        )
    saved_flag = run_module._ALLOW_DETERMINISTIC_SCHEDULING
    saved_state = scheduler_rng.getstate()
    run_module._ALLOW_DETERMINISTIC_SCHEDULING = True
    scheduler_rng.seed(seed)
    try:
        yield
    finally:
        run_module._ALLOW_DETERMINISTIC_SCHEDULING = saved_flag
        scheduler_rng.setstate(saved_state)


def run_simulation(async_fn: Callable[..., Awaitable[Any]], *args: Any, seed: int) -> Any:
    """``trio.run(async_fn, *args)`` on ``MockClock(autojump_threshold=0)``, its scheduling seeded.

    Simulated time starts at 0 and jumps to the next deadline whenever every
    task is blocked, so minutes of protocol time take as long as the
    computation in them. Call from a synchronous test.
    """
    with _deterministic_trio_scheduler(seed):
        return trio.run(async_fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))
