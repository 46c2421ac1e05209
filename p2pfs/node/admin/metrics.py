"""Prometheus metrics of one node, named by Prometheus' conventions (units in names,
``_total`` counters, histograms for latencies).

Most values are read from the node's own objects when Prometheus scrapes
(``NodeCollector``): the member table, the chunk store's used bytes, the hint
store, the ring, the repair counters, the certificate. The other rooms keep no
metrics code and pay nothing between scrapes. Two sources are events, which a
scrape cannot see after the fact, and are counted here as they happen:

- requests, from the daemon's ``handle_request`` hook (``RequestMetrics``):
  count by operation and outcome, latency histogram, response body bytes;
- membership transitions (``MembershipEvents``), from the member table's change
  notifications: suspicions, deaths, refutations, leaves and joins, with the
  last ``EVENTS_KEPT`` kept for the status page;
- gossip messages and bytes (``GossipMetrics``), from the daemon's gossip
  transport and one-way message hooks;
- probe round trips (``ProbeTimes``), from the same hooks: a Ping's sequence
  number as it goes out, its Ack as it comes in. The membership core is not
  touched: what it sends and receives is enough.
"""

from __future__ import annotations

import functools

import collections
import dataclasses
import time
from typing import TYPE_CHECKING, AsyncIterable, AsyncIterator, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from p2pfs import __version__
from p2pfs.membership import MemberState
from p2pfs.membership.messages import Ack, Ping

if TYPE_CHECKING:
    from p2pfs.node.daemon import Node

# Recent membership events kept for the status page: enough to cover a rolling
# restart of a 5-node cluster (each node: suspect, dead, alive) with room to spare.
EVENTS_KEPT = 50
# Probe round-trip buckets, in seconds: a LAN round trip over pooled TLS (~0.5 ms) up to
# the probe timeout (500 ms by default) and past it, for acks that came late or via a relay.
PROBE_RTT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Pings awaiting their ack, timed by sequence number. A node sends one probe per probe
# interval plus the pings it relays (at most RELAY_PROBES_MAX, 256); a ping never acked
# (its target is down) is dropped oldest first beyond this.
PINGS_TIMED_MAX = 1024
# Request latency buckets, in seconds: from a local metadata answer (~1 ms) to a
# large streamed put or get of many chunks (tens of seconds).
REQUEST_DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# Requests that are another form of the same operation for whoever reads the metrics:
# a resumable get or put (p2pfs.replication.resumable) is still a get or a put.
OPERATION_ALIASES = {"GetFileFrom": "get_file", "PutFileKnown": "put_file"}


# Message types whose label value is kept: each request type once (there are a few dozen).
OPERATION_NAMES_CACHED_MAX = 256


@functools.lru_cache(maxsize=OPERATION_NAMES_CACHED_MAX)
def operation_name(msg_type: type) -> str:
    """``PutFile`` -> ``put_file``: the request message's type as a label value (worked out
    once per type: every request a node serves asks for it, up to three times)."""
    name = msg_type.__name__
    if name in OPERATION_ALIASES:
        return OPERATION_ALIASES[name]
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


class RequestMetrics:
    """Requests this node served, by operation and outcome, counted by the daemon's hook."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "p2pfs_requests", "Requests served, by operation and outcome (ok or the error code).",
            ["operation", "outcome"], registry=registry,
        )
        self.duration = Histogram(
            "p2pfs_request_duration_seconds",
            "Time from a request's arrival to its answer (a streamed body's end for gets).",
            ["operation"], buckets=REQUEST_DURATION_BUCKETS_S, registry=registry,
        )
        self.bytes_out = Counter(
            "p2pfs_response_body_bytes", "Bytes of streamed response bodies sent, by operation.",
            ["operation"], registry=registry,
        )
        self.bytes_in = Counter(
            "p2pfs_request_body_bytes", "Bytes of streamed request bodies received, by operation.",
            ["operation"], registry=registry,
        )
        # (operation, outcome) -> its request counter and duration histogram: as many as the
        # label sets the metrics export anyway (operations x outcomes, both fixed lists).
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def observe(self, operation: str, outcome: str, duration_s: float) -> None:
        # The labelled children are kept by the metric itself; holding them here skips the
        # label checks and the metric's lock for every request (one per operation and outcome).
        children = self._children.get((operation, outcome))
        if children is None:
            children = self._children[(operation, outcome)] = (self.requests.labels(operation, outcome),
                                                               self.duration.labels(operation))
        counter, histogram = children
        counter.inc()
        histogram.observe(duration_s)

    def add_bytes_out(self, operation: str, size_bytes: int) -> None:
        self.bytes_out.labels(operation).inc(size_bytes)

    def add_bytes_in(self, operation: str, size_bytes: int) -> None:
        self.bytes_in.labels(operation).inc(size_bytes)


class CountedPieces:
    """A request body's pieces, each counted as the handler reads it (an iterator class, not
    an async generator: a handler that stops early leaves nothing to finalize)."""

    def __init__(self, pieces: AsyncIterable[bytes], count: Callable[[int], None]) -> None:
        self._pieces = pieces
        self._count = count
        self._iterator: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> CountedPieces:
        self._iterator = aiter(self._pieces)
        return self

    async def __anext__(self) -> bytes:
        assert self._iterator is not None
        piece = await anext(self._iterator)
        self._count(len(piece))
        return piece


class GossipMetrics:
    """Membership messages sent and received, by direction, from the daemon's gossip hooks.

    Bytes are the encoded message (what the frame carries), without the frame header and
    TLS record overhead, which add a roughly constant few dozen bytes per message.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter("p2pfs_gossip_messages", "Membership messages, by direction (sent, received).",
                                ["direction"], registry=registry)
        self.payload_bytes = Counter("p2pfs_gossip_payload_bytes",
                                     "Encoded bytes of membership messages, by direction (sent, received).",
                                     ["direction"], registry=registry)

    def count(self, direction: str, size_bytes: int) -> None:
        self.messages.labels(direction).inc()
        self.payload_bytes.labels(direction).inc(size_bytes)


class ProbeTimes:
    """Round trip of each probe: from a Ping going out to the first Ack with its sequence
    number (direct, or forwarded by a relay when the direct one was lost)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rtt = Histogram("p2pfs_probe_rtt_seconds", "Time from a membership Ping sent to its Ack.",
                             buckets=PROBE_RTT_BUCKETS_S, registry=registry)
        self._sent_s: dict[int, float] = {}  # by sequence number, oldest first

    def sending(self, msg, now_s: float) -> None:
        if not isinstance(msg, Ping):
            return
        if len(self._sent_s) >= PINGS_TIMED_MAX:
            del self._sent_s[next(iter(self._sent_s))]
        self._sent_s[msg.seq] = now_s

    def received(self, msg, now_s: float) -> None:
        if isinstance(msg, Ack):
            sent_s = self._sent_s.pop(msg.seq, None)
            if sent_s is not None:
                self.rtt.observe(now_s - sent_s)


@dataclasses.dataclass(frozen=True, slots=True)
class MemberEvent:
    at_ms: int  # wall clock, for people
    node_id: str
    address: str
    before: str  # "" for a member seen for the first time
    after: str


class MembershipEvents:
    """Counts state transitions of the member table between two notifications.

    A transition seen here is what this node concluded: SUSPECT is a suspicion,
    DEAD a death, SUSPECT -> ALIVE a refutation (the suspect raised its
    incarnation), LEFT a graceful leave. Transitions that happen and undo
    themselves within one notification are not seen; the core does not report
    them either.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.transitions = Counter(
            "p2pfs_membership_transitions",
            "Member state changes this node saw, by the state entered (suspect: a suspicion, dead: a "
            "death, alive: a join or a refutation, left: a graceful leave).",
            ["state"], registry=registry,
        )
        self.refutations = Counter(
            "p2pfs_membership_refutations", "Suspected members seen alive again (they refuted).",
            registry=registry,
        )
        self.recent: collections.deque[MemberEvent] = collections.deque(maxlen=EVENTS_KEPT)
        self._states: dict[str, MemberState] = {}

    def update(self, members, now_ms: int) -> None:
        for member in members:
            before = self._states.get(member.node_id)
            if before == member.state:
                continue
            self._states[member.node_id] = member.state
            after = member.state.name.lower()
            self.transitions.labels(after).inc()
            if before is MemberState.SUSPECT and member.state is MemberState.ALIVE:
                self.refutations.inc()
            self.recent.append(MemberEvent(now_ms, member.node_id, str(member.address),
                                           before.name.lower() if before is not None else "", after))


class NodeCollector:
    """Reads the node's state at scrape time; nothing is stored between scrapes."""

    def __init__(self, node: Node, readiness) -> None:
        self._node = node
        self._readiness = readiness

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: families appear as they are read

    def collect(self) -> Iterator[Metric]:
        node = self._node
        members = node.membership.members()
        by_state = GaugeMetricFamily("p2pfs_members", "Members this node sees, by state.", labels=["state"])
        counts = collections.Counter(member.state for member in members)
        for state in MemberState:
            by_state.add_metric([state.name.lower()], counts[state])
        yield by_state

        yield _gauge("p2pfs_up_seconds", "Seconds since the daemon started.",
                     time.monotonic() - node.started_at_s)
        info = GaugeMetricFamily("p2pfs_build_info", "Version of this daemon.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        ready = self._readiness()
        yield _gauge("p2pfs_ready", "1 when /ready answers 200 (joined, enough members for rf, disk "
                     "writable).", 1 if ready.ok else 0)
        yield _gauge("p2pfs_certificate_expiry_seconds", "Seconds until this node's certificate expires.",
                     certificate_expiry_s(node.identity.cert))
        yield _gauge("p2pfs_ca_certificate_expiry_seconds", "Seconds until the cluster CA's certificate expires.",
                     certificate_expiry_s(node.identity.ca_cert))
        yield _gauge("p2pfs_connections_open", "Mutual-TLS connections open to peers and clients.",
                     len(node.endpoint.connections()))
        yield _counter("p2pfs_gossip_sends_dropped", "Gossip sends dropped because the send queue was full.",
                       node.membership.sends_dropped)
        yield _counter("p2pfs_gossip_sends_timed_out", "Gossip sends abandoned at their deadline.",
                       node.membership.sends_timed_out)
        failures = CounterMetricFamily(
            "p2pfs_handshake_failures", "Connection handshakes that failed, by reason (auth: a certificate or "
            "identity refused; protocol: an inbound peer not speaking TLS or the hello; timeout: an inbound "
            "peer silent past handshake_timeout_s).", labels=["reason"])
        for reason, count in sorted(node.endpoint.handshake_failures.items()):
            failures.add_metric([reason], count)
        yield failures

        stats = node.data.stats()
        if stats is not None:
            yield _gauge("p2pfs_store_used_bytes", "Bytes of chunks this node holds.", stats.used_bytes)
            yield _gauge("p2pfs_store_capacity_bytes", "Bytes this node offers for chunks.", stats.capacity_bytes)
            yield _gauge("p2pfs_hints_pending", "Hints held for members that were down when written to.",
                         stats.hints_pending)
            yield _gauge("p2pfs_corrupt_chunks_pending", "Chunks that failed verification and await repair.",
                         stats.corrupt_chunks_pending)
            yield _counter("p2pfs_repair_sent_bytes", "Chunk bytes this node pushed to peers in anti-entropy "
                           "and hand-off.", stats.repair_sent_bytes)
            yield _counter("p2pfs_repair_received_bytes", "Chunk bytes this node pulled from peers in "
                           "anti-entropy.", stats.repair_received_bytes)
            yield from _job_metrics(stats)
            yield _counter("p2pfs_names_rows_quarantined", "Name-index rows found undecodable and removed "
                           "(refilled from the replicas).", stats.names_rows_quarantined)
            yield _counter("p2pfs_names_index_rebuilds", "Times the name-index file was found damaged, "
                           "quarantined and rebuilt.", stats.names_index_rebuilds)
        yield _gauge("p2pfs_client_limit_bytes_per_second", "Cap on clients' file bodies through this node "
                     "([replication] client_bytes_per_s; 0: none).", node.client_limit.rate_bytes_per_s)
        yield _counter("p2pfs_client_throttled_seconds", "Seconds client transfers were held back by the cap "
                       "(summed over transfers).", node.client_limit.waited_s)
        memory = node.endpoint.limits.memory
        yield _gauge("p2pfs_net_memory_budget_bytes", "Bytes of peers' input this node may buffer "
                     "([net] memory_budget_bytes).", memory.size_bytes)
        yield _gauge("p2pfs_net_memory_buffered_bytes", "Bytes of peers' input buffered now, against the budget.",
                     memory.used_bytes)
        if node.data.repair_pacer is not None:
            yield _gauge("p2pfs_repair_limit_bytes_per_second", "Cap on repair traffic "
                         "([replication] repair_bytes_per_s).", node.data.repair_pacer.rate_bytes_per_s)
        share = ring_share(node)
        yield _gauge("p2pfs_ring_ownership_ratio", "Fraction of the key space this node holds a replica of "
                     "(rf copies: shares add up to rf).", share.get(node.node_id, 0.0))


@dataclasses.dataclass(frozen=True, slots=True)
class Readiness:
    ok: bool
    reasons: tuple[str, ...]  # why not, for people


def ring_share(node: Node) -> dict[str, float]:
    """Each ring member's share of the key space, times rf (what it holds a replica of)."""
    rf = node.cfg.replication.rf
    return node.data.ring().ownership_fraction(rf)


def certificate_expiry_s(cert) -> float:
    return cert.not_valid_after_utc.timestamp() - time.time()


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _job_metrics(stats) -> Iterator[Metric]:
    """The background jobs' totals and queues (``DataStats``)."""
    if stats.chunks_held is not None:
        yield _gauge("p2pfs_store_chunks", "Chunks this node holds, as counted by the last anti-entropy round.",
                     stats.chunks_held)
    if stats.under_replicated_keys is not None:
        yield _gauge("p2pfs_antientropy_under_replicated_keys",
                     "Chunks and names this node shares that the last anti-entropy round found short of a live "
                     "copy (a replica dead, unreachable or lacking it). Take the maximum over nodes.",
                     stats.under_replicated_keys)
    yield _gauge("p2pfs_repair_queue_chunks", "Chunk transfers anti-entropy decided on and has not done yet.",
                 stats.repair_queue_chunks)
    yield _gauge("p2pfs_read_repairs_running", "Read repairs (a stale or missing replica found by a read) "
                 "in flight.", stats.read_repairs_running)
    yield _counter("p2pfs_repair_sent_chunks", "Chunks this node pushed to replicas lacking them (anti-entropy "
                   "and hand-off).", stats.repair_sent_chunks)
    yield _counter("p2pfs_repair_received_chunks", "Chunks this node pulled from replicas in anti-entropy.",
                   stats.repair_received_chunks)
    yield _counter("p2pfs_hints_delivered", "Hinted chunks and names handed back to their owners.",
                   stats.hints_delivered)
    yield _counter("p2pfs_gc_removed_chunks", "Chunks garbage collection removed (no live file refers to "
                   "them).", stats.gc_removed_chunks)
    yield _counter("p2pfs_gc_purged_tombstones", "Delete tombstones purged past tombstone_gc_grace_s.",
                   stats.gc_purged_tombstones)
    yield _gauge("p2pfs_scrub_pass_chunks", "Chunks in the scrub's current pass over the store.",
                 stats.scrub_pass_chunks)
    yield _gauge("p2pfs_scrub_pass_remaining_chunks", "Chunks of the current scrub pass not verified yet.",
                 stats.scrub_pass_remaining_chunks)
    yield _counter("p2pfs_scrub_verified_chunks", "Chunks the scrub re-read and verified.",
                   stats.scrub_verified_chunks)
    yield _counter("p2pfs_scrub_corrupt_chunks", "Chunks the scrub found corrupt (quarantined, then repaired).",
                   stats.scrub_corrupt_chunks)


def new_registry(node: Node, readiness) -> tuple[CollectorRegistry, RequestMetrics, MembershipEvents,
                                                 GossipMetrics, ProbeTimes]:
    """One registry per node: its collectors, its event counters, and the process's CPU and memory."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, readiness))
    ProcessCollector(registry=registry)
    return (registry, RequestMetrics(registry), MembershipEvents(registry), GossipMetrics(registry),
            ProbeTimes(registry))
