"""A damaged name index on one node of five (real daemons): the node starts, serves, is refilled
from the replicas, gets through it succeed, fsck ends clean, and its log stays short.

Each kind of damage is done to a stopped node's ``names.sqlite``: a row whose name is
not UTF-8, a row whose manifest does not decode, and one 4 KiB page overwritten with
random bytes (page 1, the header and schema; page 2; and the last page).
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest
import trio

from p2pfs import testnet

from admin_helpers import samples, value
from damage_helpers import break_manifest, checkpoint, insert_invalid_utf8_row, overwrite_page, page_count
from testnet_helpers import Net, read_all, running_testnet, wait_for, write_all

pytestmark = pytest.mark.integration

NODES = 5
DAMAGED = "node3"
# Files written per case: enough that the damaged node holds a few pages of rows.
FILES = 60
# Short timings: the refill must not wait for these anyway, but fsck's view of the
# rest of the cluster settles sooner.
OVERRIDES = {
    "replication": {
        "anti_entropy_interval_s": 2.0,
        "hint_delivery_interval_s": 1.0,
        "scrub_bytes_per_s": 64 * 1024 * 1024,
    },
}
# Lines the damaged node may log from its restart to the end of a case, besides one
# per client request: start-up, one warning for the damage, a few for peers seen; a
# crash loop or a traceback per request writes thousands.
LOG_LINES_MAX = 60
WAIT_S = 120.0


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Net:
    with running_testnet(tmp_path_factory.mktemp("damaged") / "net", nodes=NODES, overrides=OVERRIDES) as net:
        yield net


def index_path(net: Net, node: str) -> Path:
    return net.directory / node / "data" / "names.sqlite"


def names_held(path: Path) -> set[bytes]:
    """The names in an index file, read without the daemon (WAL lets a reader in beside it)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM names")}
    finally:
        conn.close()


def put_files(net: Net, prefix: str, rng: random.Random) -> dict[str, bytes]:
    files = {f"{prefix}/f{i:03d}": rng.randbytes(rng.choice([0, 10, 5000])) for i in range(FILES)}
    write_all(net, files, through=["node1"])
    return files


def fsck_clean(net: Net, node: str) -> bool:
    report = json.loads(net.cli("fsck", "--json", node=node, check=False).stdout)
    return not any(
        report[key] for key in (
            "names_under_replicated", "chunks_under_replicated", "chunks_missing", "chunks_corrupt",
            "chunks_misplaced", "names_misplaced", "nodes_unreachable",
        )
    )


def damage_invalid_utf8(path: Path, held: set[bytes], net: Net) -> None:
    insert_invalid_utf8_row(path, net.node_id(DAMAGED))


def damage_manifest(path: Path, held: set[bytes], net: Net) -> None:
    break_manifest(path, sorted(held)[len(held) // 2].decode())


def damage_page(number: int):
    def damage(path: Path, held: set[bytes], net: Net) -> None:
        overwrite_page(path, page_count(path) if number == -1 else number, seed=number)
    return damage


CASES = {
    "invalid-utf8-row": damage_invalid_utf8,
    "undecodable-manifest-row": damage_manifest,
    "page-1": damage_page(1),
    "page-2": damage_page(2),
    "last-page": damage_page(-1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_node_with_a_damaged_name_index_serves_and_is_refilled(net: Net, case: str) -> None:
    rng = random.Random(case)
    files = put_files(net, case, rng)
    path = index_path(net, DAMAGED)
    ours = {name.encode() for name in files}
    wait_for(lambda: fsck_clean(net, "node1"), timeout_s=WAIT_S, what="every name and chunk at rf")
    net.stop(DAMAGED)
    checkpoint(path)
    held = names_held(path)
    assert held & ours, "the damaged node should hold some of this case's names"
    CASES[case](path, held, net)
    log = net.directory / DAMAGED / testnet.LOG_FILE
    lines_before = len(log.read_bytes().splitlines())

    net.start(DAMAGED)
    trio.run(lambda: testnet.wait_converged(net.directory, timeout_s=WAIT_S, started=[net.directory / DAMAGED]))
    # Gets through the damaged node, at once: its own bad replica is one failed replica.
    read_all(net, files, through=[DAMAGED])
    wait_for(lambda: held <= names_held(path), timeout_s=WAIT_S, what="the damaged node's index refilled")
    wait_for(lambda: fsck_clean(net, DAMAGED), timeout_s=WAIT_S, what="a clean fsck through the damaged node")
    read_all(net, files, through=[DAMAGED])

    assert net.status()[DAMAGED].running, "the node exited"
    # Counted where an operator looks: each case is one bad row or one rebuild since the restart.
    metrics = samples(net.status()[DAMAGED].status_page)
    assert value(metrics, "p2pfs_names_rows_quarantined_total") + value(metrics, "p2pfs_names_index_rebuilds_total") >= 1
    # The access log's line per client request aside (the test makes ~130 requests).
    new_lines = [line for line in log.read_bytes().splitlines()[lines_before:] if b" operation=" not in line]
    assert len(new_lines) <= LOG_LINES_MAX, b"\n".join(new_lines[-20:]).decode(errors="replace")
    assert not any(b"Traceback" in line for line in new_lines), b"\n".join(new_lines).decode(errors="replace")
