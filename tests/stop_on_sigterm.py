"""A pytest plugin: SIGTERM stops the suite the way Ctrl-C does, with every clean-up run.

Python's default for SIGTERM ends the process at once, so a CI runner or a user stopping the
suite that way left the running test's daemons, namespaces and temp dirs behind. As a
KeyboardInterrupt, the signal unwinds the test's ``with`` blocks and pytest tears down
every fixture.
"""

from __future__ import annotations

import signal


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
