"""A short run of the fuzzer (``bench.py fuzz``): the decoder in process and a live node over TLS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
DECODER_INPUTS = 5000
LIVE_INPUTS = 1000
# An idle node is ~55 MB; a fuzzed one must stay near that, far below what a leak
# over a thousand inputs would make it.
RSS_MB_MAX = 200
RUN_TIMEOUT_S = 300


def test_a_short_fuzz_run_finds_no_crash_no_hang_and_the_node_stays_small(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCH), "fuzz", "--decoder-inputs", str(DECODER_INPUTS),
         "--live-inputs", str(LIVE_INPUTS), "--seed", "7", "--keep", str(tmp_path / "fuzz"), "--json"],
        capture_output=True, timeout=RUN_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr.decode()
    figures = json.loads(result.stdout)
    assert figures["decoder_inputs"] == DECODER_INPUTS
    assert figures["decoder_crashes"] == 0, result.stderr.decode()
    assert figures["live_inputs"] >= LIVE_INPUTS
    assert figures["live_crashes"] == 0 and figures["live_hangs"] == 0, result.stderr.decode()
    assert figures["live_health_checks"] >= 1
    assert figures["live_internal_errors"] == 0, "a handler failed with a traceback: see the node's log"
    assert figures["node_rss_mb_max"] < RSS_MB_MAX
