"""Stopping the suite with SIGTERM leaves no daemon behind (the running test's clean-up runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from p2pfs import testnet

from testnet_helpers import wait_for

TESTS_DIR = Path(__file__).parent
STOP_TIMEOUT_S = 120.0  # under xdist, the workers shut down too
UP_TIMEOUT_S = 120.0

# A test that starts a one-node network, says so, then waits to be stopped.
HELD_TEST = """
import time
from pathlib import Path
from testnet_helpers import running_testnet

def test_held(tmp_path):
    with running_testnet(Path({net!r}), nodes=1):
        Path({ready!r}).write_text("up")
        time.sleep({hold_s})  # stopped by the signal long before this ends
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose; only its parent (not us) can reap it.
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


# Alone, and as scripts/test.sh runs the suite: two pytest-xdist workers (the held test on one, the other idle).
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_sigterm_to_the_suite_stops_the_running_tests_daemons(tmp_path, workers):
    net, ready = tmp_path / "net", tmp_path / "ready"
    test_file = tmp_path / "test_held.py"
    test_file.write_text(textwrap.dedent(HELD_TEST.format(net=str(net), ready=str(ready), hold_s=600)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    suite = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "stop_on_sigterm",
         "--rootdir", str(tmp_path), *workers, str(test_file)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: ready.exists() or suite.poll() is not None, timeout_s=UP_TIMEOUT_S,
                 what="the held test's network to start")
        assert ready.exists(), suite.communicate()[0].decode(errors="replace")
        pids = [proc.pid for proc in testnet.status(net)]
        assert pids and all(_alive(pid) for pid in pids)
        suite.send_signal(signal.SIGTERM)
        suite.wait(timeout=STOP_TIMEOUT_S)
        assert not [pid for pid in pids if _alive(pid)], "daemons survived the suite's SIGTERM"
    finally:
        if suite.poll() is None:
            suite.kill()
            suite.wait()
        if net.exists():
            testnet.down(net, timeout_s=10.0)
