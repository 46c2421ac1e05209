"""The access log under a flood (``observe.AccessLogCollapsed``): a few lines per client per
interval, then a count of the rest by operation and outcome, told when the interval is over."""

from __future__ import annotations

import logging

from p2pfs import observe
from p2pfs.observe import AccessLogCollapsed

INTERVAL_S = 10.0
LINES_MAX = 3


def _collapsed(clients_max: int = 16) -> AccessLogCollapsed:
    return AccessLogCollapsed(INTERVAL_S, LINES_MAX, clients_max)


def test_a_few_requests_each_get_their_line():
    log = _collapsed()
    assert log.admit(0.0, "a", "put_file", "ok", 0.1) == (True, [])
    assert log.admit(1.0, "a", "get_file", "ok", 0.1) == (True, [])
    assert log.admit(2.0, "b", "get_file", "ok", 0.1) == (True, [])
    assert log.due(100.0) == []  # nothing was left untold


def test_a_flood_is_counted_by_operation_and_outcome_and_told_with_the_next_line():
    log = _collapsed()
    admitted = [log.admit(i * 0.01, "a", "put_file", "unavailable", 0.5)[0] for i in range(100)]
    assert admitted == [True] * LINES_MAX + [False] * (100 - LINES_MAX)
    assert not log.admit(1.0, "a", "get_file", "ok", 2.5)[0]
    assert log.due(INTERVAL_S - 0.01) == []
    logged, summaries = log.admit(INTERVAL_S, "a", "get_file", "ok", 0.1)
    assert logged
    assert summaries == [f"client a: {100 - LINES_MAX + 1} more requests not logged one by one in the last "
                         f"{INTERVAL_S:.1f} s: get_file ok 1, put_file unavailable {100 - LINES_MAX} (slowest 2.500 s)"]
    # A new interval: lines again.
    assert [log.admit(INTERVAL_S + 1, "a", "put_file", "ok", 0.1)[0] for _ in range(LINES_MAX - 1)] == \
        [True] * (LINES_MAX - 1)


def test_a_count_left_when_the_flood_stops_is_told_by_the_periodic_flush():
    log = _collapsed()
    for _ in range(LINES_MAX + 5):
        log.admit(0.0, "a", "put_file", "bad_request", 0.0)
    log.admit(0.0, "b", "put_file", "ok", 0.0)  # within its lines: nothing to tell
    assert log.due(1.0) == []
    (summary,) = log.due(INTERVAL_S + 1)
    assert summary.startswith("client a: 5 more requests")
    assert "put_file bad_request 5" in summary
    assert log.due(100 * INTERVAL_S) == []  # told once


def test_one_client_flooding_does_not_silence_another():
    log = _collapsed()
    for _ in range(50):
        log.admit(0.0, "hostile", "put_file", "unavailable", 0.0)
    assert log.admit(0.5, "honest", "get_file", "ok", 0.1) == (True, [])


def test_the_table_is_bounded_and_a_forgotten_client_is_told_first():
    log = _collapsed(clients_max=2)
    for _ in range(LINES_MAX + 2):
        log.admit(0.0, "a", "put_file", "ok", 0.0)
    log.admit(0.0, "b", "put_file", "ok", 0.0)
    logged, summaries = log.admit(0.0, "c", "put_file", "ok", 0.0)
    assert logged
    assert len(summaries) == 1 and summaries[0].startswith("client a: 2 more requests")


def test_the_handler_collapses_access_lines_and_leaves_others_alone(capsys):
    observe.setup_logging("info", "abcdef012345")  # its handler writes to the captured stderr
    logger = logging.getLogger("p2pfs.test.access")
    try:
        for i in range(observe.ACCESS_LOG_LINES_PER_INTERVAL_MAX + 10):
            logger.info("put_file for client c1: unavailable in 0.001 s",
                        extra={"operation": "put_file", "outcome": "unavailable", "client_id": "c1",
                               "duration_s": 0.001, "file_name": f"n{i}"})
            logger.info("not an access line %d", i)
    finally:
        logging.getLogger().handlers.clear()
    lines = capsys.readouterr().err.splitlines()
    assert sum("operation=put_file" in line and "outcome=unavailable" in line for line in lines) == \
        observe.ACCESS_LOG_LINES_PER_INTERVAL_MAX
    assert sum("not an access line" in line for line in lines) == observe.ACCESS_LOG_LINES_PER_INTERVAL_MAX + 10
