"""One chaos run, start to verdict: cluster up, workload under the nemesis, quiet, check.

Runs inside the sandbox (``netns.enter_sandbox``): the packet filter it drives
is the sandbox's own. Every phase has a deadline; whatever happens, the
daemons are killed and the network healed before it returns, and the history
(JSON lines) and a JSON summary are left in the output directory.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import logging
import shutil
import sys
from pathlib import Path

import trio

from p2pfs.chaos import checker, nemesis
from p2pfs.chaos.checker import READ_ERROR_PREFIX, Violation
from p2pfs.chaos.cluster import DATA_DIR, LOG_FILE, ChaosNode, Cluster, Timings, user_error_in
from p2pfs.chaos.history import ABSENT, Fault, HistoryWriter, Op
from p2pfs.chaos.netns import Firewall, bring_up_loopback
from p2pfs.chaos.workload import Workload, name_pool
from p2pfs.client import Client
from p2pfs.cli import ExitCode
from p2pfs.errors import NotFound, P2pfsError, Unavailable

log = logging.getLogger(__name__)

HISTORY_FILE = "history.jsonl"
SUMMARY_FILE = "summary.json"
# Seconds for all daemons to start and see each other, at the start and after the heal.
CONVERGE_TIMEOUT_S = 60.0
# Seconds after the heal for every node to read every name the same (hints, repair).
SETTLE_TIMEOUT_S = 90.0
# Seconds after membership converges for fsck to find everything fully replicated (hints,
# anti-entropy refilling a wiped node); the final reads come after it.
FSCK_TIMEOUT_S = 90.0
# Deadline of one CLI fsck call.
FSCK_CALL_TIMEOUT_S = 60.0
# Deadline of one read made while checking (and of the connection that carries it);
# generous, as the cluster is quiet by then.
CHECK_READ_TIMEOUT_S = 30.0
# Pause between two polls of the cluster while waiting for it to settle.
SETTLE_POLL_S = 1.0
# Rounds in a row in which every node must report the same version of every name.
SETTLE_ROUNDS = 2
# Log lines quoted from a daemon that died on its own.
CRASH_LOG_LINES = 15


@dataclasses.dataclass(frozen=True, slots=True)
class RunOptions:
    seed: int
    duration_s: float  # workload and nemesis; setting up and checking come on top
    out_dir: Path
    nodes: int = 5
    kinds: tuple[str, ...] = nemesis.FAULT_KINDS
    workers: int = 4
    names: int = 16
    op_timeout_s: float = 20.0
    timings: Timings = Timings()

    def header(self) -> dict:
        return {
            "seed": self.seed, "duration_s": self.duration_s, "nodes": self.nodes, "kinds": list(self.kinds),
            "workers": self.workers, "names": self.names, "op_timeout_s": self.op_timeout_s,
            "timings": dataclasses.asdict(self.timings),
        }

    @classmethod
    def from_header(cls, header: dict, out_dir: Path) -> "RunOptions":
        return cls(seed=header["seed"], duration_s=header["duration_s"], out_dir=out_dir, nodes=header["nodes"],
                   kinds=tuple(header["kinds"]), workers=header["workers"], names=header["names"],
                   op_timeout_s=header["op_timeout_s"], timings=Timings(**header["timings"]))


class Run:
    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.ops: list[Op] = []
        self.faults: list[Fault] = []
        self.violations: list[Violation] = []
        self.notes: list[str] = []
        # Seconds each phase took, in order: where a slow run spent its time.
        self.phases_s: dict[str, float] = {}
        self._t0 = 0.0
        self._phase_started_s = 0.0
        self._history: HistoryWriter | None = None
        self.cluster = Cluster(options.out_dir / "cluster", options.nodes, options.timings)
        self.firewall = Firewall(options.out_dir)

    def clock(self) -> float:
        return round(trio.current_time() - self._t0, 4)

    def _end_phase(self, phase: str) -> None:
        now_s = trio.current_time()
        self.phases_s[phase] = round(now_s - self._phase_started_s, 1)
        self._phase_started_s = now_s

    def _record_op(self, op: Op) -> None:
        self.ops.append(op)
        self._history.write(op.as_json())

    def _record_fault(self, fault: Fault) -> None:
        self.faults.append(fault)
        self._history.write(fault.as_json())

    async def run(self) -> dict:
        """The whole run; returns the summary (violations empty means pass)."""
        options = self.options
        self._t0 = self._phase_started_s = trio.current_time()
        self._history = HistoryWriter(options.out_dir / HISTORY_FILE, options.header())
        try:
            await bring_up_loopback()
            await self.firewall.setup()
            self.cluster.create()
            log.info("starting %d daemons in %s", options.nodes, self.cluster.directory)
            async with trio.open_nursery() as nursery:
                for node in self.cluster.nodes:
                    nursery.start_soon(self.cluster.start, node)
            lagging = await self.cluster.wait_converged(CONVERGE_TIMEOUT_S)
            if lagging:
                raise Unavailable(f"the cluster did not converge at the start ({', '.join(lagging)} lagging)")
            self._end_phase("start")
            await self._chaos()
            self._end_phase("workload")
            await self._check()
        finally:
            with trio.CancelScope(shield=True):
                await self.cluster.stop_all()
                await self.firewall.heal()
        summary = checker.summarize(options.seed, self.ops, self.faults, self.violations, self.notes)
        summary["elapsed_s"] = round(trio.current_time() - self._t0, 1)
        summary["phases_s"] = self.phases_s
        self._history.write({"type": "result", **summary})
        self._history.close()
        (options.out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        if not self.violations:
            for node in self.cluster.nodes:  # chunks are bulky; logs and history stay
                shutil.rmtree(node.directory / DATA_DIR, ignore_errors=True)
        return summary

    async def _chaos(self) -> None:
        """The workload for ``duration_s`` (and on while the nemesis is still at work), under the nemesis."""
        options = self.options
        names = [n.name for n in self.cluster.nodes]
        faults = nemesis.schedule(options.seed, options.kinds, options.duration_s, names, options.timings)
        missing = sorted(set(options.kinds) - {f.kind for f in faults})
        if missing:
            self.notes.append(f"too short for every fault kind: {', '.join(missing)} not scheduled")
        log.info("workload for %.0f s with %d faults scheduled", options.duration_s, len(faults))
        workload = Workload(cluster=self.cluster, seed=options.seed, workers=options.workers,
                            names=name_pool(options.names), op_timeout_s=options.op_timeout_s,
                            clock=self.clock, record=self._record_op)
        chaos = nemesis.Nemesis(cluster=self.cluster, firewall=self.firewall, clock=self.clock,
                                record=self._record_fault)
        stop = trio.Event()
        started_s = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(workload.run, stop)
            # The workload goes on until the nemesis is through its schedule too: on a loaded
            # machine a fault's restart takes tens of seconds and pushes the later faults past
            # the run's length, and a fault with no operations around it tests nothing.
            async with trio.open_nursery() as faults_nursery:
                faults_nursery.start_soon(chaos.run, faults, started_s)
                await trio.sleep_until(started_s + options.duration_s)  # the run's length, not a sync
            stop.set()
        log.info("workload done: %d operations; healing and checking", len(self.ops))

    # -- checking -----------------------------------------------------------------------

    async def _check(self) -> None:
        await self._restart_crashed()
        log.info("waiting for membership to converge")
        lagging = await self.cluster.wait_converged(CONVERGE_TIMEOUT_S)
        if lagging:
            self.notes.append(f"membership had not converged {CONVERGE_TIMEOUT_S:.0f} s after the heal")
        self._end_phase("converge")
        log.info("waiting for fsck to find every name and chunk fully replicated")
        self.violations += await self.check_fsck()
        self._end_phase("fsck")
        final = await self._settle()
        self.violations += checker.check_reads(self.ops)
        self.violations += checker.check_final_values(self.ops, self.faults, final)
        views = {n.name: await self.cluster.members_seen_by(n) for n in self.cluster.nodes}
        self.violations += checker.check_membership(views, {n.name: n.node_id for n in self.cluster.nodes})
        self.violations += await self._check_listing()
        self._end_phase("reads")

    async def _restart_crashed(self) -> None:
        """A daemon that is not running after the heal died on its own: a violation, then a restart."""
        for node in self.cluster.nodes:
            if not node.running:
                lines = (node.directory / LOG_FILE).read_text(errors="replace").splitlines()[-CRASH_LOG_LINES:]
                self.violations.append(Violation(
                    "crashed", node.name, f"exited {node.process.returncode} on its own; log ends: "
                    + " | ".join(lines)))
                await self.cluster.start(node)

    async def _read_everywhere(self, names: list[str], full: bool) -> dict[str, dict[str, str]]:
        """What a read of each name through each node returns: a hash, ABSENT, or an error.

        The nodes are read at once, each over one connection while it serves:
        a fresh TLS handshake per read made the checks the part of a run that
        grew most on a loaded machine (hundreds of handshakes), and it checks
        nothing a reused connection does not. After any error but "not found"
        the next read opens a new connection, so one bad read cannot spoil the
        rest.
        """
        found: dict[str, dict[str, str]] = {name: {} for name in names}
        async with trio.open_nursery() as nursery:
            for node in self.cluster.nodes:
                nursery.start_soon(self._read_through, node, names, full, found)
        return found

    async def _read_through(self, node: ChaosNode, names: list[str], full: bool,
                            found: dict[str, dict[str, str]]) -> None:
        pending = collections.deque(names)
        while pending:
            # Each read, and the connection that carries the first, has CHECK_READ_TIMEOUT_S.
            scope = trio.CancelScope(deadline=trio.current_time() + CHECK_READ_TIMEOUT_S)
            try:
                with scope:
                    async with Client.connect(self.cluster.client_identity, node.address) as client:
                        while pending:
                            found[pending[0]][node.name] = await _read_one(client, pending[0], full)
                            pending.popleft()
                            scope.deadline = trio.current_time() + CHECK_READ_TIMEOUT_S
            except (P2pfsError, BaseExceptionGroup) as exc:
                error = user_error_in(exc)
                if error is None:
                    raise
                found[pending.popleft()][node.name] = (ABSENT if isinstance(error, NotFound)
                                                       else f"{READ_ERROR_PREFIX} {error}")
                continue
            if scope.cancelled_caught:
                found[pending.popleft()][node.name] = f"{READ_ERROR_PREFIX} no answer in {CHECK_READ_TIMEOUT_S} s"

    async def _settle(self) -> dict[str, dict[str, str]]:
        """Wait until every node reports the same version of every name, twice running; then read all in full.

        Each report is a quorum read, which can happen to agree while replicas
        still differ; two agreeing rounds in a row, a second apart, make a lucky
        agreement unlikely (fsck has normally made it certain already).
        """
        names = name_pool(self.options.names)
        agreeing_rounds = 0
        unsettled = names
        with trio.move_on_after(SETTLE_TIMEOUT_S):
            while agreeing_rounds < SETTLE_ROUNDS:
                unsettled = [name for name, seen in (await self._read_everywhere(names, full=False)).items()
                             if len(set(seen.values())) != 1
                             or any(v.startswith(READ_ERROR_PREFIX) for v in seen.values())]
                agreeing_rounds = 0 if unsettled else agreeing_rounds + 1
                if unsettled:
                    log.info("settling: %d names differ between nodes", len(unsettled))
                if agreeing_rounds < SETTLE_ROUNDS:
                    await trio.sleep(SETTLE_POLL_S)  # polling the cluster's state, under a deadline
        if unsettled:
            self.notes.append(f"{len(unsettled)} names still differed between nodes {SETTLE_TIMEOUT_S:.0f} s "
                              "after the heal")
        self._end_phase("settle")
        log.info("reading every name through every node")
        final = await self._read_everywhere(names, full=True)
        for name, seen in final.items():
            if len(set(seen.values())) > 1:  # for the diagnosis: does it persist or flip?
                await trio.sleep(SETTLE_POLL_S)  # give a transient answer time to change
                again = (await self._read_everywhere([name], full=True))[name]
                self.notes.append(f"{name} read again {SETTLE_POLL_S:.0f} s later: "
                                  + "; ".join(f"{n}: {v[:12]}" for n, v in sorted(again.items())))
        return final

    async def _check_listing(self) -> list[Violation]:
        """``ls`` must list only names the workload used."""
        try:
            with trio.fail_after(CHECK_READ_TIMEOUT_S):
                async with Client.connect(self.cluster.client_identity, self.cluster.nodes[0].address) as client:
                    listing = await client.ls("")
        except trio.TooSlowError:
            return [Violation("unreadable", "ls", "no answer in time")]
        except (P2pfsError, BaseExceptionGroup) as exc:
            error = user_error_in(exc)
            if error is None:
                raise
            return [Violation("unreadable", "ls", str(error))]
        unknown = sorted({f.name for f in listing.files} - set(name_pool(self.options.names)))
        return [Violation("phantom-name", name, "listed by ls, never written") for name in unknown]

    async def check_fsck(self) -> list[Violation]:
        """`p2pfs fsck --json` through the CLI, polled until clean; skipped with a note if it does not exist.

        This is also how the checker knows the cluster is quiet. Right after
        the heal, hints are still in flight and anti-entropy may be refilling a
        wiped node; until they are done, a quorum read can legitimately miss the
        newest version (a write acknowledged by a stand-in overlaps a read of
        the preferred replicas in only one node). So the final reads wait until
        fsck finds nothing under-replicated, misplaced, missing or corrupt. A
        non-zero exit (data at risk) that lasts ``FSCK_TIMEOUT_S`` is a
        violation; copies still on the wrong nodes by then are noted.
        """
        node = self.cluster.nodes[0]
        command = [sys.executable, "-m", "p2pfs", "--identity", str(self.cluster.directory / "client"),
                   "--node", str(node.address), "fsck", "--json"]
        last = None
        with trio.move_on_after(FSCK_TIMEOUT_S):
            while True:
                with trio.fail_after(FSCK_CALL_TIMEOUT_S):
                    last = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
                if last.returncode == ExitCode.BAD_INPUT and b"No such command" in last.stderr:
                    self.notes.append("fsck skipped: this build has no `p2pfs fsck`")
                    return []
                if last.returncode == 0 and not _fsck_unfinished(last.stdout):
                    self.notes.append(f"fsck clean: {_fsck_counts(last.stdout)}")
                    return []
                await trio.sleep(SETTLE_POLL_S)  # polling fsck under a deadline
        detail = f"exit {last.returncode}: {_fsck_counts(last.stdout)} {last.stderr.decode(errors='replace').strip()}"
        if last.returncode == 0:
            self.notes.append(f"fsck not at risk but not finished after {FSCK_TIMEOUT_S:.0f} s: {detail}")
            return []
        return [Violation("fsck", "cluster", f"not clean after {FSCK_TIMEOUT_S:.0f} s: {detail}")]


# fsck counters that must be zero before the final reads (see Run.check_fsck).
FSCK_UNFINISHED_COUNTERS = ("under_replicated", "misplaced", "missing", "corrupt")


def _fsck_unfinished(stdout: bytes) -> dict[str, int]:
    """fsck's non-zero counters of copies still missing or on the wrong nodes."""
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        return {"unparsed": 1}
    if not isinstance(report, dict):
        return {"unparsed": 1}
    return {k: v for k, v in report.items()
            if isinstance(v, int) and v and any(c in k for c in FSCK_UNFINISHED_COUNTERS)}


def _fsck_counts(stdout: bytes) -> str:
    """The numbers from fsck's JSON (whatever its exact shape), for the summary."""
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        return stdout.decode(errors="replace").strip()[:500]
    if not isinstance(report, dict):
        return json.dumps(report)[:500]
    counts = collections.OrderedDict((k, v) for k, v in report.items() if isinstance(v, (int, float, bool)))
    return json.dumps(counts or report, sort_keys=True)[:500]


def run_chaos(options: RunOptions) -> dict:
    options.out_dir.mkdir(parents=True, exist_ok=True)
    return trio.run(Run(options).run)


async def _read_one(client: Client, name: str, full: bool) -> str:
    """A full read's SHA-256, or a stat's version; ABSENT if the node says there is no such name."""
    try:
        if full:
            sink = io.BytesIO()
            await client.get(name, sink)
            return hashlib.sha256(sink.getvalue()).hexdigest()
        reply = await client.stat(name)
        return f"{reply.version_wall_ms}.{reply.version_logical}.{reply.writer}"
    except NotFound:  # an answer: the connection stays good for the next read
        return ABSENT
