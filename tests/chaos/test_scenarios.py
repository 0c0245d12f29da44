"""Short chaos scenarios with real processes: every named scenario with 1-2 faults and ~40 experiments finds no
violation and completes every experiment; faults are undone even when a scenario raises midway.

One 3-node cluster with 2 workers (ZooKeeper session 1 s) serves the module; each scenario reuses it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from scenario_checks import assert_ok, run_short

from chaos_tests import faults, report, scenarios
from node import cluster
from node.config import Config, with_overrides
from node.stack import manager

pytestmark = pytest.mark.stack

SESSION_S = 1.0
NODES, WORKERS = 3, 2


@pytest.fixture(scope="module")
def chaos_cfg(stack: Config) -> Iterator[Config]:
    cfg = with_overrides(stack, zk_session_timeout_s=SESSION_S)
    faults.cleanup(cfg)
    cluster.down(cfg)
    cluster.up(cfg, nodes=NODES, workers=WORKERS)
    try:
        yield cfg
    finally:
        faults.cleanup(cfg)
        cluster.down(cfg)


def _assert_clean(cfg: Config) -> None:
    """Every fault undone: no chaos iptables rule, no cgroup, no frozen process, every process running."""
    assert faults.chaos_rules(cfg) == []
    assert not (faults._cgroup2_root() / faults.cgroup_name(cfg)).exists()
    assert faults.stopped_pids(cfg) == []
    state = faults.wait_recovered(cfg, NODES, WORKERS, timeout_s=60)
    assert state["recovered"], state
    assert all(s.proc.alive() for s in manager.services(cfg))


SHORT = [("kill-leader", 1), ("freeze-leader", 1), ("partition-leader", 1), ("kill-worker", 1), ("zk-member", 1),
         ("zk-quorum", 1)]


@pytest.mark.parametrize(("scenario", "kills"), SHORT, ids=[s for s, _ in SHORT])
def test_scenario_holds_invariants(chaos_cfg: Config, scenario: str, kills: int) -> None:
    result = run_short(chaos_cfg, scenario, kills=kills)
    assert_ok(result, kills)
    if scenario in ("kill-leader", "freeze-leader", "partition-leader"):
        assert all(f["epoch_changed"] for f in result["faults"]), result["faults"]
        assert result["failover"]["count"] >= 1
    _assert_clean(chaos_cfg)


def test_restart_services(chaos_cfg: Config) -> None:
    result = run_short(chaos_cfg, "restart-services", kills=2)   # RabbitMQ, then MariaDB (Neo4j is the third)
    assert_ok(result, 2)
    assert [f["fault"] for f in result["faults"]] == ["restart-rabbitmq", "restart-mariadb"]
    _assert_clean(chaos_cfg)


def test_mixed_writes_report(chaos_cfg: Config, tmp_path: Path) -> None:
    result = run_short(chaos_cfg, "mixed", kills=2, experiments=40)
    assert_ok(result, 2)
    assert [f["fault"] for f in result["faults"]] == [s["kind"] for s in scenarios.plan("mixed", 2, 7)]
    paths = report.write(result, tmp_path / "chaos")
    data = json.loads(Path(paths["json"]).read_text())
    assert data["scenario"] == "mixed" and data["leader_timeline"]
    assert "violations" in Path(paths["markdown"]).read_text()
    assert Path(paths["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _assert_clean(chaos_cfg)


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("scenario", ["partition-leader", "freeze-leader"])
def test_faults_undone_when_scenario_raises(chaos_cfg: Config, scenario: str) -> None:
    seen: list[faults.Fault] = []

    def explode(fault: faults.Fault) -> None:
        seen.append(fault)
        if scenario == "partition-leader":
            assert faults.chaos_rules(chaos_cfg), "the partition installed no rule"
        else:
            assert faults.stopped_pids(chaos_cfg), "the freeze stopped nothing"
        raise Boom("midway")

    with pytest.raises(Boom):
        run_short(chaos_cfg, scenario, kills=2, experiments=8, on_injected=explode)
    assert len(seen) == 1
    _assert_clean(chaos_cfg)


def test_random_mix_is_reproducible() -> None:
    assert faults.random_mix(42, 30) == faults.random_mix(42, 30)
    assert faults.random_mix(42, 30) != faults.random_mix(43, 30)
    assert {s["kind"] for s in faults.random_mix(1, 300)} == set(faults.KINDS)
    assert scenarios.plan("restart-services", 3, 1) == [{"kind": "restart-rabbitmq"}, {"kind": "restart-mariadb"},
                                                        {"kind": "restart-neo4j"}]


def test_cli_rejects_unknown_scenario(test_config: Config) -> None:
    proc = subprocess.run([sys.executable, "-m", "node.cli", "chaos", "run", "no-such-scenario"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown scenario" in proc.stderr and "partition-leader" in proc.stderr
