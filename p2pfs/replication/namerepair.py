"""Name-index repair: refill this node's index from the replicas as soon as it lost entries.

The name index quarantines what it finds damaged (``NameIndex``: undecodable rows
removed, a damaged file rebuilt from its readable rows) and counts it in
``damage_count``. The entries lost are held rf-1 more times on the peers that share
them, and anti-entropy would bring them back at its next round, minutes away; until
then this node answers "not here" for names it owns. So a small round checks the
count every ``NAME_REFILL_CHECK_INTERVAL_S`` and, when it grew, runs anti-entropy's
name sync alone with every live peer (``AntiEntropy.refill_names``).

A refill counts as done only once every live peer answered and at least one did
(or the ring holds this node alone: there is nothing to refill from). A node that
starts with a damaged index and no peer in view yet keeps trying each check, so the
refill happens as soon as membership finds its peers.
"""

from __future__ import annotations

import logging

from p2pfs.replication.antientropy import AntiEntropy
from p2pfs.replication.view import RingView
from p2pfs.storage import NameIndex

log = logging.getLogger(__name__)

# Seconds between looks at the index's damage count: two integer reads, so cheap;
# short, because a damaged index makes this node a failed replica for its names.
NAME_REFILL_CHECK_INTERVAL_S = 1.0


class NameRefill:
    def __init__(self, *, names: NameIndex, anti_entropy: AntiEntropy, view: RingView) -> None:
        self._names = names
        self._anti_entropy = anti_entropy
        self._view = view
        # The damage count the last complete refill covered: 0, so damage found when
        # the index was opened is refilled too.
        self._refilled_damage = 0
        # Refills completed (for tests and the log).
        self.refills = 0

    @property
    def pending(self) -> bool:
        return self._names.damage_count != self._refilled_damage

    async def round(self) -> None:
        damage = self._names.damage_count
        if damage == self._refilled_damage:
            return
        answered, failed = await self._anti_entropy.refill_names()
        alone = len(self._view.ring()) <= 1
        if failed or not (answered or alone):
            return  # again at the next check
        self._refilled_damage = damage
        self.refills += 1
        log.info("name index refilled from %d peers after damage (rows quarantined %d, rebuilds %d)",
                 answered, self._names.rows_quarantined, self._names.rebuilds)
