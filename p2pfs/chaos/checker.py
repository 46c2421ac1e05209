"""The checker: which final states a history allows, and what the cluster actually holds.

The product promises last-writer-wins on the writer's clock: every version of
a name carries a stamp (HLC on the coordinating node, then node id) taken
while the coordinator handles the write, and the highest stamp wins
everywhere. From the history alone we know, for each write, a window its stamp
must lie in:

* from its invocation (nothing is stamped before the client asks) to its
  completion, if the coordinator answered (it had finished with the write);
* from its invocation to "any time later" if the client gave up or lost the
  connection: the coordinator may still have been working, or paused, and
  stamped later.

A write that was acknowledged took effect. One that failed indeterminately
(``info``) may or may not have. One that definitely failed (``fail``) did not.
The final value of a name may then be any write ``w`` that may have taken
effect and that no acknowledged write must outrank, that is, no acknowledged
``a`` whose window lies wholly after ``w``'s. Deletes count as writes of
"absent". "Absent" is also allowed if no write was acknowledged at all. For
sequential, acknowledged, non-overlapping writes this leaves exactly the last.

With clock skew the windows stretch: a coordinator whose clock is off by ``d``
stamps ``d`` away from real time, and a stamp from a clock that ran ahead is
carried forward by every HLC that sees it until real time catches up
(``stamp_window``). Outside skew the windows are exact.

Besides the final values, the checker finds reads during the run that
returned bytes no put (that may have happened) wrote, reads the client found
damaged, nodes that disagree with each other, membership views that differ,
and daemons that died on their own.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Iterable

from p2pfs.chaos.history import ABSENT, DELETE, FAIL, GET, INFO, OK, PUT, Fault, Op

# A read that could not complete is recorded with this prefix instead of a value.
READ_ERROR_PREFIX = "error:"
# Stamps count whole milliseconds: two stamps taken within the same millisecond on
# different nodes are ordered by node id, not by time. A write outranks another for
# certain only if its window starts more than this after the other's ends.
STAMP_RESOLUTION_S = 0.001


@dataclasses.dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    subject: str  # the name or node concerned
    detail: str

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class Skew:
    """A node's wall clock was ``offset_s`` off from ``start_s`` to ``end_s`` (+- ``settle_s``)."""

    start_s: float
    end_s: float
    offset_s: float
    settle_s: float


def skews_from(faults: Iterable[Fault]) -> list[Skew]:
    found = []
    for fault in faults:
        if fault.kind == "skew":
            end_s = fault.end_s if fault.end_s is not None else math.inf
            for offset_s in fault.params["offsets_s"].values():
                found.append(Skew(fault.start_s, end_s, offset_s, fault.params.get("settle_s", 1.0)))
    return found


def stamp_window(op: Op, skews: list[Skew]) -> tuple[float, float]:
    """Earliest and latest (real-time-equivalent) stamp ``op`` may carry."""
    assert op.is_write and op.complete_s is not None
    deadline_s = op.complete_s if op.answered else math.inf
    low_s = op.invoke_s
    high_s = deadline_s
    for skew in skews:
        in_force_from_s, in_force_to_s = skew.start_s - skew.settle_s, skew.end_s + skew.settle_s
        if in_force_from_s > deadline_s:
            continue
        if skew.offset_s < 0 and in_force_to_s >= op.invoke_s:
            low_s = min(low_s, op.invoke_s + skew.offset_s)
        if skew.offset_s > 0:
            high_s = max(high_s, min(deadline_s, in_force_to_s) + skew.offset_s)
    return low_s, high_s


def allowed_values(writes: list[Op], skews: list[Skew]) -> dict[str, list[int]]:
    """Final values the writes of one name allow: value (sha256 or ABSENT) -> ids of writes giving it."""
    effective = [w for w in writes if w.outcome in (OK, INFO)]
    windows = {w.op_id: stamp_window(w, skews) for w in effective}
    acknowledged = [w for w in effective if w.outcome == OK]
    allowed: dict[str, list[int]] = collections.defaultdict(list)
    if not acknowledged:
        allowed[ABSENT].append(-1)  # the initial state: nothing there
    for w in effective:
        _, w_high_s = windows[w.op_id]
        if any(a is not w and windows[a.op_id][0] > w_high_s + STAMP_RESOLUTION_S for a in acknowledged):
            continue  # some acknowledged write is certainly stamped later
        allowed[ABSENT if w.kind == DELETE else w.value].append(w.op_id)
    return dict(allowed)


def _describe(value: str, allowed: dict[str, list[int]], writer_of: dict[str, int]) -> str:
    def one(v: str) -> str:
        if v == ABSENT:
            return "absent"
        return f"{v[:12]} (op {writer_of.get(v, '?')})"

    options = ", ".join(f"{one(v)}" for v in sorted(allowed))
    return f"read {one(value)}; allowed: {options or 'nothing'}"


def check_final_values(ops: list[Op], faults: list[Fault], final: dict[str, dict[str, str]]) -> list[Violation]:
    """``final``: name -> node -> what a get through that node returned after the run."""
    skews = skews_from(faults)
    writes_by_name: dict[str, list[Op]] = collections.defaultdict(list)
    writer_of = {}
    for op in ops:
        if op.is_write and op.complete_s is not None:
            writes_by_name[op.name].append(op)
            if op.kind == PUT:
                writer_of[op.value] = op.op_id
    violations = []
    for name in sorted(set(final) | set(writes_by_name)):
        reads = final.get(name, {})
        allowed = allowed_values(writes_by_name.get(name, []), skews)
        errors = {node: value for node, value in reads.items() if value.startswith(READ_ERROR_PREFIX)}
        for node, value in sorted(errors.items()):
            violations.append(Violation("unreadable", name, f"{node}: {value[len(READ_ERROR_PREFIX):].strip()}"))
        values = {node: value for node, value in reads.items() if node not in errors}
        if len(set(values.values())) > 1:
            seen = "; ".join(f"{node}: {value[:12]}" for node, value in sorted(values.items()))
            violations.append(Violation("divergent", name, f"nodes read different values: {seen}"))
        for value in sorted(set(values.values())):
            if value not in allowed:
                kind = "lost-write" if value == ABSENT else ("resurrected" if ABSENT in allowed and len(allowed) == 1
                                                            else "wrong-value")
                violations.append(Violation(kind, name, _describe(value, allowed, writer_of)))
    return violations


def check_reads(ops: list[Op]) -> list[Violation]:
    """Reads during the run: each must return bytes some (possibly effective) put of that name wrote."""
    written: dict[str, set[str]] = collections.defaultdict(set)
    for op in ops:
        if op.kind == PUT and op.outcome in (OK, INFO):
            written[op.name].add(op.value)
    violations = []
    for op in ops:
        if op.kind != GET:
            continue
        if op.outcome == OK and op.value != ABSENT and op.value not in written[op.name]:
            violations.append(Violation("phantom-read", op.name,
                                        f"op {op.op_id} via {op.node} read {op.value[:12]}, which no put wrote"))
        if op.outcome == FAIL and "arrived damaged" in op.error:
            violations.append(Violation("corrupt-read", op.name, f"op {op.op_id} via {op.node}: {op.error}"))
    return violations


def check_membership(views: dict[str, dict[str, str] | None], node_ids: dict[str, str]) -> list[Violation]:
    """Every node must answer and see exactly the cluster's nodes, all alive."""
    want = {node_id: "alive" for node_id in node_ids.values()}
    names = {node_id: name for name, node_id in node_ids.items()}
    violations = []
    for node, view in sorted(views.items()):
        if view is None:
            violations.append(Violation("membership", node, "did not answer a members request"))
        elif view != want:
            wrong = {names.get(i, i[:12]): view.get(i, "missing") for i in set(want) | set(view)
                     if view.get(i) != want.get(i)}
            violations.append(Violation("membership", node, f"sees {wrong}"))
    return violations


def success_share(ops: list[Op], kind: str) -> dict:
    """How many operations of ``kind`` succeeded (a get of a missing name is a success: it answered)."""
    total = sum(1 for op in ops if op.kind == kind)
    ok = sum(1 for op in ops if op.kind == kind and op.outcome == OK)
    return {"ok": ok, "total": total, "fraction": round(ok / total, 5) if total else 1.0}


def kinds_run_through(ops: list[Op], faults: list[Fault]) -> set[str]:
    """Fault kinds with at least one fault that an acknowledged operation was running during.

    A run says something about a fault only if the workload went on through it. How many
    operations fit in a run depends on the machine's load; this does not, so it is what a
    short run must show.
    """
    acknowledged = [op for op in ops if op.outcome == OK and op.complete_s is not None]
    return {fault.kind for fault in faults
            if any(op.invoke_s <= (math.inf if fault.end_s is None else fault.end_s)
                   and op.complete_s >= fault.start_s for op in acknowledged)}


def summarize(seed: int, ops: list[Op], faults: list[Fault], violations: list[Violation],
              notes: list[str]) -> dict:
    """Counts for the summary: operations by kind and outcome, failures by error, faults by kind."""
    by_kind = collections.Counter(op.kind for op in ops)
    outcomes = collections.Counter(f"{op.kind} {op.outcome}" for op in ops)
    failures = collections.Counter(f"{op.kind} {op.error.split(':', 1)[0]}" for op in ops
                                   if op.outcome in (FAIL, INFO))
    return {
        "seed": seed,
        "operations": len(ops),
        "operations_by_kind": dict(sorted(by_kind.items())),
        "outcomes": dict(sorted(outcomes.items())),
        "successes": sum(1 for op in ops if op.outcome == OK),
        "indeterminate": sum(1 for op in ops if op.outcome == INFO),
        "failures_by_kind": dict(sorted(failures.items())),
        "succeeded": {kind: success_share(ops, kind) for kind in (GET, PUT)},
        "failed_over": sum(1 for op in ops if op.attempts > 1),
        "faults": len(faults),
        "faults_by_kind": dict(sorted(collections.Counter(f.kind for f in faults).items())),
        "violations": [v.as_json() for v in violations],
        "notes": notes,
    }


def render_summary(summary: dict) -> str:
    """The summary for people."""
    lines = [
        f"chaos run, seed {summary['seed']}, {summary.get('elapsed_s', 0):.0f} s: {summary['operations']} operations, "
        f"{summary['successes']} ok, {summary['indeterminate']} indeterminate, {summary['faults']} faults",
        "  operations: " + ", ".join(f"{k} {v}" for k, v in summary["outcomes"].items()),
        "  failures:   " + (", ".join(f"{k} {v}" for k, v in summary["failures_by_kind"].items()) or "none"),
        "  succeeded:  " + ", ".join(f"{kind}s {s['fraction']:.2%} ({s['ok']} of {s['total']})"
                                     for kind, s in summary.get("succeeded", {}).items())
        + f"; {summary.get('failed_over', 0)} served after failing over",
        "  faults:     " + (", ".join(f"{k} {v}" for k, v in summary["faults_by_kind"].items()) or "none"),
    ]
    lines += [f"  note: {n}" for n in summary["notes"]]
    violations = summary["violations"]
    lines.append(f"  violations: {len(violations)}")
    lines += [f"    {v['kind']} {v['subject']}: {v['detail']}" for v in violations]
    lines.append(f"  seed: {summary['seed']} ({'FAIL' if violations else 'PASS'})")
    return "\n".join(lines)
