"""The whole-cluster simulation: the real data layer under faults, checked by the chaos checker,
and replayed byte for byte from its seed (p2pfs/sim/cluster.py; scripts/bench_sim.py runs many)."""

from __future__ import annotations

import pytest

from p2pfs.chaos.history import read_history
from p2pfs.sim.cluster import SimSettings, run_seed
from p2pfs.sim.network import SEED_ENV, sim_seed

# A handful of seeds for CI, one per cluster size; the benchmark runs a thousand.
CI_SEEDS = ((sim_seed(11), 5), (sim_seed(12), 6), (sim_seed(13), 7))
CI_DURATION_S = 60.0


def describe(result) -> str:
    return f"seed {result.seed}: replay with {SEED_ENV}={result.seed}; history {result.history_path}"


@pytest.mark.parametrize(("seed", "nodes"), CI_SEEDS)
def test_a_seeded_cluster_under_faults_keeps_every_promise(tmp_path, seed, nodes):
    result = run_seed(seed, tmp_path / "run", SimSettings(nodes=nodes, duration_s=CI_DURATION_S))
    assert result.violations == [], describe(result)
    header, ops, faults = read_history(result.history_path)
    assert header["seed"] == seed
    assert header["nodes"] == nodes
    # The run did what it is for: operations of every kind succeeded, and faults happened.
    assert {op.kind for op in ops if op.outcome == "ok"} == {"put", "get", "delete"}, describe(result)
    assert len(faults) >= 2, describe(result)
    assert all(f.end_s is not None for f in faults)


def test_a_seed_replays_byte_for_byte(tmp_path):
    seed = sim_seed(21)
    settings = SimSettings(nodes=5, duration_s=CI_DURATION_S)
    first = run_seed(seed, tmp_path / "first", settings)
    again = run_seed(seed, tmp_path / "again", settings)
    assert first.history_path.read_bytes() == again.history_path.read_bytes(), describe(first)
    other = run_seed(seed + 1, tmp_path / "other", settings)
    assert other.history_path.read_bytes() != first.history_path.read_bytes()


def test_the_checker_sees_a_cluster_that_breaks_a_promise(tmp_path, monkeypatch):
    # A coordinator that acknowledges a delete without writing its tombstone: the name comes
    # back, which the history must show. (A harness that checked nothing would pass this seed.)
    from p2pfs.replication import messages as dm
    from p2pfs.replication.service import DataService

    async def remove_nothing(self, request):
        return dm.RemoveFileReply(request.msg.name)

    monkeypatch.setattr(DataService, "_remove_file", remove_nothing)
    result = run_seed(sim_seed(11), tmp_path / "run", SimSettings(nodes=5, duration_s=CI_DURATION_S))
    assert {v.kind for v in result.violations} & {"resurrected", "wrong-value"}, describe(result)
