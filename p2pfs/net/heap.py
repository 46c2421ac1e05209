"""The C heap: keep freed chunk buffers for reuse, and give the free memory back after a burst.

**Keeping.** A put or get moves every chunk through several 1 MiB buffers (a
received frame, a decoded message, an encoded one, a file read). glibc's malloc
serves blocks of 128 KiB and more with their own ``mmap`` (its threshold rises
with the largest block freed, to at most 32 MiB, but each rise moves the trim
threshold with it, and the heap's top is given back as soon as it passes that),
so the next chunk's buffer is a fresh mapping whose 256 pages the kernel
zero-fills one fault at a time: about 0.8 CPU-seconds per GiB at each replica,
and 1.0-1.4 in the CLI of a get (docs/BENCHMARKS.md). Fixed thresholds
(``keep_freed_buffers``) keep such blocks in the heap and its freed space for
reuse. The cost is memory the process keeps after a burst: at most the trim
threshold above what is in use, per arena; the windows that bound chunks in
flight (``put_window_chunks``, ``get_window_chunks``, the net's stream credit)
bound what the heap grows to in the first place. The daemon sets them at start
(``replication.memory``), a client when it starts a get.

**One arena.** glibc gives each new thread that allocates an arena of its own (up to 8 per
core), and a block freed goes back to the arena it came from.
A chunk read from disk is allocated in a worker thread (``trio.to_thread``), so each worker
thread's arena came to keep its own window of freed chunk buffers, each below the trim
threshold: a get's coordinator kept about 10 MiB per arena, and as repeated gets brought
more worker threads in, its RSS rose from 129 to 156 MiB over four 1 GiB gets (8 arenas;
docs/BENCHMARKS.md). ``ARENAS_MAX`` keeps every thread on one arena, where the buffers one
thread frees are the ones the next reuses, and the trim threshold bounds the free memory
kept once, not once per arena. What it could cost is contention, but the threads here
allocate under Python's GIL (a bytes object, a buffer), so two rarely want the heap at once.

**Giving back.** glibc keeps blocks a process frees in its heap for reuse, and
``keep_freed_buffers`` raises its thresholds on purpose. The cost
shows after abuse: 100 connections that filled the node's memory budget with
partial frames, once closed, left RSS about the budget above the idle size for
good. ``malloc_trim(0)`` (glibc 2.8+: every arena, and free pages inside the
heap, not only its top) gives that back. The budget (``budget.MemoryBudget``)
says when: after its use rose high and fell back near zero, so that a node
moving chunks at an ordinary pace keeps its reused buffers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Callable

log = logging.getLogger(__name__)

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Blocks below this come from the heap: every chunk (CHUNK_SIZE_BYTES_MAX is 4 MiB) and
# a frame of a few chunks. 32 MiB is glibc's largest allowed value on 64-bit systems.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# Free space kept at the top of a heap before it is returned to the kernel: a window
# of chunks (8 x 1 MiB per put or get, a few transfers at once) plus a margin.
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024
# Arenas the process's threads share: one (see the module docstring). Threads that already
# have an arena keep it, so the thresholds are set before the first worker thread starts.
ARENAS_MAX = 1


_kept: bool | None = None  # what keep_freed_buffers did, once per process


def keep_freed_buffers() -> bool:
    """Set the thresholds above (glibc only); False where there is no ``mallopt`` or it refused.

    Done once per process: a client calls it for every get, and finding the C library
    runs ``ldconfig``."""
    global _kept
    if _kept is None:
        _kept = _set_thresholds()
    return _kept


def _set_thresholds() -> bool:
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = (
        bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
        and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
        and bool(mallopt(_M_ARENA_MAX, ARENAS_MAX))
    )
    if not done:
        log.info("malloc refused the buffer thresholds; chunk buffers stay in their own mappings")
    return done


_malloc_trim: Callable[[int], int] | None = None
_looked_up = False


def _lookup() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator is left alone
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return trim


def give_back_free_heap() -> bool:
    """``malloc_trim(0)`` where glibc has it: True if memory went back to the system.

    A few milliseconds per 100 MiB of heap; the caller keeps it rare.
    """
    global _malloc_trim, _looked_up
    if not _looked_up:
        _malloc_trim, _looked_up = _lookup(), True
    return _malloc_trim is not None and bool(_malloc_trim(0))
