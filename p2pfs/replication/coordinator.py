"""The coordinator: any node writes and reads files on behalf of a client.

A put streams the client's bytes through the coordinator: it cuts them into
chunks, hashes each (BLAKE3, in a worker thread), and writes each chunk to its
``rf`` preference nodes in parallel, at most ``put_window_chunks`` chunks in
flight. A chunk counts as written at ``w`` acknowledgements; a replica that is
down, suspected, or fails is replaced by the next fallback node, which keeps a
hint and hands the chunk over when the owner is back. The name entry (with the
manifest inline) is written last with the same quorum, so a client hears
"stored" only when everything is durable at quorum, and a failed put leaves the
name as it was.

A file shorter than a chunk and at most ``inline_file_bytes_max`` is stored
inline: its bytes go in the manifest (``storage.manifest``), no chunk is written,
and the name entry's write quorum is the put's only write. Its get sends the bytes
from the name read at quorum. The entry is as durable as a chunk was (each
replica's name index commits with a full fsync before it answers).

A get reads the name from ``r`` replicas, takes the newest (last writer wins on
HLC and node id) and repairs replicas that answered with something older. It asks
``r`` of them first (this node first when it is one) and the others only when one
fails, the answers disagree or say "absent", or ``NAME_READ_HEDGE_S`` passes
(``quorum.ReadQuorum``): a get whose replicas agree costs ``r`` name reads, not ``rf``. It
then fetches chunks ahead of the client, each from the best replica first,
verifying every chunk against its id and moving on to the next replica on error,
timeout or corruption.

The rules are in ``quorum`` and ``placement`` (pure); this module carries them
out against ``Replica`` objects, never asking which of them is this node.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import mmap
from typing import AsyncIterable, Awaitable, Callable, Sequence

import trio

from p2pfs import errors, net, wire
from p2pfs.clock import Clock
from p2pfs.ids import short_id
from p2pfs.membership import MemberState
from p2pfs.net.config import STREAM_DATA_BYTES_MAX
from p2pfs.replication import messages as dm
from p2pfs.replication.quorum_chain import (
    BadChainReply, ChainRefused, ChainResult, chain_capable, check_chain, head_failed, hop_times, plan_chunk_write,
    read_reply, settle,
)
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.errors import ReplicaDown, ReplicaError, ReplicaLacks
from p2pfs.replication.local import LocalStore, Offload
from p2pfs.replication.placement import Target, name_key, read_order, write_plan
from p2pfs.replication.quorum import (
    ChunkRead, QuorumError, ReadQuorum, Spare, WriteQuorum, name_read_order, quorum_size,
)
from p2pfs.replication.replicas import Replica, Replicas
from p2pfs.replication.view import RingView
from p2pfs.ring import Ring
from p2pfs.storage import (
    ChunkCorrupt,
    ChunkMissing,
    ChunkRef,
    ChunkStore,
    ClockDriftError,
    FileHasher,
    HybridClock,
    Manifest,
    ManifestBuilder,
    NameEntry,
    chunk_id_of,
)
from p2pfs.storage.chunkstore import DIRECT_READ_BUFFER_BYTES

log = logging.getLogger(__name__)

# Writes of one put's name entry, the first included: a replica that holds a newer version
# refuses it, and the put writes again past that version. Two puts to one name at the same
# moment can each refuse the other's; this bounds that, and the last write stands as a put
# that read the name and still lost to a concurrent one would.
VERSION_WRITES_MAX = 3

# Background repairs (read repair of names and chunks) running at once; more are dropped
# (anti-entropy catches what is dropped), so a burst of reads cannot pile up tasks.
REPAIRS_CONCURRENT_MAX = 16

# How long a name read waits for its first ``r`` replicas before it asks the others as well
# (a hedged request). Two loopback or LAN round trips of a name read take a few milliseconds on
# an idle node; 50 ms is the small-file target's p99, so a replica slower than that is hedged
# rather than waited for, while a read whose replicas answer in time never costs the extra
# request. Raising it saves requests on a loaded cluster and lengthens the tail a slow replica
# makes; a read whose first replicas fail asks the others at once, without waiting for it.
NAME_READ_HEDGE_S = 0.05

# Chunks a get reads from this node's own disk in one worker-thread trip: a frame's worth of
# 1 MiB chunks (STREAM_DATA_BYTES_MAX), so the chunks of one trip leave in one frame. Each
# trip is a futex wake-up and a trio task switch each way (on this project's 2-core machine
# about as much CPU as reading and hashing a chunk from the page cache, docs/BENCHMARKS.md);
# four chunks share them. The window (``get_window_chunks``, 8) holds two trips, so one is
# read while the other is sent; a larger trip would leave the disk idle while it is sent.
LOCAL_READ_CHUNKS_MAX = 4


class SizeMismatch(errors.BadInput):
    """The client's stream did not have the size it announced."""


class Repairs:
    """Fire-and-forget repairs, at most ``limit`` at once, counted when spawned (a hard bound)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def spawn(self, fn: Callable[..., Awaitable], *args) -> bool:
        """Start ``fn(*args)`` if there is room; False if dropped (anti-entropy covers it)."""
        if self._nursery is None or self.running >= self.limit:
            return False
        self.running += 1

        async def repair() -> None:
            try:
                await fn(*args)
            except ReplicaError as exc:
                log.debug("repair failed: %s", exc)
            finally:
                self.running -= 1

        self._nursery.start_soon(repair)
        return True


@dataclasses.dataclass(slots=True)
class _Slot:
    """One chunk being fetched ahead of the client."""

    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    data: bytes | memoryview | None = None
    error: str | None = None
    # The buffer a chunk read here was read into (``ChunkStore.get_direct``), reused once it is sent.
    buffer: mmap.mmap | None = None


WriteFn = Callable[[Replica, Target], Awaitable[object]]


class ChunkWrites:
    """The chunks of one put being written at quorum, at most ``put_window_chunks`` at a time.

    The first chunk short of its quorum is kept in ``failures`` and ends the put (by
    cancelling its nursery), so the caller raises it past the nursery, not a group.
    """

    def __init__(self, coordinator: Coordinator, nursery: trio.Nursery) -> None:
        self._coordinator = coordinator
        self._nursery = nursery
        self._window = trio.Semaphore(coordinator.config.put_window_chunks)
        self.failures: list[QuorumError] = []

    async def start(self, index: int, chunk_id: bytes, data: bytes) -> None:
        """Start writing chunk ``index`` once the window has room (the chunk's id is checked)."""
        await self._window.acquire()
        self._nursery.start_soon(self._write, index, chunk_id, data)

    async def _write(self, index: int, chunk_id: bytes, data: bytes) -> None:
        try:
            await self._coordinator.write_chunk(chunk_id, data, f"chunk {index}")
        except QuorumError as exc:
            self.failures.append(exc)
            self._nursery.cancel_scope.cancel()
        finally:
            self._window.release()


def _plan(ring: Ring, key: bytes, rf: int, unavailable: set[str]) -> tuple[list[str], list[Target], Spare]:
    """``key``'s preferred replicas and ``placement.write_plan``'s targets and stand-ins, the
    stand-ins found only when a target fails if every preferred replica is available.

    ``write_plan`` works out the preference list twice more (once for the fallbacks): three
    per name read were about 5% of the daemons' event-loop CPU in a small get (docs/BENCHMARKS.md,
    "Small files: a name read's tasks, the stand-ins found when needed, the send lock"). When no
    preferred replica is unavailable its targets are the preferred replicas themselves, and the
    stand-ins matter only to replace one that fails.
    """
    preferred = ring.preference_list(key, rf)
    if unavailable.isdisjoint(preferred):
        return preferred, [Target(node_id) for node_id in preferred], (
            lambda: [node_id for node_id in ring.fallback_list(key, rf) if node_id not in unavailable]
        )
    targets, spare = write_plan(ring, key, rf, unavailable)
    return preferred, targets, spare


class Coordinator:
    def __init__(
        self, *, node_id: str, config: ReplicationConfig, view: RingView, replicas: Replicas,
        local: LocalStore, clock: Clock, offload: Offload,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.view = view
        self.replicas = replicas
        self.local = local
        self.clock = clock
        self._offload = offload
        self.hlc = HybridClock()
        self.repairs = Repairs(REPAIRS_CONCURRENT_MAX)

    def observe(self, entry: NameEntry) -> None:
        """Move the HLC past a version seen from elsewhere (unless it is implausibly far ahead)."""
        try:
            self.hlc.observe(entry.version, self.clock.wall_ms())
        except ClockDriftError as exc:
            log.warning("ignoring a version from the future: %s", exc)

    # -- writes -----------------------------------------------------------------

    def _write_quorum(self, key: bytes, what: str) -> WriteQuorum:
        """The quorum of a write of ``key``: its plan's targets, stand-ins and ``w``.

        A preferred replica that membership only suspects, and that has no stand-in to take its
        place, is written all the same: suspicion is SWIM's "maybe dead", which a loaded node
        earns for a second and refutes (3 of 29 loaded 1 GiB puts saw it, docs/BENCHMARKS.md),
        and on 3 nodes at rf = 3 there is never a stand-in, so a chunk planned while both peers
        were suspected failed at once. Writing it instead costs at most ``replica_timeout_s``
        if the node is really down, then its back-off applies. Any other preferred replica left
        out with no stand-in is named in the quorum's errors with the reason, so a write that
        misses ``w`` says why (it said "no replica could be reached")."""
        ring = self.view.ring()
        unavailable = self.view.unavailable()
        preferred, targets, spare = _plan(ring, key, self.config.rf, unavailable)
        skipped: list[tuple[str, str]] = []
        if len(targets) < self.config.rf and unavailable:
            covered = {t.hint_for or t.node_id for t in targets}
            backing_off = self.view.health.backing_off(self.view.clock.monotonic_s())
            members = self.view.members_by_id()
            for node_id in preferred:
                if node_id not in unavailable or node_id in covered:
                    continue
                if node_id in backing_off:
                    skipped.append((node_id, "skipped: failed a request in the last replica_backoff_s"))
                elif (member := members.get(node_id)) is not None and member.state is MemberState.SUSPECT:
                    targets.append(Target(node_id))
                else:
                    skipped.append((node_id, "skipped: dead or gone in membership"))
        if not targets:  # written nowhere is not written: never acknowledge it
            raise QuorumError(f"{what}: no replica to write to")
        quorum = WriteQuorum(what, targets, spare, quorum_size(self.config.w, len(ring)))
        quorum.errors.extend(f"{short_id(node_id)}: {why}" for node_id, why in skipped)
        return quorum

    async def _attempt(self, quorum: WriteQuorum, write: WriteFn, target: Target | None) -> None:
        """Write directly to ``target``, then to stand-ins in its place while they fail."""
        while target is not None:
            try:
                await write(self.replicas(target.node_id), target)
            except ReplicaError as exc:
                self.view.failed(target.node_id)
                target = quorum.on_failure(target, str(exc)).retry
                continue
            self.view.succeeded(target.node_id)
            quorum.on_answer(target)
            return

    async def replicate(self, key: bytes, what: str, write: WriteFn) -> int:
        """Write to the key's replicas (stand-ins for the unavailable); QuorumError below ``w``."""
        quorum = self._write_quorum(key, what)
        async with trio.open_nursery() as nursery:
            # This node's write goes in the nursery's body once the others are started, rather
            # than in a task of its own: one spawn fewer per write, and the same wait, since the
            # nursery ends only when every attempt has.
            own = None
            for target in quorum.targets:
                if target.node_id == self.node_id:
                    own = target
                else:
                    nursery.start_soon(self._attempt, quorum, write, target)
            if own is not None:
                await self._attempt(quorum, write, own)
        return quorum.check()

    # -- chunk writes, chain or star (quorum_chain.py) ---------------------------------------

    async def write_chunk(self, chunk_id: bytes, data: bytes, what: str) -> int:
        """Write a chunk this node hashed at quorum, down a chain where the replicas know chains
        (``chain.plan_chunk_write``), directly otherwise; QuorumError below ``w``."""

        def store(replica: Replica, target: Target) -> Awaitable[None]:
            return replica.store_chunk(chunk_id, data, target.hint_for, hashed=True)

        quorum = self._write_quorum(chunk_id, what)
        plan = plan_chunk_write(quorum.targets, self.node_id, self._wire_versions(quorum.targets),
                                self.config.chunk_write_shape)
        async with trio.open_nursery() as nursery:
            for target in plan.local + plan.star:
                nursery.start_soon(self._attempt, quorum, store, target)
            if plan.chain:
                nursery.start_soon(self._write_chain, quorum, store, plan.chain, chunk_id, data, nursery)
        return quorum.check()

    def _wire_versions(self, targets: Sequence[Target]) -> dict[str, int]:
        """The advertised protocol_version of each target that is a known member."""
        members = self.view.members_by_id()
        return {t.node_id: members[t.node_id].protocol_version for t in targets if t.node_id in members}

    async def _write_chain(
        self, quorum: WriteQuorum, store: WriteFn, chain: tuple[Target, ...], chunk_id: bytes, data: bytes,
        nursery: trio.Nursery,
    ) -> None:
        """Send the chunk down ``chain``; count what comes back, and write the rest directly: a
        stand-in (with a hint) for each node reported failed, the node itself for each one
        unacknowledged (the star fallback, ``quorum_chain.py``)."""
        head = chain[0]
        rest = tuple(dm.ChainLink(t.node_id, t.hint_for) for t in chain[1:])
        try:
            answered = await self.replicas.remote(head.node_id).store_chunk_chain(
                chunk_id, data, head.hint_for, rest, self.config.replica_timeout_s
            )
            result = read_reply(chain, answered)
        except (ReplicaError, BadChainReply) as exc:
            result = head_failed(chain, str(exc))
        # The head's health is what this node saw of its own peer; the nodes after it are the
        # head's business (it skips those failing as it sees them).
        if result.outcomes[0].stored:
            self.view.succeeded(head.node_id)
        else:
            self.view.failed(head.node_id)
        for target in settle(quorum, result):
            nursery.start_soon(self._attempt, quorum, store, target)

    async def on_store_chunk_chain(self, request: net.IncomingRequest) -> dm.StoreChunkChainReply:
        """A chain that reached this node: verify the chunk, pass it on while storing it here, and
        answer with this node's outcome and those after it, within the time the message gives."""
        msg = request.msg
        times = hop_times(trio.current_time(), msg.timeout_ms, self.config.replica_timeout_s)
        rest = tuple(Target(link.node_id, link.hint_for) for link in msg.rest)
        try:
            check_chain(self.node_id, msg.hint_for, rest, self.config.rf)
        except ChainRefused as exc:
            raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, str(exc)) from None
        if await self._offload(chunk_id_of, msg.data) != msg.chunk_id:
            raise net.RemoteError(wire.ErrorCode.BAD_REQUEST, "the chunk does not match its id")
        own: list[dm.ChainOutcome] = []
        after: list[dm.ChainOutcome] = []

        async def store_here() -> None:
            try:
                await self.replicas.local.store_chunk(msg.chunk_id, msg.data, msg.hint_for, hashed=True)
            except ReplicaError as exc:
                own.append(dm.ChainOutcome(self.node_id, False, _reason(f"{short_id(self.node_id)}: {exc}")))
            else:
                own.append(dm.ChainOutcome(self.node_id, True, ""))

        async def pass_on() -> None:
            result = await self._forward(rest, msg.chunk_id, msg.data, times.forward_wait_s)
            after.extend(dm.ChainOutcome(o.target.node_id, o.stored, _reason(o.reason)) for o in result.outcomes)

        with trio.move_on_at(times.answer_by_s):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store_here)
                if rest:
                    nursery.start_soon(pass_on)
        if not own:  # the disk did not answer in time: nothing after it can be vouched for either
            own.append(dm.ChainOutcome(self.node_id, False, "its store did not finish in time"))
        return dm.StoreChunkChainReply(tuple(own + after))

    async def _forward(
        self, rest: tuple[Target, ...], chunk_id: bytes, data: bytes, wait_s: float | None
    ) -> ChainResult:
        """Pass a chunk on to ``rest[0]`` (a chain again when more follow, else a plain store, which
        every version knows); what became of ``rest`` as far as this node can tell."""
        head = rest[0]
        if wait_s is None:
            return head_failed(rest, "no time left to pass the chunk on")
        if head.node_id in self.view.unavailable():
            return head_failed(rest, f"unavailable as seen from {short_id(self.node_id)}")
        replica = self.replicas.remote(head.node_id)
        try:
            if len(rest) == 1:
                await replica.store_chunk(chunk_id, data, head.hint_for, timeout_s=wait_s)
                answered = [(head.node_id, True, "")]
            elif not chain_capable(self._wire_versions(rest[:1]).get(head.node_id, 0)):
                return ChainResult((), rest)  # the sender writes it and those after it directly
            else:
                links = tuple(dm.ChainLink(t.node_id, t.hint_for) for t in rest[1:])
                answered = await replica.store_chunk_chain(chunk_id, data, head.hint_for, links, wait_s)
            result = read_reply(rest, answered)
        except (ReplicaError, BadChainReply) as exc:
            self.view.failed(head.node_id)
            return head_failed(rest, f"{short_id(head.node_id)}: {exc}")
        self.view.succeeded(head.node_id)
        return result

    async def write_name(self, entry: NameEntry) -> int:
        return (await self._write_name_counting(entry))[0]

    async def _write_name_counting(self, entry: NameEntry) -> tuple[int, int]:
        """Write ``entry`` at quorum; the acknowledgements, and how many of them did not take it
        (the replica holds a version that supersedes it)."""
        refusals = 0

        async def put(replica: Replica, target: Target) -> None:
            nonlocal refusals
            if not await replica.put_name(entry, target.hint_for):
                refusals += 1

        acks = await self.replicate(name_key(entry.name), f"name {entry.name!r}", put)
        return acks, refusals

    async def write_version(self, name: str, manifest: Manifest, client: str) -> NameEntry:
        """Write a new version of ``name`` that supersedes every version its replicas hold.

        The version is written straight away rather than after a quorum read: a replica
        holding a newer one (written by a node whose clock runs ahead, or by a put at the
        same moment) does not take it and says so, and only then is the name read at quorum,
        this node's clock moved past what was read, and the version written again, at most
        ``VERSION_WRITES_MAX`` times in all. Every replica that answers is heard before a
        write ends, and a write that fewer than ``r`` replicas answered reads too, so a
        version acknowledged at ``w`` before this put began is seen wherever a read at ``r``
        would have seen it (``r + w > rf``). A put costs the name reads (and their thread
        hops) only when it meets a newer version or a write falls short of ``r`` answers.
        """
        for _ in range(VERSION_WRITES_MAX):
            entry = NameEntry(name, self.hlc.now(self.clock.wall_ms()), self.node_id, manifest, client)
            acks, refusals = await self._write_name_counting(entry)
            if not refusals and acks >= quorum_size(self.config.r, len(self.view.ring())):
                return entry
            try:
                newer = await self.read_name(name)  # observes the newest version
            except QuorumError as exc:
                log.info("put %r: cannot read the name's newest version: %s", name, exc)
                return entry
            if newer is None or not newer.supersedes(entry):
                # What refused is on no read quorum: not a version acknowledged before this put
                # began (a failed or concurrent put's), and writing again would not pass it.
                return entry
        log.info("put %r: still met a newer version after %d writes", name, VERSION_WRITES_MAX)
        return entry

    # -- reading a name -----------------------------------------------------------

    async def read_name(self, name: str) -> NameEntry | None:
        """The newest entry for ``name`` at read quorum (``quorum.ReadQuorum``); stale replicas repaired.

        Absent at its replicas, it is looked up at its replicas under the other placement version
        while the view has one (``RingView.other_ring``: for a while after the cluster's placement
        changed, until anti-entropy has handed the name to its new replicas).
        """
        entry = await self._read_name_on(self.view.ring(), name)
        if entry is None:
            other = self.view.other_ring()
            if other is not None:
                entry = await self._read_name_on(other, name, repair=False)
        return entry

    async def _read_name_on(self, ring: Ring, name: str, *, repair: bool = True) -> NameEntry | None:
        key = name_key(name)
        rf = self.config.rf
        unavailable = self.view.unavailable()
        preferred, targets, spare = _plan(ring, key, rf, unavailable)
        needed = quorum_size(self.config.r, len(ring))
        quorum = await self._ask_for_name(name, preferred, targets, spare, needed)
        try:
            quorum.outcome()
        except QuorumError:
            # Replicas skipped as failing recently may be back (a node restarted within
            # replica_backoff_s) while the stand-ins asked in their place hold nothing: as a chunk
            # read does, ask them last rather than fail without them.
            skipped = [Target(node_id) for node_id in preferred if node_id in unavailable]
            if not skipped:
                raise
            quorum = await self._ask_for_name(name, preferred, skipped, [], needed)
        outcome = quorum.outcome()
        if outcome.winner is not None:
            self.observe(outcome.winner)
            # Not under the other placement: there it only waits for anti-entropy to move it.
            for target in outcome.repairs if repair else ():
                self.repairs.spawn(self.replicas(target.node_id).put_name, outcome.winner, target.hint_for)
        return outcome.winner

    async def _ask_for_name(self, name: str, preferred: list[str], targets: list[Target], spare: Spare,
                            needed: int) -> ReadQuorum:
        """Ask ``targets`` (stand-ins from ``spare`` for those that fail) for ``name``'s entry:
        ``needed`` of them first, the rest when the quorum hands them out or the hedge passes."""
        ordered = name_read_order(targets, self.node_id)
        quorum = ReadQuorum(f"reading name {name!r}", preferred, ordered, spare, needed, ask_first=max(needed, 1))

        async def ask(target: Target | None, nursery: trio.Nursery, *, once: bool = False) -> None:
            """Ask ``target``, then whoever replaces it; ``once``: a replacement gets a task of its own."""
            while target is not None:
                try:
                    entry = await self.replicas(target.node_id).get_name(name)
                except ReplicaError as exc:
                    self.view.failed(target.node_id)
                    decision = quorum.on_failure(target, str(exc))
                else:
                    decision = quorum.on_answer(target, entry)
                for other in decision.more:
                    nursery.start_soon(ask, other, nursery)
                target = decision.retry
                if once and target is not None:
                    nursery.start_soon(ask, target, nursery)
                    target = None
            if quorum.done:
                nursery.cancel_scope.cancel()

        if not quorum.done:
            hedge_at_s = trio.current_time() + NAME_READ_HEDGE_S
            async with trio.open_nursery() as nursery:
                # This node's own replica is asked in the nursery's body, after the others are
                # started, and the hedge waits there too: its read is answered on the event loop
                # (``LocalReplica.get_name``), so a task of its own, and one for the hedge, were
                # two spawns per read for nothing (docs/BENCHMARKS.md, "Small files: a name read's
                # tasks, the stand-ins found when needed, the send lock"). Whoever finishes the
                # read cancels the nursery, the body's wait with it.
                own = None
                for target in quorum.targets:
                    if target.node_id == self.node_id:
                        own = target
                    else:
                        nursery.start_soon(ask, target, nursery)
                if own is not None:
                    await ask(own, nursery, once=True)  # a replica asked in its place must not hold up the hedge
                if quorum.held and not quorum.done:
                    await trio.sleep_until(hedge_at_s)
                    for other in quorum.hedge():
                        nursery.start_soon(ask, other, nursery)
        return quorum

    # -- chunks -----------------------------------------------------------------

    async def fetch_chunk(self, chunk_id: bytes, index: int = 0) -> bytes:
        """A verified copy of a chunk, from the best replica that has a good one.

        Replicas found without it (or with a corrupt copy) while a later one
        served it are repaired in the background.
        """
        rf = self.config.rf
        ring = self.view.ring()
        preferred = ring.preference_list(chunk_id, rf)
        if self.node_id in preferred:
            # Its own copy first, read and verified in one thread hop (asking ``has`` first made
            # two per chunk). Without a good copy (a corrupt one quarantined now, or earlier by
            # the scrub or another read), it is asked again as the holder below: found lacking
            # there, it is repaired once another replica serves the chunk.
            try:
                return await self.replicas.local.fetch_chunk(chunk_id)
            except ReplicaLacks:
                held = True
        else:
            held = await self._offload(self.local.chunks.has, chunk_id)
        order = read_order(
            ring, chunk_id, rf, self.view.unavailable(), holder=self.node_id if held else None, rotate=index,
            alive=self.view.alive(),
        )
        if not held and self.node_id in preferred:
            order.append(self.node_id)  # in case it arrived since (cheap: a stat)
        read = ChunkRead(chunk_id, order, preferred)
        node_id = read.first()
        while node_id is not None:
            try:
                data = await self.replicas(node_id).fetch_chunk(chunk_id)
            except ReplicaLacks as exc:
                node_id = read.on_lacking(node_id, str(exc))
                continue
            except ReplicaDown as exc:
                self.view.failed(node_id)
                node_id = read.on_failure(node_id, str(exc))
                continue
            except ReplicaError as exc:
                node_id = read.on_failure(node_id, str(exc))
                continue
            for target in read.repairs():
                self.repairs.spawn(self.replicas(target.node_id).store_chunk, chunk_id, data)
            return data
        raise read.error()

    async def repair_chunk(self, chunk_id: bytes) -> bool:
        """Fetch a good copy of a chunk this node lost (to corruption) and store it again."""
        try:
            data = await self.fetch_chunk(chunk_id)
        except QuorumError as exc:
            log.warning("cannot repair chunk %s yet: %s", chunk_id.hex()[:16], exc)
            return False
        await self.replicas.local.store_chunk(chunk_id, data)
        log.info("repaired chunk %s from a replica", chunk_id.hex()[:16])
        return True

    # -- put, get, rm ---------------------------------------------------------------

    async def put(
        self, name: str, pieces: AsyncIterable[bytes], size_bytes: int = -1, *, client: str = ""
    ) -> NameEntry:
        """Store a file from a stream of byte pieces of any size; return its name entry.

        Raises QuorumError when a quorum is not met, SizeMismatch when the stream
        does not have the announced size. The name changes only on success.
        """
        chunk_size = self.config.chunk_size_bytes
        builder = ManifestBuilder(chunk_size)
        hasher = FileHasher()
        # The client's stream failing (it went away, stalled, or sent too much) is raised past the
        # nursery, so the caller sees that error rather than a group around it (which the transport
        # would have to take for a fault of this node).
        stream_error: errors.P2pfsError | None = None
        # The whole file, if it ends before its first chunk is cut and is small enough to go inline.
        inline = b""

        def hash_chunk(data: bytes) -> bytes:
            hasher.update(data)
            return chunk_id_of(data)

        async with trio.open_nursery() as nursery:
            writes = ChunkWrites(self, nursery)
            chunk_indexes = itertools.count()

            async def dispatch(data: bytes) -> None:
                chunk_id = await self._offload(hash_chunk, data)
                builder.add(chunk_id, len(data))
                await writes.start(next(chunk_indexes), chunk_id, data)

            buffer = bytearray()
            try:
                async for piece in pieces:
                    if not buffer and len(piece) == chunk_size and isinstance(piece, bytes):
                        # A client sends chunk-sized pieces: pass them on as they are, since
                        # going through the buffer would copy every byte twice.
                        await dispatch(piece)
                        continue
                    buffer += piece
                    while len(buffer) >= chunk_size:
                        data = bytes(memoryview(buffer)[:chunk_size])
                        del buffer[:chunk_size]
                        await dispatch(data)
            except errors.P2pfsError as exc:
                stream_error = exc
                nursery.cancel_scope.cancel()
            else:
                if buffer and hasher.size_bytes == 0 and len(buffer) <= self.config.inline_file_bytes_max:
                    inline = bytes(buffer)
                    hasher.update(inline)  # at most INLINE_BYTES_MAX: cheaper here than a thread hop
                elif buffer:
                    await dispatch(bytes(buffer))
        if writes.failures:
            raise writes.failures[0]
        if stream_error is not None:
            raise stream_error
        if size_bytes >= 0 and hasher.size_bytes != size_bytes:
            raise SizeMismatch(
                f"received {hasher.size_bytes} bytes but the client announced {size_bytes} "
                "(did the file change while it was read?)"
            )
        wall_ms = self.clock.wall_ms()
        if inline:
            manifest = Manifest((), len(inline), hasher.digest(), wall_ms, chunk_size, inline)
        else:
            manifest = builder.finish(hasher.digest(), wall_ms)
        entry = await self.write_version(name, manifest, client)
        stored = "inline" if inline else f"in {len(manifest.chunks)} chunks"
        log.info("put %r: %d bytes %s, for client %s", name, manifest.size_bytes, stored, client or "(none)")
        return entry

    async def remove(self, name: str, *, client: str = "") -> None:
        """Write a tombstone for ``name`` at quorum (``client``: who asked, recorded in it)."""
        await self.write_name(NameEntry(name, self.hlc.now(self.clock.wall_ms()), self.node_id, None, client))
        log.info("removed %r, for client %s", name, client or "(none)")

    async def stream_file(
        self, manifest: Manifest, first_chunk: int, send: Callable[[bytes], Awaitable[None]]
    ) -> None:
        """Send a file's bytes from chunk ``first_chunk`` on: its inline content, or its chunks."""
        if manifest.inline:
            assert first_chunk == 0, "an inline file has no chunks to resume from"
            await send(manifest.inline)  # checked against the file hash when its entry was read
            return
        await self.stream_chunks(manifest.chunks[first_chunk:], send)

    async def stream_chunks(self, refs: Sequence[ChunkRef], send: Callable[[bytes], Awaitable[None]]) -> None:
        """Send chunks in order while up to ``get_window_chunks`` are fetched ahead; QuorumError on a loss.

        Chunks this node should hold are read here, up to ``LOCAL_READ_CHUNKS_MAX`` in
        one worker-thread trip (``_read_here_into``), past the page cache into buffers
        reused for the whole get; others, and one found missing or corrupt here, are
        fetched one by one (``fetch_chunk``). The chunks already
        fetched after the one due go with it, up to one frame (``STREAM_DATA_BYTES_MAX``),
        uncopied (``net.Scattered``): the per-frame work of the send path, and the
        receiver's, is done once for several chunks. Nothing waits for a chunk to join:
        a frame takes what is ready. ``send`` is done with a piece's bytes when it
        returns (a connection has encrypted them): the read buffers are reused."""
        slots: collections.deque[_Slot] = collections.deque()
        error: str | None = None
        send_error: errors.P2pfsError | None = None  # the client went away or stopped reading
        window_chunks = self.config.get_window_chunks
        ring = self.view.ring()
        started = 0  # refs[:started] are being fetched or sent
        # Read buffers: one per chunk in the window, and those of a frame being sent while the
        # window refills; a chunk read when none is free is read into bytes (ChunkStore.get).
        buffers_max = window_chunks + LOCAL_READ_CHUNKS_MAX
        buffers_made = 0
        free_buffers: list[mmap.mmap] = []

        def take_buffer() -> mmap.mmap | None:
            nonlocal buffers_made
            if free_buffers:
                return free_buffers.pop()
            if buffers_made == buffers_max:
                return None
            buffers_made += 1
            return mmap.mmap(-1, DIRECT_READ_BUFFER_BYTES)  # anonymous: page-aligned, resident once read into

        async with trio.open_nursery() as nursery:

            def refill() -> None:
                """Start fetches until the window is full: runs of chunks held here in trips of
                up to LOCAL_READ_CHUNKS_MAX, any other chunk on its own."""
                nonlocal started
                while started < len(refs) and len(slots) < window_chunks:
                    trip: list[tuple[_Slot, int, bytes]] = []
                    trip_max = min(LOCAL_READ_CHUNKS_MAX, window_chunks - len(slots))
                    while started < len(refs) and len(trip) < trip_max:
                        chunk_id = refs[started].chunk_id
                        if self.node_id not in ring.preference_list(chunk_id, self.config.rf):
                            break
                        slot = _Slot(buffer=take_buffer())
                        slots.append(slot)
                        trip.append((slot, started, chunk_id))
                        started += 1
                    if trip:
                        nursery.start_soon(self._read_here_into, trip, nursery, free_buffers)
                        continue
                    slot = _Slot()
                    slots.append(slot)
                    nursery.start_soon(self._fetch_into, slot, started, refs[started].chunk_id)
                    started += 1

            refill()
            while slots:
                slot = slots.popleft()
                await slot.done.wait()
                if slot.error is not None:
                    # Raised past the nursery, so that the caller sees it, not a group around it.
                    error = slot.error
                    nursery.cancel_scope.cancel()
                    break
                data, slot.data = slot.data, None
                parts = [data]
                size_bytes = len(data)
                sending = [slot.buffer]
                while slots and slots[0].done.is_set() and slots[0].error is None and (
                        size_bytes + len(slots[0].data) <= STREAM_DATA_BYTES_MAX):
                    ready = slots.popleft()
                    parts.append(ready.data)
                    size_bytes += len(ready.data)
                    sending.append(ready.buffer)
                    ready.data = None
                refill()
                if len(parts) > 1:  # the first part goes with the frame's header (copied): none
                    data = net.Scattered((b"", *parts), size_bytes)
                try:
                    await send(data)
                except errors.P2pfsError as exc:
                    send_error = exc  # raised past the nursery like a fetch's error
                    nursery.cancel_scope.cancel()
                    break
                # Sent: TLS has encrypted the bytes out of the buffers, which can take the next reads.
                del data, parts
                free_buffers.extend(buffer for buffer in sending if buffer is not None)
        if send_error is not None:
            raise send_error
        if error is not None:
            raise QuorumError(error)

    async def _read_here_into(self, trip: list[tuple[_Slot, int, bytes]], nursery: trio.Nursery,
                              free_buffers: list[mmap.mmap]) -> None:
        """Read chunks this node should hold in one worker-thread trip, each verified against
        its id (``ChunkStore.get_direct`` into the slot's buffer, or ``get``); one missing here,
        or corrupt (quarantined by the read, and noted for repair as ``LocalReplica.fetch_chunk``
        does), is fetched as any other chunk, and its buffer goes back to ``free_buffers``."""
        found = await self._offload(_read_held, self.local.chunks,
                                    [(chunk_id, slot.buffer) for slot, _, chunk_id in trip])
        for (slot, index, chunk_id), data in zip(trip, found, strict=True):
            if not isinstance(data, Exception):
                slot.data = data
                slot.done.set()
                continue
            if isinstance(data, ChunkCorrupt):
                self.local.corrupt_pending.add(chunk_id)
            if slot.buffer is not None:
                free_buffers.append(slot.buffer)
                slot.buffer = None
            nursery.start_soon(self._fetch_into, slot, index, chunk_id)

    async def _fetch_into(self, slot: _Slot, index: int, chunk_id: bytes) -> None:
        try:
            slot.data = await self.fetch_chunk(chunk_id, index)
        except QuorumError as exc:
            slot.error = str(exc)
        finally:
            slot.done.set()


def _read_held(chunks: ChunkStore, reads: list[tuple[bytes, mmap.mmap | None]],
               ) -> list[bytes | memoryview | ChunkMissing | ChunkCorrupt]:
    """Each chunk's verified bytes (in its buffer, if it has one), or why this node cannot
    serve it (run in a worker thread)."""
    found: list[bytes | memoryview | ChunkMissing | ChunkCorrupt] = []
    for chunk_id, buffer in reads:
        try:
            found.append(chunks.get(chunk_id) if buffer is None else chunks.get_direct(chunk_id, buffer))
        except (ChunkMissing, ChunkCorrupt) as exc:
            found.append(exc)
    return found


def _reason(text: str) -> str:
    """A reason cut to what a chain's answer carries."""
    return text[: dm.REASON_CHARS_MAX]
