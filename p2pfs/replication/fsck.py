"""fsck: the cluster's replication health as this node's ring sees it.

Every node that may hold data (the ring's members and live nodes out of it) is
asked for its names and chunk ids; each name and each chunk a live file refers
to is classified against where the ring places it.

Memory is bounded whatever the cluster holds. Every node lists its names and its
chunk ids in key order, a page at a time, so the answers are merged as sorted
streams holding one page per node (``FSCK_NAME_PAGE``, ``FSCK_CHUNK_PAGE_IDS``):
a name is classified once every node's stream has passed it. The chunks the newest
version of each name refers to go, as they are found, into a temporary SQLite file
(private, deleted when closed; ``FSCK_REF_CACHE_KIB`` of page cache), which gives
them back in id order for the merge with the nodes' chunk lists.

The streams are read at different moments, so data on the move can fall between
them: a leaving node hands a name to its new owner and drops its copy, and a scan
that read the owner's page before the copy and the leaver's after the drop sees one
copy too few. A key the scan finds at fault gets a second look before it is reported
(``FSCK_SECOND_LOOK_NAMES_MAX`` names, ``FSCK_SECOND_LOOK_CHUNKS_MAX`` chunks a check,
beyond which the scan's verdict stands): the nodes the scan saw holding it outside
its owners are asked again first, then its owners. Data moves only by copying to an
owner before dropping elsewhere (hand-off, rebalancing), so a copy dropped before the
first of those reads is at its owner by the second.

An fsck of a million names takes longer than any request may wait (the client's
deadline is 300 s; at 250,000 names one took 750 s on a loaded machine). So a
request starts the check as a job on the node, or joins the one under way, and
waits for it at most ``FSCK_ANSWER_WAIT_S``: the answer is the report, or
``FsckPending`` with the counts so far, and the client asks again. One job runs at
a time (two clients asking at once share it); a report no request was waiting for
is kept for the next request (once, ``FSCK_REPORT_KEPT_S`` at most), and a job
nobody has asked about for ``FSCK_ABANDONED_S`` is stopped. Only a client that offered
``wire.ALPN_FSCK_PENDING`` is answered FsckPending; an older one's request is held until
the report (``FSCK_HELD_WAIT_S`` at most), as before.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import sqlite3
from collections import defaultdict
from typing import Callable

import trio

from p2pfs import errors, net, wire
from p2pfs.replication import messages as dm
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.errors import BadReply, ReplicaError
from p2pfs.replication.fields import HAS_CHUNKS_IDS_MAX
from p2pfs.replication.local import Offload
from p2pfs.replication.placement import name_key
from p2pfs.replication.replicas import LIST_PAGE_NAMES, PAGES_PER_NODE_MAX, Replica, Replicas
from p2pfs.replication.view import RingView
from p2pfs.storage import NameEntry

log = logging.getLogger(__name__)

# Problems an fsck answer lists by name (the counts cover all of them).
FSCK_PROBLEMS_LISTED_MAX = 50
# Names asked of each node per page (one page per node is held while merging).
FSCK_NAME_PAGE = LIST_PAGE_NAMES
# Chunk ids asked of each node per page: 8192 ids are 256 KiB on the wire and ~1 MiB held.
FSCK_CHUNK_PAGE_IDS = 8192
# Referenced ids written to the temporary table per insert (one worker-thread call).
FSCK_REF_BATCH = 4096
# Keys at fault in the scan looked at again before they are reported, a check: a name costs
# one request per owner and per other holder, so a cluster with a dead node's worth of
# names at fault is not asked about each of them; the scan's verdict stands for the rest.
FSCK_SECOND_LOOK_NAMES_MAX = 256
# Chunks are asked about in batches, so more of them: one batch per node and per pass.
FSCK_SECOND_LOOK_CHUNKS_MAX = HAS_CHUNKS_IDS_MAX
# Page cache of the temporary table of referenced ids, KiB; the rest of it stays on disk.
FSCK_REF_CACHE_KIB = 8192
# How long one Fsck request waits for the job before it answers FsckPending: well inside the
# client's deadline (p2pfs.client.deadlines.FSCK_TIMEOUT_S, 300 s) on a loaded machine, and
# long enough that a small cluster's fsck is one request, as it always was.
FSCK_ANSWER_WAIT_S = 60.0
# A job that ends while no request waits for it (its asker is between a FsckPending and its
# next request) keeps its report for the next request, once, and for this long at most; any
# other request starts a fresh check, so a report is never older than the request it answers
# by more than this.
FSCK_REPORT_KEPT_S = 30.0
# A job no request has asked about for this long is stopped: its asker went away.
FSCK_ABANDONED_S = 5 * FSCK_ANSWER_WAIT_S
# How long a request from a client that does not know FsckPending waits for the report: the
# deadline such a client gives fsck (p2pfs.client.deadlines.FSCK_TIMEOUT_S); it is gone after.
FSCK_HELD_WAIT_S = 300.0


@dataclasses.dataclass(slots=True)
class FsckJob:
    """One check under way or just finished, and its counts so far (FsckPending's)."""

    asked_s: float  # when a request last asked about it (trio's clock)
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    names_checked: int = 0
    chunks_checked: int = 0
    reply: dm.FsckReply | None = None
    error: errors.P2pfsError | None = None
    finished_s: float = 0.0
    answered: bool = False  # its report (or error) was given to a request
    waiting: int = 0  # requests waiting for it now (it is not abandoned while one waits)


class _Stream:
    """One node's names or chunk ids, in key order, read a page at a time."""

    def __init__(self, node_id: str, read_page: Callable, key_of: Callable) -> None:
        self.node_id = node_id
        self._read_page = read_page
        self._key_of = key_of
        self._page: list = []
        self._at = 0
        self._after = None
        self._more = True
        self._pages = 0
        self.failed = False

    async def head(self):
        """The next item, or None at the end (or after a failure: ``failed`` says which)."""
        while self._at >= len(self._page):
            if not self._more or self.failed:
                return None
            if self._pages >= PAGES_PER_NODE_MAX:
                self.failed = True
                return None
            try:
                page, more = await self._read_page(self._after)
                if page and self._after is not None and not self._key_of(page[0]) > self._after:
                    raise BadReply("a page that does not move forward")
            except ReplicaError:
                self.failed = True
                return None
            self._pages += 1
            self._page, self._at, self._more = page, 0, more and bool(page)
            if page:
                self._after = self._key_of(page[-1])
        return self._page[self._at]

    def pop(self) -> None:
        self._at += 1


class _RefTable:
    """Referenced chunk ids, deduplicated and given back in id order, on disk beyond a small cache."""

    def __init__(self) -> None:
        # "": a private temporary database, deleted on close (sqlite.org/inmemorydb.html).
        self._conn = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA cache_size=-{FSCK_REF_CACHE_KIB}")
        self._conn.execute("CREATE TABLE refs (id BLOB PRIMARY KEY) WITHOUT ROWID")

    def add(self, ids: list[bytes]) -> None:
        self._conn.execute("BEGIN")
        self._conn.executemany("INSERT OR IGNORE INTO refs (id) VALUES (?)", ((i,) for i in ids))
        self._conn.execute("COMMIT")

    def after(self, start_after: bytes, limit: int) -> list[bytes]:
        rows = self._conn.execute("SELECT id FROM refs WHERE id > ? ORDER BY id LIMIT ?", (start_after, limit))
        return [row[0] for row in rows]

    def close(self) -> None:
        self._conn.close()


class Fsck:
    def __init__(self, *, config: ReplicationConfig, view: RingView, replicas: Replicas,
                 offload: Offload | None = None) -> None:
        self.config = config
        self._view = view
        self._replicas = replicas
        self._offload = offload or _inline
        # Where jobs run (``serve``); until it runs, a request checks within itself, as before.
        self._nursery: trio.Nursery | None = None
        self._job: FsckJob | None = None

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the jobs that requests start, for as long as the node runs."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def on_fsck(self, request: net.IncomingRequest) -> dm.FsckReply | dm.FsckPending:
        if self._nursery is None:
            return await self.run()
        # FsckPending only to a client that said in the TLS handshake that it knows it, as the
        # small-file messages are offered (wire.ALPN_FSCK_PENDING): the hello's version must match
        # exactly, Fsck has no field to say so in, and a field added to it would make an older
        # node refuse a newer client's request (a message must have exactly its fields), where
        # ALPN is ignored by an end that does not know it. An older client waits for the report, as it did before the jobs, for as long
        # as its deadline (the job runs on if that passes, for a next request to find).
        knows_pending = wire.alpn_speaks(request.conn.alpn_protocol, wire.ALPN_FSCK_PENDING)
        now_s = trio.current_time()
        job = self._job
        if job is None or (job.done.is_set() and (job.answered or now_s - job.finished_s > FSCK_REPORT_KEPT_S)):
            job = self._job = FsckJob(asked_s=now_s)
            self._nursery.start_soon(self._run_job, job)
        job.asked_s = now_s
        job.waiting += 1
        try:
            with trio.move_on_after(FSCK_ANSWER_WAIT_S if knows_pending else FSCK_HELD_WAIT_S):
                await job.done.wait()
        finally:
            job.waiting -= 1
            job.asked_s = trio.current_time()
        if job.done.is_set():
            job.answered = True
        if job.error is not None:
            raise job.error
        if job.reply is not None:
            return job.reply
        if not knows_pending:
            raise errors.Unavailable(f"the check did not end within {FSCK_HELD_WAIT_S:g} s; it goes on")
        return dm.FsckPending(names_checked=job.names_checked, chunks_checked=job.chunks_checked)

    async def _run_job(self, job: FsckJob) -> None:
        async def abandoned(scope: trio.CancelScope) -> None:
            while job.waiting or trio.current_time() - job.asked_s <= FSCK_ABANDONED_S:
                await trio.sleep(FSCK_ANSWER_WAIT_S)
            scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(abandoned, nursery.cancel_scope)
                try:
                    job.reply = await self.run(job)
                except errors.P2pfsError as exc:
                    job.error = exc
                except Exception as exc:  # a bug here must not end the node's other jobs
                    log.exception("fsck failed")
                    job.error = errors.Unavailable(f"the check failed: {exc}")
                nursery.cancel_scope.cancel()
        finally:
            if job.reply is None and job.error is None:
                job.error = errors.Unavailable("the check was stopped: nobody asked for it")
            job.finished_s = trio.current_time()
            job.done.set()

    async def run(self, progress: FsckJob | None = None) -> dm.FsckReply:
        ring = self._view.ring()
        rf = self.config.rf
        wanted_copies = min(rf, len(ring))
        alive = self._view.alive()
        everyone = self._view.everyone(ring)
        problems: list[dm.FsckProblem] = []
        counts: dict[str, int] = defaultdict(int)

        def problem(kind: str, what: str, key: str, holders, wanted) -> None:
            counts[f"{what}_{kind}"] += 1
            if len(problems) < FSCK_PROBLEMS_LISTED_MAX:
                problems.append(dm.FsckProblem(kind, what, key, tuple(sorted(holders)), tuple(wanted)))

        def verdict(holders: set[str], wanted: list[str]) -> str | None:
            # At risk: fewer live copies than rf, wherever they are. Not at risk but
            # not done: copies on the wrong nodes (after a join, say), or too many.
            live = holders & alive
            if not holders:
                return "missing"
            if len(live) < wanted_copies:
                return "under_replicated"
            if not set(wanted) <= live:
                return "misplaced"
            if len(holders) > wanted_copies:
                return "over_replicated"
            return None

        second_look: dict[str, list[_Suspect]] = {"names": [], "chunks": []}
        second_look_max = {"names": FSCK_SECOND_LOOK_NAMES_MAX, "chunks": FSCK_SECOND_LOOK_CHUNKS_MAX}

        def classify(what: str, key: str, holders: set[str], wanted: list[str]) -> None:
            kind = verdict(holders, wanted)
            if kind is None:
                return
            if len(second_look[what]) < second_look_max[what]:
                second_look[what].append(_Suspect(key, wanted, holders))
            else:
                problem(kind, what, key, holders, wanted)

        refs = await self._offload(_RefTable)
        try:
            names_checked, unreachable = await self._names(everyone, ring, rf, classify, refs, progress)
            chunks_checked, corrupt_holders, chunks_unreachable = await self._chunks(everyone, ring, rf, classify,
                                                                                     refs, progress)
            unreachable |= chunks_unreachable
        finally:
            await self._offload(refs.close)
        await self._look_again_at_names(second_look["names"])
        await self._look_again_at_chunks(second_look["chunks"])
        for what, suspects in second_look.items():
            for suspect in suspects:
                kind = verdict(suspect.holders, suspect.wanted)
                if kind is not None:
                    problem(kind, what, suspect.key, suspect.holders, suspect.wanted)
        for chunk_id, holders in sorted(corrupt_holders.items()):
            problem("corrupt", "chunks", chunk_id.hex(), holders, ring.preference_list(chunk_id, rf))
        return dm.FsckReply(
            names_checked=names_checked,
            chunks_checked=chunks_checked,
            names_under_replicated=counts["names_under_replicated"],
            chunks_under_replicated=counts["chunks_under_replicated"],
            chunks_over_replicated=counts["chunks_over_replicated"],
            names_over_replicated=counts["names_over_replicated"],
            names_misplaced=counts["names_misplaced"],
            chunks_misplaced=counts["chunks_misplaced"],
            chunks_missing=counts["chunks_missing"],
            chunks_corrupt=counts["chunks_corrupt"],
            nodes_asked=len(everyone),
            nodes_unreachable=tuple(sorted(unreachable)),
            problems=tuple(problems),
        )

    async def _names(self, everyone: list[str], ring, rf: int, classify, refs: _RefTable,
                     progress: FsckJob | None) -> tuple[int, set[str]]:
        """Merge every node's names in name order; classify each, and note the chunks of the newest."""
        unreachable: set[str] = set()

        def reader(replica: Replica):
            async def read_page(after):
                entries, more = await replica.list_names("", after.decode("utf-8") if after else "", FSCK_NAME_PAGE)
                return entries, more
            return read_page

        streams = [_Stream(n, reader(self._replicas(n)), lambda e: e.name.encode("utf-8")) for n in everyone]
        heap: list[tuple[bytes, int]] = []
        for index, stream in enumerate(streams):
            await _push(heap, stream, index, unreachable)
        checked = 0
        pending: list[bytes] = []
        while heap:
            name_bytes = heap[0][0]
            versions: list[tuple[str, NameEntry]] = []
            while heap and heap[0][0] == name_bytes:
                _, index = heapq.heappop(heap)
                stream = streams[index]
                versions.append((stream.node_id, await stream.head()))
                stream.pop()
                await _push(heap, stream, index, unreachable)
            newest = versions[0][1]
            for _, entry in versions[1:]:
                if entry.supersedes(newest):
                    newest = entry
            checked += 1
            if progress is not None:
                progress.names_checked = checked
            current = {node for node, entry in versions if entry.key == newest.key}
            classify("names", newest.name, current, ring.preference_list(name_key(newest.name), rf))
            if newest.manifest is not None:
                pending.extend(ref.chunk_id for ref in newest.manifest.chunks)
                if len(pending) >= FSCK_REF_BATCH:
                    await self._offload(refs.add, pending)
                    pending = []
        if pending:
            await self._offload(refs.add, pending)
        return checked, unreachable

    async def _chunks(self, everyone: list[str], ring, rf: int, classify, refs: _RefTable,
                      progress: FsckJob | None):
        """Merge the referenced ids with every node's ids, all in id order."""
        corrupt: set[bytes] = set()

        def reader(replica: Replica):
            async def read_page(after):
                ids, bad, more = await replica.list_chunks(after or b"", FSCK_CHUNK_PAGE_IDS)
                corrupt.update(bad)
                return ids, more
            return read_page

        streams = [_Stream(n, reader(self._replicas(n)), lambda i: i) for n in everyone]
        for stream in streams:
            await stream.head()  # the first pages carry the ids pending repair
        corrupt_holders: dict[bytes, set[str]] = {chunk_id: set() for chunk_id in corrupt}
        checked = 0

        async def holders_of(chunk_id: bytes | None) -> set[str]:
            """Advance every stream up to ``chunk_id`` (None: to its end); the nodes that list it."""
            found = set()
            for stream in streams:
                while (head := await stream.head()) is not None and (chunk_id is None or head <= chunk_id):
                    if head in corrupt_holders:
                        corrupt_holders[head].add(stream.node_id)
                    if head == chunk_id:
                        found.add(stream.node_id)
                    stream.pop()
            return found

        after = b""
        while batch := await self._offload(refs.after, after, FSCK_REF_BATCH):
            for chunk_id in batch:
                checked += 1
                if progress is not None:
                    progress.chunks_checked = checked
                classify("chunks", chunk_id.hex(), await holders_of(chunk_id), ring.preference_list(chunk_id, rf))
            after = batch[-1]
        await holders_of(None)
        return checked, corrupt_holders, {stream.node_id for stream in streams if stream.failed}


    async def _look_again_at_names(self, suspects: list[_Suspect]) -> None:
        """Ask each suspect name's other holders, then its owners, for it; who holds the newest now.

        A suspect none of them could be asked about keeps what the scan saw.
        """
        for suspect in suspects:
            found: list[tuple[str, NameEntry]] = []
            for node_id in _sources_then_owners(suspect):
                try:
                    entry = await self._replicas(node_id).get_name(suspect.key)
                except ReplicaError:
                    found = []
                    break
                if entry is not None:
                    found.append((node_id, entry))
            if not found:
                continue
            newest = found[0][1]
            for _, entry in found[1:]:
                if entry.supersedes(newest):
                    newest = entry
            suspect.holders = {node_id for node_id, entry in found if entry.key == newest.key}

    async def _look_again_at_chunks(self, suspects: list[_Suspect]) -> None:
        """Ask every suspect chunk's other holders, then (all of those answered) its owners, for it.

        One batch per node and pass. A suspect one of whose nodes could not be asked keeps
        what the scan saw.
        """
        if not suspects:
            return
        failed: set[str] = set()
        held: dict[bytes, set[str]] = defaultdict(set)
        for asks_owners in (False, True):
            by_node: dict[str, list[bytes]] = defaultdict(list)
            for suspect in suspects:
                chunk_id = bytes.fromhex(suspect.key)
                nodes = suspect.wanted if asks_owners else sorted(suspect.holders - set(suspect.wanted))
                for node_id in nodes:
                    by_node[node_id].append(chunk_id)
            for node_id, ids in sorted(by_node.items()):
                try:
                    present = await self._replicas(node_id).has_chunks(tuple(ids))
                except ReplicaError:
                    failed.add(node_id)
                    continue
                for chunk_id, has in zip(ids, present):
                    if has:
                        held[chunk_id].add(node_id)
        for suspect in suspects:
            if not (failed & (suspect.holders | set(suspect.wanted))):
                suspect.holders = held[bytes.fromhex(suspect.key)]


@dataclasses.dataclass(slots=True)
class _Suspect:
    """A key the scan found at fault: where it wants to be, and who holds it (the scan's, then the second look's)."""

    key: str
    wanted: list[str]
    holders: set[str]


def _sources_then_owners(suspect: _Suspect) -> list[str]:
    """The nodes to ask about a suspect, in the order that sees a copy-then-drop move whole."""
    return sorted(suspect.holders - set(suspect.wanted)) + list(suspect.wanted)


async def _push(heap: list, stream: _Stream, index: int, unreachable: set[str]) -> None:
    """Put the stream's next name on the merge heap; a stream that failed is unreachable."""
    entry = await stream.head()
    if entry is not None:
        heapq.heappush(heap, (entry.name.encode("utf-8"), index))
    elif stream.failed:
        unreachable.add(stream.node_id)


async def _inline(fn, *args):
    return fn(*args)
