"""Keep freed chunk buffers in the daemon's heap instead of faulting in fresh pages for each chunk.

The daemon calls ``keep_freed_buffers`` at start; it lives in ``net.heap`` (why and
at what cost is said there), where a client's get can reach it too.
"""

from __future__ import annotations

from p2pfs.net.heap import keep_freed_buffers

__all__ = ["keep_freed_buffers"]
