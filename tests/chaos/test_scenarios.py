"""Short chaos scenarios with real processes: every named scenario with 1-2 faults and ~40 experiments finds no
violation and completes every experiment; faults are undone even when a scenario raises midway. Each adversarial
scenario runs once, small: no attempt executed twice (marker files), every poison message dead-lettered, no
process exited that no fault killed.

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
from chaos_tests.workloads import TEMPLATES, poison_bodies
from node import cluster
from node.config import Config, with_overrides
from node.errors import MalformedMessage, UsageError
from node.model.executors import KNOWN_EXECUTORS
from node.model.messages import SubmissionNotice, TaskRequest, TaskResponse
from node.model.template import parse_template
from node.stack import manager
from node.stores.queues import REQUESTS, RESPONSES, SUBMISSIONS

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


# --- adversarial scenarios ------------------------------------------------------------------------------------
#: scenario, faults, steady experiments, submissions per second (slow tasks: 2-6 s each, 15 task-seconds each)
ADVERSARIAL = [("slow-tasks", 2, 6, 1.0), ("backlog", 1, 8, 4.0), ("poison", 1, 8, 4.0),
               ("freeze-publish", 1, 8, 4.0), ("adversarial", 3, 8, 2.0)]


def assert_adversarial_ok(result: dict, faults_expected: int) -> None:
    """The checker's verdict and the adversarial evidence: markers, poison, exits."""
    exp, adv = result["experiments"], result["adversarial"]
    once = adv["exactly_once"]
    assert result["violations"] == 0, result["check_markdown"]
    assert exp["completed"] == exp["submitted"] == result["experiments_requested"] + adv["burst_experiments"], exp
    assert len(result["faults"]) == faults_expected
    assert all(f.get("injected_at") and f.get("undone_at") and not f.get("error") for f in result["faults"]), \
        result["faults"]
    assert once["attempts_executed_twice"] == 0, once
    assert once["succeeded_without_marker"] == 0 and once["markers"] >= once["succeeded_transitions"] > 0, once
    assert adv["unexpected_exits"] == [], adv
    assert result["rules_left"] == 0 and result["frozen_left"] == []
    assert result["ok"]


@pytest.mark.parametrize(("scenario", "kills", "experiments", "rate"), ADVERSARIAL, ids=[a[0] for a in ADVERSARIAL])
def test_adversarial_scenario(chaos_cfg: Config, scenario: str, kills: int, experiments: int, rate: float) -> None:
    result = run_short(chaos_cfg, scenario, kills=kills, experiments=experiments, rate=rate)
    assert_adversarial_ok(result, kills)
    adv, records = result["adversarial"], result["faults"]
    if scenario == "slow-tasks":
        assert [f["fault"] for f in records] == ["kill-leader", "kill-worker"]
    if scenario in ("backlog", "adversarial"):
        bursts = [f for f in records if f["fault"] == "backlog-kill-leader"]
        assert bursts and all(f["burst_ready_tasks"] > f["prefetch_total"] for f in bursts), bursts
        assert all(f["queued_at_kill"] > 0 for f in bursts), bursts
    if scenario == "poison":
        poison = adv["poison"]
        assert poison["sent"] == 2 * len(poison_bodies("x")) == records[0]["poison"]
        assert poison["dead_lettered"] == poison["sent"] and poison["without_reason"] == 0, poison
        assert set(poison["by_queue"]) == {RESPONSES, SUBMISSIONS, REQUESTS}
    if scenario == "freeze-publish":
        [freeze] = records
        assert freeze["epoch_changed"] and freeze["stopped_at"] < freeze["resumed_at"], freeze
        assert freeze["next_epoch"] > freeze["epoch"]
        assert freeze["stale_requests"] >= 1 and 0 <= freeze["stale_executions"] <= freeze["stale_requests"], freeze
    md = report.markdown(result)
    assert "attempts executed twice" in md
    assert not list((chaos_cfg.home / "failpoints").glob("*/*")), "a failpoint is still armed"
    _assert_clean(chaos_cfg)


def test_poison_bodies_are_all_dead_letters() -> None:
    """Every poison body is rejected by its queue's decoder, except one well-formed response about no experiment
    (dead-lettered as an unknown task); no request is one a worker would run; every body is unique per tag."""
    decoders = {RESPONSES: TaskResponse, SUBMISSIONS: SubmissionNotice, REQUESTS: TaskRequest}
    bodies = poison_bodies("chaos-t-p1a")
    well_formed = []
    for queue, body in bodies:
        try:
            decoders[queue].decode(body)
            well_formed.append(queue)
        except MalformedMessage:
            pass
    assert well_formed == [RESPONSES]
    assert len({b for _, b in bodies + poison_bodies("chaos-t-p1b")}) == 2 * len(bodies)


def test_chaos_templates_are_valid_and_mark_everything() -> None:
    for data in TEMPLATES.values():
        template = parse_template(data, KNOWN_EXECUTORS)
        assert {t.executor for t in template.tasks} == {"mark"} and "mark_dir" in template.params


def test_adversarial_plans_and_report_sections() -> None:
    kinds = {s["kind"] for s in scenarios.plan("adversarial", 300, 1)}
    assert kinds == set(faults.ADVERSARIAL_KINDS)
    assert scenarios.plan("mixed", 30, 1) == faults.random_mix(1, 30)  # the mixed campaign is unchanged
    assert [s["kind"] for s in scenarios.plan("slow-tasks", 4, 1)] == list(scenarios.SCENARIOS["slow-tasks"])
    mixed = json.loads((Path(report.__file__).parent.parent / "docs" / "chaos" / "result.json").read_text())
    doc = report.combined([(mixed, "chaos/timeline.png"), (mixed, "chaos/timeline.png")])
    assert doc.startswith("# Chaos campaigns: OK\n")
    assert doc.count("\n## Chaos run `mixed`: OK\n") == 2 and doc.count("](chaos/timeline.png)") == 2


def test_adversarial_needs_the_process_runtime(test_config: Config) -> None:
    with pytest.raises(UsageError, match="process runtime"):
        scenarios.run(with_overrides(test_config, runtime="docker"), "poison", kills=1, experiments=1)
