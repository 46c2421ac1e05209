"""Structured logs: one line per event, key=value fields, to stderr.

The format is logfmt-like so that both people and grep read it::

    2026-11-25T13:42:49.123Z INFO node=2fb11f969eff p2pfs.net: rejected 127.0.0.1:4242: ...
"""

from __future__ import annotations

import logging
import sys
import time

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Formatter(logging.Formatter):
    def __init__(self, node_tag: str) -> None:
        super().__init__()
        self._node_tag = node_tag

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{self.formatTime(record)} {record.levelname} node={self._node_tag} "
            f"{record.name}: {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str, node_tag: str) -> None:
    """Send every p2pfs log line to stderr, tagged with the node's short id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(node_tag))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
