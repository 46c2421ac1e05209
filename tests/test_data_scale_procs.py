"""A real daemon that lost a tenth of its chunks is whole again (issue 16, data per node).

scripts/bench_pernode.py does this at up to a million names and reports the time; here
three daemons hold a few hundred names, written directly into their stores, and the test
checks the whole path at once: the walks' snapshots under the data dir, the peers
answering from them, and the stopped node pulling back exactly what it lost.
"""

from __future__ import annotations

import random
import re

from p2pfs import testnet
from p2pfs.storage.names import NAMES_FILE_NAME
from test_data_scale import files, write_chunks, write_names
from testnet_helpers import running_testnet, wait_for

NAMES = 300
# Every daemon's rounds come about once a second, so a heal takes a few rounds' time.
OVERRIDES = {"replication": {"anti_entropy_interval_s": 1.0}}
HEAL_TIMEOUT_S = 180.0
AE_ROUND = re.compile(r"anti-entropy round: [\d.]+ s, (\d+) chunks")


def chunk_files(node_dir) -> list:
    return sorted(p for sub in (node_dir / "data" / "chunks").iterdir() for p in sub.iterdir())


def rounds_logged(node_dir) -> int:
    return len(AE_ROUND.findall((node_dir / "daemon.log").read_text(errors="replace")))


def test_a_daemon_that_lost_a_tenth_of_its_chunks_pulls_them_back(tmp_path):
    entries, blobs = files(NAMES, random.Random(31))
    with running_testnet(tmp_path / "net", 3, OVERRIDES) as net:
        node_dirs = [testnet.resolve_node(net.directory, name) for name in net.names]
        for node_dir in node_dirs:  # the stores, written while the daemons are stopped
            testnet.stop_node(node_dir, kill=False)
            write_chunks(node_dir / "data", blobs)
            write_names(node_dir / "data" / NAMES_FILE_NAME, entries)
        for node_dir in node_dirs:
            testnet.start_node(node_dir)
        *peers, victim = node_dirs
        before = {d: rounds_logged(d) for d in peers}
        # The peers answer from their own walks: wait for a round of each over the whole store.
        wait_for(lambda: all(rounds_logged(d) > before[d] for d in peers), timeout_s=HEAL_TIMEOUT_S,
                 what="a round of each peer")
        testnet.stop_node(victim, kill=False)
        held = chunk_files(victim)
        assert len(held) == len(blobs)
        lost = random.Random(32).sample(held, len(held) // 10)
        for path in lost:
            path.unlink()
        testnet.start_node(victim)
        wait_for(lambda: len(chunk_files(victim)) == len(blobs), timeout_s=HEAL_TIMEOUT_S,
                 what=f"{victim.name} to hold its {len(lost)} lost chunks again")
        assert chunk_files(victim) == held
        assert (victim / "data" / "antientropy").is_dir()  # the walks' snapshots
