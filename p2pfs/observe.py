"""Structured logs: one line per event, to stderr, as text or as JSON.

Text is logfmt-like so that both people and grep read it::

    2026-11-25T13:42:49.123Z INFO node=2fb11f969eff p2pfs.net: rejected 127.0.0.1:4242: ...

JSON (``[admin] log_format = "json"``) is one object per line for a log
shipper, with the fields a query filters on::

    {"time": "2026-11-25T13:42:49.123Z", "level": "INFO", "node": "2fb11f969eff",
     "logger": "p2pfs.net", "event": "rejected %s: %s", "message": "rejected 127.0.0.1:4242: ...",
     "peer": "...", "operation": "...", "name": "...", "client_id": "...", "outcome": "ok",
     "duration_s": 0.012}

``event`` is the message before its arguments are filled in: the same for every
occurrence of an event, so it groups and counts without parsing the message.
``peer``, ``operation``, ``name``, ``client_id``, ``outcome`` and ``duration_s`` appear when
the call passes them (``log.info(..., extra={"peer": ...})``; a file's name is
passed as ``file_name``, because ``LogRecord`` keeps ``name`` for the logger).

The level and the format can change while the daemon runs (SIGHUP reload, or
the admin listener): ``set_level`` and ``set_format`` act on the one handler.
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import time

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMATS = ("text", "json")
# Fields a call may attach with ``extra=`` -> their key in a line.
EXTRA_FIELDS = {"peer": "peer", "operation": "operation", "file_name": "name", "client_id": "client_id",
                "outcome": "outcome", "duration_s": "duration_s"}
# The access log (one INFO line per client request, a record with ``client_id`` and
# ``operation``) is collapsed per client (``AccessLogCollapsed``): at most this many lines of
# one client per interval, then one line with the count of the rest by operation and outcome.
# 5 lines and a summary per 10 s is 36 lines a minute however hard one client pushes (the
# issue's goal: under 100 lines a minute under abuse, with the node's own warnings), while
# an operator still sees each request of a client that makes a few.
ACCESS_LOG_LINES_PER_INTERVAL_MAX = 5
ACCESS_LOG_INTERVAL_S = 10.0
# Clients whose access-log counts are kept at once; beyond it the least recently seen is told
# (its summary logged) and forgotten, so the table stays bounded however many clients there are.
ACCESS_LOG_CLIENTS_MAX = 1024


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def __init__(self, node_tag: str) -> None:
        super().__init__()
        self._node_tag = node_tag

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} node={self._node_tag} {record.name}: {record.getMessage()}"
        extras = " ".join(f"{field}={getattr(record, key)}" for key, field in EXTRA_FIELDS.items()
                          if hasattr(record, key))
        if extras:
            line += f" {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self, node_tag: str) -> None:
        super().__init__()
        self._node_tag = node_tag

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "time": _timestamp(record),
            "level": record.levelname,
            "node": self._node_tag,
            "logger": record.name,
            "event": str(record.msg),
            "message": record.getMessage(),
        }
        for key, field in EXTRA_FIELDS.items():
            if hasattr(record, key):
                fields[field] = getattr(record, key)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, default=str)


_FORMATTERS = {"text": TextFormatter, "json": JsonFormatter}
_handler: logging.Handler | None = None
_node_tag = "-"
_access_log: "_AccessLogFilter | None" = None


def setup_logging(level: str, node_tag: str, log_format: str = "text") -> None:
    """Send every p2pfs log line to stderr, tagged with the node's short id."""
    global _handler, _node_tag, _access_log
    _node_tag = node_tag
    _handler = logging.StreamHandler(sys.stderr)
    _access_log = _AccessLogFilter()
    _handler.addFilter(_access_log)
    root = logging.getLogger()
    root.handlers[:] = [_handler]
    set_format(log_format)
    set_level(level)


def set_level(level: str) -> None:
    """Change the level of every p2pfs logger at once (run time, no restart)."""
    if level not in LEVELS:
        raise ValueError(f"{level!r} is not one of {', '.join(LEVELS)}")
    logging.getLogger().setLevel(LEVELS[level])


def set_format(log_format: str) -> None:
    """Switch the handler between text and JSON lines."""
    if log_format not in _FORMATTERS:
        raise ValueError(f"{log_format!r} is not one of {', '.join(FORMATS)}")
    assert _handler is not None, "setup_logging first"
    _handler.setFormatter(_FORMATTERS[log_format](_node_tag))


def current_level() -> str:
    level = logging.getLogger().level
    return next((name for name, value in LEVELS.items() if value == level), logging.getLevelName(level).lower())


class Collapsed:
    """One log line per interval for an event that can repeat without bound, with a count.

    A flood (silent connections, refused dials) would otherwise write one line
    per occurrence: tens of thousands a minute, which fills disks and buries the
    line that matters. The first occurrence is logged at once; later ones within
    ``interval_s`` are only counted, and the first one after the interval is
    logged with that count ("... (and 812 more in the last 10.0 s)"). A count
    left when the flood stops is told with the next occurrence, not lost.

    Pure: the caller passes ``now_s`` (monotonic seconds), so it is tested
    without a clock.
    """

    def __init__(self, logger: logging.Logger, level: int, interval_s: float) -> None:
        assert interval_s > 0, interval_s
        self._logger = logger
        self._level = level
        self._interval_s = interval_s
        self._logged_at_s: float | None = None
        self._suppressed = 0

    def log(self, now_s: float, msg: str, *args: object, extra: dict[str, object] | None = None) -> None:
        if self._logged_at_s is not None and now_s - self._logged_at_s < self._interval_s:
            self._suppressed += 1
            return
        if self._suppressed:
            since_s = now_s - self._logged_at_s
            msg = f"{msg} (and %d more in the last %.1f s)"
            args = (*args, self._suppressed, since_s)
        self._logger.log(self._level, msg, *args, extra=extra)
        self._logged_at_s = now_s
        self._suppressed = 0


class PeerCollapsed:
    """A remote peer's misbehaviour: one line per peer and kind of event per interval, at WARNING.

    Not ERROR: ERROR is kept for faults of this node, which an operator must act
    on; a peer that breaks the protocol or stalls is that peer's operator's
    problem, and a hostile one must not be able to fill our log. Each line
    carries the peer's id (``peer=``), so the peer can be found and, if need be,
    revoked. The kind of event is the message template: a peer's protocol errors
    and its stalls are counted apart. One flood from many connections of the same
    certificate is still one peer.

    At most ``peers_max`` (peer, kind) pairs are remembered, the least recently
    seen forgotten first (with its count, which is then not told): the table
    stays bounded however many peers misbehave.
    """

    def __init__(self, logger: logging.Logger, interval_s: float, peers_max: int) -> None:
        assert peers_max > 0, peers_max
        self._logger = logger
        self._interval_s = interval_s
        self._peers_max = peers_max
        self._by_peer: collections.OrderedDict[tuple[str, str], Collapsed] = collections.OrderedDict()

    def log(self, now_s: float, peer_id: str, msg: str, *args: object) -> None:
        """``peer_id``: the short id the log shows for the peer."""
        key = (peer_id, msg)
        collapsed = self._by_peer.get(key)
        if collapsed is None:
            collapsed = self._by_peer[key] = Collapsed(self._logger, logging.WARNING, self._interval_s)
            if len(self._by_peer) > self._peers_max:
                self._by_peer.popitem(last=False)
        else:
            self._by_peer.move_to_end(key)
        collapsed.log(now_s, msg, *args, extra={"peer": peer_id})


class _ClientRequests:
    """One client's access-log lines in the current interval, and what was not logged of them."""

    __slots__ = ("window_started_s", "logged", "untold", "slowest_s")

    def __init__(self, now_s: float) -> None:
        self.window_started_s = now_s
        self.logged = 0
        self.untold: collections.Counter[tuple[str, str]] = collections.Counter()  # (operation, outcome) -> count
        self.slowest_s = 0.0


class AccessLogCollapsed:
    """The access log under a flood: each client's first lines per interval, then a count of the rest.

    A client that makes a few requests gets a line for each (what it asked, for
    which name, how it ended, how long it took). One that makes thousands (a
    hostile one, or a script gone wrong) gets ``lines_max`` lines per
    ``interval_s`` and then, once the interval is over, one line telling how
    many more requests it made, by operation and outcome, and the slowest: what
    an operator needs to see who pushed how hard and what it got, without one
    line per request. The node's metrics count every request as before.

    Pure: the caller passes ``now_s`` (monotonic seconds). ``admit`` says whether
    a line is logged; ``due`` returns the summaries whose interval is over (the
    caller logs them: the next line of the same client, or a periodic flush, so a
    count is told within about an interval of the flood's end).
    """

    def __init__(self, interval_s: float, lines_max: int, clients_max: int) -> None:
        assert interval_s > 0, interval_s
        assert lines_max > 0, lines_max
        assert clients_max > 0, clients_max
        self._interval_s = interval_s
        self._lines_max = lines_max
        self._clients_max = clients_max
        self._by_client: collections.OrderedDict[str, _ClientRequests] = collections.OrderedDict()

    def admit(self, now_s: float, client_id: str, operation: str, outcome: str,
              duration_s: float) -> tuple[bool, list[str]]:
        """Whether this request's line is logged, and summaries to log before it (``summary``)."""
        summaries = []
        client = self._by_client.get(client_id)
        if client is not None and now_s - client.window_started_s >= self._interval_s:
            summaries.extend(self._summary(now_s, client_id, client))
            client = None
        if client is None:
            client = self._by_client[client_id] = _ClientRequests(now_s)
            if len(self._by_client) > self._clients_max:
                oldest_id, oldest = self._by_client.popitem(last=False)
                summaries.extend(self._summary(now_s, oldest_id, oldest))
        self._by_client.move_to_end(client_id)
        if client.logged < self._lines_max:
            client.logged += 1
            return True, summaries
        client.untold[(operation, outcome)] += 1
        client.slowest_s = max(client.slowest_s, duration_s)
        return False, summaries

    def due(self, now_s: float) -> list[str]:
        """Summaries of the clients whose interval is over; those clients are forgotten."""
        summaries = []
        for client_id in [c for c, r in self._by_client.items() if now_s - r.window_started_s >= self._interval_s]:
            summaries.extend(self._summary(now_s, client_id, self._by_client.pop(client_id)))
        return summaries

    def _summary(self, now_s: float, client_id: str, client: _ClientRequests) -> list[str]:
        self._by_client.pop(client_id, None)
        if not client.untold:
            return []
        counts = ", ".join(f"{operation} {outcome} {count}"
                           for (operation, outcome), count in sorted(client.untold.items()))
        total = sum(client.untold.values())
        return [f"client {client_id}: {total} more requests not logged one by one in the last "
                f"{now_s - client.window_started_s:.1f} s: {counts} (slowest {client.slowest_s:.3f} s)"]


class _AccessLogFilter(logging.Filter):
    """Applies ``AccessLogCollapsed`` to the handler's records; the driver of that pure core
    (it reads the monotonic clock). Records of other kinds pass untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.collapsed = AccessLogCollapsed(ACCESS_LOG_INTERVAL_S, ACCESS_LOG_LINES_PER_INTERVAL_MAX,
                                            ACCESS_LOG_CLIENTS_MAX)
        self._log = logging.getLogger("p2pfs.access")

    def filter(self, record: logging.LogRecord) -> bool:
        client_id = getattr(record, "client_id", None)
        operation = getattr(record, "operation", None)
        if client_id is None or operation is None:
            return True
        admitted, summaries = self.collapsed.admit(
            time.monotonic(), str(client_id), str(operation), str(getattr(record, "outcome", "-")),
            float(getattr(record, "duration_s", 0.0)),
        )
        self._tell(summaries)
        return admitted

    def flush(self) -> None:
        self._tell(self.collapsed.due(time.monotonic()))

    def _tell(self, summaries: list[str]) -> None:
        for summary in summaries:
            self._log.info("%s", summary)


def tell_collapsed_access_log() -> None:
    """Log the counts of access-log lines collapsed in intervals now over (``AccessLogCollapsed``).
    The daemon calls it every ``ACCESS_LOG_INTERVAL_S``, so that a flood's count is told when it
    stops, not only with the client's next request."""
    if _access_log is not None:
        _access_log.flush()
