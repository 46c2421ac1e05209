"""Keep freed chunk buffers in the daemon's heap instead of faulting in fresh pages for each chunk.

A put or get moves every chunk through several 1 MiB buffers (a received frame,
a decoded message, an encoded one, a file read). glibc's malloc serves blocks of
128 KiB and more with their own ``mmap`` (its threshold rises with the largest
block freed, to at most 32 MiB, but each rise moves the trim threshold with it,
and the heap's top is given back as soon as it passes that), so the next chunk's
buffer is a fresh mapping whose 256 pages the kernel zero-fills one fault at a
time: about 0.8 CPU-seconds per GiB at each replica (docs/BENCHMARKS.md, "Where
the time goes").

Fixed thresholds keep such blocks in the heap and its freed space for reuse.
The cost is memory the process keeps after a burst: at most the trim threshold
above what is in use, per arena; the windows that bound chunks in flight
(``put_window_chunks``, ``get_window_chunks``, the net's stream credit) bound
what the heap grows to in the first place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap: every chunk (CHUNK_SIZE_BYTES_MAX is 4 MiB) and
# a frame of a few chunks. 32 MiB is glibc's largest allowed value on 64-bit systems.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# Free space kept at the top of a heap before it is returned to the kernel: a window
# of chunks (8 x 1 MiB per put or get, a few transfers at once) plus a margin.
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024


def keep_freed_buffers() -> bool:
    """Set the thresholds above (glibc only); False where there is no ``mallopt`` or it refused."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not done:
        log.info("malloc refused the buffer thresholds; chunk buffers stay in their own mappings")
    return done
