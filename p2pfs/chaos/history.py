"""What happened in a chaos run, as JSON lines: the header, every operation, every fault.

The file is written as the run goes (one flushed line per record), so it
survives the harness being killed. Its first line is the header, which holds
everything ``--replay`` needs to run the same seed and schedule again. Times
are seconds since the run started, on the harness's monotonic clock.

An operation's outcome is one of:

* ``ok``: acknowledged; it took effect.
* ``fail``: definitely did not take effect (the node could not be reached, so
  nothing was sent; or ``rm`` answered "not found", which writes nothing).
* ``info``: indeterminate; it may or may not have taken effect, now or later.

``answered`` says whether the coordinating node itself replied (success or an
error of its own). If it did, whatever version the operation wrote was stamped
before ``complete_s``; if not (the client timed out or the connection broke),
the coordinator may still be working, and the stamp may come later.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import IO, Iterator

HISTORY_FORMAT = 1

PUT, GET, DELETE = "put", "get", "delete"
OK, FAIL, INFO = "ok", "fail", "info"
ABSENT = "absent"  # what a get of a missing (or deleted) name reads as


@dataclasses.dataclass(slots=True)
class Op:
    """One client operation, from invocation to outcome."""

    op_id: int
    worker: int
    kind: str  # put, get or delete
    name: str
    node: str  # the node that served it (the coordinator), or the last one tried
    invoke_s: float
    size_bytes: int = 0  # put: bytes written
    value: str = ""  # put: sha256 of what was written; get: sha256 of what was read, or ABSENT
    complete_s: float | None = None
    outcome: str = ""
    answered: bool = False
    error: str = ""
    attempts: int = 1  # nodes tried: more than one when the client failed over

    def __post_init__(self) -> None:
        assert self.kind in (PUT, GET, DELETE), self.kind
        assert self.outcome in ("", OK, FAIL, INFO), self.outcome

    @property
    def is_write(self) -> bool:
        return self.kind in (PUT, DELETE)

    def as_json(self) -> dict:
        return {"type": "op", **dataclasses.asdict(self)}


@dataclasses.dataclass(slots=True)
class Fault:
    """One fault the nemesis injected: what, on whom, from when to when."""

    kind: str
    targets: list[str]
    start_s: float
    end_s: float | None = None
    params: dict = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict:
        return {"type": "fault", **dataclasses.asdict(self)}


class HistoryWriter:
    """Appends records to a JSON-lines file, one flushed line each."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(path, "w", encoding="utf-8")
        self.write({"type": "header", "format": HISTORY_FORMAT, **header})

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_records(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None


def read_header(path: Path) -> dict:
    """The header of a saved history: the parameters to replay it with."""
    first = next(read_records(path), None)
    if first is None or first.get("type") != "header":
        raise ValueError(f"{path} does not start with a chaos history header")
    if first.get("format") != HISTORY_FORMAT:
        raise ValueError(f"{path} is history format {first.get('format')}, this suite reads {HISTORY_FORMAT}")
    return first


def read_history(path: Path) -> tuple[dict, list[Op], list[Fault]]:
    """Header, operations and faults of a saved history (for replay and for the checker)."""
    header = read_header(path)
    ops: list[Op] = []
    faults: list[Fault] = []
    for record in read_records(path):
        kind = record.pop("type")
        if kind == "op":
            ops.append(Op(**record))
        elif kind == "fault":
            faults.append(Fault(**record))
    return header, ops, faults
