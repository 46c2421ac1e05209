"""Give the C heap's free memory back to the system after a burst of buffered input.

glibc keeps blocks a process frees in its heap for reuse, and
``replication.memory`` raises its thresholds on purpose, so that the 1 MiB
chunk buffers of a transfer are reused instead of faulted in afresh. The cost
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
from typing import Callable

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
