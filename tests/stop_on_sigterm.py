"""A pytest plugin: SIGTERM stops the suite the way Ctrl-C does, with every clean-up run.

Python's default for SIGTERM ends the process at once, so a CI runner or a user stopping the
suite that way left the running test's daemons, namespaces and temp dirs behind. As a
KeyboardInterrupt, the signal unwinds the test's ``with`` blocks and pytest tears down
every fixture.

Under pytest-xdist the tests run in worker processes, and the controller's own interruption
would only shut the workers down, killing their running tests before their clean-up. So the
controller passes SIGTERM on to each worker instead: each unwinds its test as above and tells
the controller it was interrupted, and the controller then stops. A second SIGTERM interrupts
the controller itself.
"""

from __future__ import annotations

import os
import signal

import pytest

# Longest the controller waits for a new worker to say its process id.
WORKER_PID_TIMEOUT_S = 60.0

_worker_pids: list[int] = []
_passed_on = False


def _interrupt(signum, frame) -> None:
    global _passed_on
    if _worker_pids and not _passed_on:
        _passed_on = True
        for pid in _worker_pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass  # that worker has finished already
        return
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config) -> None:
    signal.signal(signal.SIGTERM, _interrupt)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_newgateway(gateway) -> None:
    """The controller learns each worker's process id as the worker starts (pytest-xdist only)."""
    channel = gateway.remote_exec("import os; channel.send(os.getpid())")
    _worker_pids.append(channel.receive(WORKER_PID_TIMEOUT_S))
