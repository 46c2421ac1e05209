"""Clock skew for one daemon: offsets ``time.time`` and ``time.time_ns`` by seconds read from a file.

The chaos suite puts this directory on a daemon's PYTHONPATH and names the
file in ``P2PFS_CHAOS_CLOCK_FILE``; Python imports ``sitecustomize`` at start-up,
before any p2pfs module, so every wall-clock read of the daemon (HLC stamps,
incarnations, hint ages, GC ages) sees the offset. The monotonic clock (trio's
timers, timeouts) is left alone, as on a real machine whose wall clock is
wrong. The file holds one number, the offset in seconds, and is re-read at most
every ``REREAD_S`` seconds, so the nemesis can move the clock of a running
daemon without restarting it.

Why not libfaketime: under it, CPython 3.11's ``time.sleep`` fails with EINVAL
and the GIL's timed waits stall (its wrappers of clock_nanosleep and
pthread_cond_timedwait mishandle CLOCK_MONOTONIC when only the wall clock is
faked), which froze the daemons for seconds at a time.

Not imported by anything in p2pfs itself: only by daemons the chaos suite starts.
"""

import os
import time

CLOCK_FILE_ENV = "P2PFS_CHAOS_CLOCK_FILE"
# Seconds between two reads of the offset file: the skew's resolution in time.
REREAD_S = 0.25


def _install(path: str) -> None:
    real_time, real_time_ns, monotonic = time.time, time.time_ns, time.monotonic
    state = {"offset_ns": 0, "read_at_s": -REREAD_S}

    def offset_ns() -> int:
        now_s = monotonic()
        if now_s - state["read_at_s"] >= REREAD_S:
            state["read_at_s"] = now_s
            try:
                with open(path) as f:
                    state["offset_ns"] = int(float(f.read().strip() or 0) * 1e9)
            except (OSError, ValueError):
                pass  # keep the last offset: the file is replaced atomically, so this is rare
        return state["offset_ns"]

    def skewed_time() -> float:
        return real_time() + offset_ns() / 1e9

    def skewed_time_ns() -> int:
        return real_time_ns() + offset_ns()

    time.time = skewed_time
    time.time_ns = skewed_time_ns


if os.environ.get(CLOCK_FILE_ENV):
    _install(os.environ[CLOCK_FILE_ENV])
