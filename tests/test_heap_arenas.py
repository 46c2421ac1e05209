"""Buffers freed in worker threads are kept once per process, not once per thread (``net.heap``).

A get's coordinator reads every chunk in a worker thread. With an arena per thread,
each arena kept its own freed chunk buffers below the trim threshold, and the RSS rose
with every worker thread that repeated gets brought in (129 to 156 MiB over four 1 GiB
gets). The check runs in a fresh process: the heap's settings must be in place before its
first worker thread allocates, as the daemon does at start.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from p2pfs.net import heap

MIB = 1024 * 1024
# Worker threads, each alive through the whole run, and the 1 MiB buffers each holds at its turn.
THREADS = 8
BUFFERS_PER_THREAD = 16
# RSS growth allowed: one thread's buffers, kept for reuse, and a margin. Kept once per
# thread, the growth would be THREADS x BUFFERS_PER_THREAD MiB (128).
GROWTH_MIB_MAX = 2 * BUFFERS_PER_THREAD

_SCRIPT = textwrap.dedent(
    f"""
    import threading
    from p2pfs.net import heap

    def rss_mib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    assert heap.keep_freed_buffers()
    turns = [threading.Event() for _ in range({THREADS} + 1)]
    done = threading.Event()

    def work(index):
        turns[index].wait(60)
        held = [b"\\x01" * {MIB} for _ in range({BUFFERS_PER_THREAD})]  # written: resident
        del held
        turns[index + 1].set()
        done.wait(60)  # alive until every thread had its turn: no arena passed on by an exit

    threads = [threading.Thread(target=work, args=(i,)) for i in range({THREADS})]
    before_mib = rss_mib()
    for thread in threads:
        thread.start()
    turns[0].set()
    assert turns[{THREADS}].wait(60)
    print(rss_mib() - before_mib)
    done.set()
    for thread in threads:
        thread.join(60)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc")
def test_buffers_freed_in_many_threads_are_kept_once():
    if not heap.keep_freed_buffers():
        pytest.skip("no glibc mallopt here: nothing to tune")
    ran = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    growth_mib = float(ran.stdout)
    assert growth_mib < GROWTH_MIB_MAX, f"RSS grew {growth_mib:.0f} MiB over {THREADS} threads' turns"
    # And still kept for reuse, not given back (below the trim threshold): the next chunk's buffer
    # is one of these, not fresh pages.
    assert growth_mib >= BUFFERS_PER_THREAD / 2, f"RSS grew only {growth_mib:.0f} MiB"
