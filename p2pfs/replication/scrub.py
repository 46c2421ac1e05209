"""Scrub: chunks are re-read at ``scrub_bytes_per_s``; one that fails verification is quarantined
and fetched again from a healthy replica. The name index is scrubbed alongside.

A round verifies up to ``SCRUB_CHUNKS_PER_ROUND`` chunks of a pass over the
store; the next pass starts when one is done, so every chunk is read once per
pass. A pass walks the ids in order from a random starting id, wrapping round,
a page at a time: a restarted node does not always begin with the same chunks,
and a store of millions of chunks is never listed whole.

Each round also decodes up to ``SCRUB_NAME_ROWS_PER_ROUND`` rows of the name index
in name order (``NameIndex.check_rows``), and the last batch of a pass checks the
whole file's pages (``PRAGMA quick_check``); one pass of names per pass of chunks.
What is bad is quarantined by the index itself, and ``namerepair`` refills it.
"""

from __future__ import annotations

import logging
import random
from typing import Awaitable, Callable

import trio

from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.local import LocalStore, Offload
from p2pfs.storage import CHUNK_ID_BYTES, CHUNK_SIZE_BYTES_MAX, ChunkMissing, NameIndexDamaged

log = logging.getLogger(__name__)

# Chunks verified per round: a round at the largest chunk size and the scrub rate
# takes SCRUB_CHUNKS_PER_ROUND * CHUNK_SIZE_BYTES_MAX / scrub_bytes_per_s.
SCRUB_CHUNKS_PER_ROUND = 64
# Name-index rows decoded per round: a row is at most a manifest (4 MiB, usually a
# few hundred bytes), decoded in a worker thread under the index's lock, so a round
# holds writers off for at most this many decodes.
SCRUB_NAME_ROWS_PER_ROUND = 256


class Scrubber:
    def __init__(
        self, *, config: ReplicationConfig, local: LocalStore, repair: Callable[[bytes], Awaitable[bool]],
        rng: random.Random, offload: Offload,
    ) -> None:
        assert config.scrub_bytes_per_s > 0, "the scrub is off"
        self.config = config
        self._local = local
        self._repair = repair
        self._rng = rng
        self._offload = offload
        # The current pass: the random id it began after, and where it goes on. None: no pass.
        self._pass: PassCursor | None = None
        # Progress and findings, for the admin's metrics.
        self.pass_chunks = 0  # chunks held when the current pass began
        self._pass_verified = 0
        self.verified_chunks = 0
        self.corrupt_chunks = 0
        # Where the name pass goes on from (after this key); None once it is over
        # for this pass of chunks.
        self._names_after: bytes | None = b""
        # Name rows found bad by the scrub (each also counted by the index).
        self.bad_name_rows = 0

    @property
    def pass_remaining_chunks(self) -> int:
        return max(0, self.pass_chunks - self._pass_verified)

    def round_deadline_s(self) -> float:
        """Time a round may take: every chunk at the largest size at the scrub rate, or a wait."""
        verify_s = SCRUB_CHUNKS_PER_ROUND * CHUNK_SIZE_BYTES_MAX / self.config.scrub_bytes_per_s
        return 2 * max(verify_s, self.config.anti_entropy_interval_s)

    async def round(self) -> None:
        await self.scrub_names()
        if self._pass is None:
            self._names_after = b""
            self._pass = PassCursor(self._rng.randbytes(CHUNK_ID_BYTES))
            self.pass_chunks = await self._offload(self._local.chunks.count_ids)
            self._pass_verified = 0
        batch = await self._offload(self._pass.next_page, self._local.chunks.ids_after, SCRUB_CHUNKS_PER_ROUND)
        if self._pass.done:
            self._pass = None
        if not batch:
            await trio.sleep(self.config.anti_entropy_interval_s)
            return
        for chunk_id in batch:
            await self.scrub_one(chunk_id)

    async def scrub_names(self) -> None:
        """Decode the next rows of the name index; the index removes bad ones and counts them."""
        if self._names_after is None:
            return
        try:
            after, bad = await self._offload(
                self._local.names.check_rows, self._names_after, SCRUB_NAME_ROWS_PER_ROUND
            )
        except NameIndexDamaged:
            self._names_after = b""  # the index was rebuilt (and said so): check the new one from the start
            return
        self._names_after = after or None
        self.bad_name_rows += bad

    async def scrub_one(self, chunk_id: bytes) -> bool:
        """Verify one chunk at the scrub rate; repair it from a replica if it fails. True if good."""
        try:
            size_bytes = await self._offload(self._local.chunks.size_of, chunk_id)
            good = await self._offload(self._local.chunks.verify, chunk_id)
        except ChunkMissing:
            return True  # deleted meanwhile
        await trio.sleep(size_bytes / self.config.scrub_bytes_per_s)
        self.verified_chunks += 1
        self._pass_verified += 1
        if good:
            return True
        log.warning("scrub: chunk %s failed verification; repairing", chunk_id.hex()[:16])
        self.corrupt_chunks += 1
        self._local.corrupt_pending.add(chunk_id)
        await self._repair(chunk_id)
        return False


class PassCursor:
    """One pass over the held ids in id order, from just after ``start`` round to ``start``.

    Pages come from ``ids_after(after, limit)`` (ids greater than ``after``, in order, b""
    meaning from the first), so only a page is ever held. Chunks stored during the pass may
    or may not be in it; the next pass has them.
    """

    def __init__(self, start: bytes) -> None:
        self._start = start
        self._after = start
        self._wrapped = False  # past the last id, going on from the first
        self.done = False

    def next_page(self, ids_after: Callable[[bytes, int], list[bytes]], limit: int) -> list[bytes]:
        page: list[bytes] = []
        while not self.done and len(page) < limit:
            want = limit - len(page)
            found = ids_after(self._after, want)
            if not self._wrapped:
                page.extend(found)
                if len(found) < want:
                    self._wrapped, self._after = True, b""
                else:
                    self._after = found[-1]
                continue
            in_pass = [chunk_id for chunk_id in found if chunk_id <= self._start]
            page.extend(in_pass)
            if len(in_pass) < len(found) or len(found) < want:
                self.done = True
            else:
                self._after = found[-1]
        return page
