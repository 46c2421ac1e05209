"""What scripts/bench_pernode.py reads off a full-scale run: every round's line, each round's traffic.

The full-scale run takes hours (docs/BENCHMARKS.md), so what it parses and counts is
checked here on lines and samples written out by hand, in the formats the daemons write.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_pernode.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_pernode", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOG = """\
2026-11-27T16:18:50.772Z INFO node=ec98 p2pfs.membership.driver: ec98: membership running at 127.0.0.1:59525
2026-11-27T16:19:01.000Z INFO node=ec98 p2pfs.replication.antientropy: anti-entropy round: skipped, the ring has no member but this node; 1800000 chunks held
2026-11-27T16:27:13.953Z INFO node=ec98 p2pfs.replication.antientropy: anti-entropy round: 491.190 s, 1800000 chunks and 1000000 names walked, 2 peers, 0 chunks pulled, 0 keys short
2026-11-27T16:37:25.733Z INFO node=ec98 p2pfs.replication.antientropy: anti-entropy round: 600.031 s, 1800151 chunks and 1000000 names walked, 2 peers, 30853 chunks pulled, 40543 keys short, exchanges from the walks of 2 rounds
2026-11-27T16:37:25.743Z WARNING node=ec98 p2pfs.replication.background: anti-entropy round cut at its deadline of 600 s
2026-11-27T16:47:25.800Z WARNING node=ec98 p2pfs.replication.background: anti-entropy round cut at its deadline of 600 s
2026-11-27T16:39:15.000Z INFO node=ec98 p2pfs.replication.gc: gc round: 310.800 s, 2000000 references from 1 nodes, 2000000 chunks judged, 0 removed, 0 candidates
"""


def test_every_anti_entropy_round_is_read_the_skipped_and_the_continued_ones_too(bench):
    found = bench.rounds_in(LOG, bench.AE_ROUND)
    assert [(r[0][11:19], r[1], r[2], r[5]) for r in found] == [
        ("16:19:01", "0", "1800000", "0"),  # skipped: no time, its chunks held
        ("16:27:13", "491.190", "1800000", "0"),
        ("16:37:25", "600.031", "1800151", "30853"),
        ("16:47:25", "600", "-", "0"),  # cut in its walk: no line of its own, its deadline's seconds
    ]
    assert [r[7] for r in found] == ["skipped", None, "2", "cut in its walk"]
    assert len(bench.rounds_in(LOG, bench.GC_ROUND)) == 1


def test_a_round_cut_in_its_walk_is_read_from_its_own_line_once_with_its_traffic(bench):
    log = (
        "2026-11-27T20:10:00.000Z INFO node=ec98 p2pfs.replication.antientropy: anti-entropy round: "
        "600.012 s, cut in its walk (the next round goes on with it), 24080 bytes sent and 10 received in 4 requests\n"
        "2026-11-27T20:10:00.010Z WARNING node=ec98 p2pfs.replication.background: anti-entropy round cut at its "
        "deadline of 600 s\n"
    )
    (found,) = bench.rounds_in(log, bench.AE_ROUND)
    assert (found[0][11:19], found[1], found[2], found[7]) == ("20:10:00", "600.012", "-", "cut in its walk")
    assert found[8:] == ("24080", "10", "4")


def test_a_rounds_own_traffic_is_read_from_its_line_and_older_lines_still_parse(bench, capsys, tmp_path):
    counted = """\
2026-11-27T20:01:00.000Z INFO node=ec98 p2pfs.replication.antientropy: anti-entropy round: 12.500 s, 1800 chunks and 1000 names walked, 2 peers, 3 chunks pulled, 4 keys short, 52311 bytes sent and 1048700 received in 18 requests
2026-11-27T20:02:00.000Z INFO node=ec98 p2pfs.replication.antientropy: anti-entropy round: 600.031 s, 1800151 chunks and 1000000 names walked, 2 peers, 30853 chunks pulled, 40543 keys short, exchanges from the walks of 2 rounds, 9 bytes sent and 8 received in 1 requests
2026-11-27T20:03:00.000Z INFO node=ec98 p2pfs.replication.gc: gc round: 3.100 s, 2000 references from 3 nodes, 2000 chunks judged, 5 removed, over 4096 candidates, 700 bytes sent and 2500000 received in 6 requests
"""
    ae = bench.rounds_in(counted, bench.AE_ROUND)
    assert [(r[1], r[6], r[7], r[8:]) for r in ae] == [
        ("12.500", "4", None, ("52311", "1048700", "18")),
        ("600.031", "40543", "2", ("9", "8", "1")),
    ]
    (gc_round,) = bench.rounds_in(counted, bench.GC_ROUND)
    assert gc_round[6:] == ("over 4096", "700", "2500000", "6")
    # Lines of daemons that did not count: the same fields, the traffic unknown.
    assert [r[8:] for r in bench.rounds_in(LOG, bench.AE_ROUND)] == [(None, None, None)] * 4
    assert bench.rounds_in(LOG, bench.GC_ROUND)[0][6:] == ("0", None, None, None)
    (tmp_path / "node1.log").write_text(counted + LOG)
    bench.report(tmp_path)
    table = capsys.readouterr().out
    assert "| 0.1 / 1.0 (18) |" in table and "| 0.0 / 2.5 (6) |" in table
    (older,) = [row for row in table.splitlines() if "| 16:27:13 |" in row]
    assert older.endswith("| 0 | 0 | - | nan | nan |"), older  # its traffic unknown


def test_a_rounds_traffic_is_what_was_sent_in_its_window_closed_sockets_included(bench, tmp_path):
    sampler = bench.Sampler(tmp_path)
    pids = {10: "node1", 20: "node2"}

    def ss(*sockets: tuple[int, str, int]) -> str:
        return "".join(f"ESTAB 0 0 127.0.0.1:{port} 127.0.0.1:9 users:((\"python\",pid={pid},fd=5))\n"
                       f"\t cubic bytes_sent:{sent} bytes_acked:{sent}\n" for pid, port, sent in sockets)

    sampler._count_sent(pids, ss((10, 1001, 500), (20, 2001, 40)))
    sampler._count_sent(pids, ss((10, 1001, 700), (10, 1002, 100), (20, 2001, 40)))
    # node1's first socket closed after sending 800 in all (300 of them unseen), a new one opened.
    assert sampler._count_sent(pids, ss((10, 1002, 150), (10, 1003, 30), (20, 2001, 90))) == {"node1": 180,
                                                                                            "node2": 90}
    assert sampler.sent_total == {"node1": 880, "node2": 90}

    series = tmp_path / "traffic.tsv"
    series.write_text("100.0\tnode1=0\tnode2=0\n101.0\tnode1=500\tnode2=40\n102.0\tnode1=880\tnode2=90\n")
    samples = bench.read_series(series)
    assert bench.sent_between(samples, "node1", 100.5, 102.0) == 880
    assert bench.sent_between(samples, "node1", 101.0, 102.5) == 380
    assert bench.sent_between(samples, None, 101.0, 102.0) == 430
