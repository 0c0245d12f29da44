"""The invariant checker against the real stores: a clean run passes, and each planted violation is named.

Planted experiments get unique ids, an epoch far above any real one (10**12 + ...), a creation time in 1970
(so that ``since`` filters skip them) and transition times in 2096 (so that they are never "the newer epoch" of
a real row); every test removes what it planted. Their Neo4j tasks are SUCCEEDED, so a running leader never
picks them up.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from node import cluster
from node.config import Config
from node.experiments import Experiments
from node.paths import REPO_ROOT
from node.stores.connect import mysql_connect_args, neo4j_driver
from node.verify import KINDS, Report, Scope, check

pytestmark = pytest.mark.stack

TYPES = ("chain", "diamond", "fanout", "retry")
T0 = 4_000_000_000.0   # transition and ledger times of planted rows (year 2096)
CREATED = 1_000.0      # created_at of planted experiments (1970)


class Planter:
    """Writes planted experiments straight into MariaDB and Neo4j, and removes them again."""

    def __init__(self, cfg: Config) -> None:
        self.db = pymysql.connect(**mysql_connect_args(cfg))
        self.driver = neo4j_driver(cfg)
        self.ids: list[str] = []
        self.epochs: list[int] = []
        self.epoch = 10**12 + random.randrange(10**8) * 10   # this test's leader epoch (epoch + 1 is free too)
        self.node = "plant-node"

    def sql(self, statement: str, rows: list[tuple]) -> None:
        with self.db.cursor() as cur:
            cur.executemany(statement, rows)
        self.db.commit()

    def experiment(self, state: str = "COMPLETED", neo4j_state: str | None = None,
                   tasks: tuple[str, ...] = ("a", "b"), edges: tuple[tuple[str, str], ...] = (("b", "a"),),
                   finished: dict[str, float] | None = None, flags: dict[str, int] | None = None,
                   successes: bool = True) -> str:
        """An experiment in both stores; tasks SUCCEEDED (flags 1, attempt 1) with ``finished`` times; edges
        (succ, pred). ``successes``: also each task's DISPATCHED and SUCCEEDED transitions, both at its finished
        time (the stores agree on every success and dispatch); :meth:`chain` writes a whole history instead."""
        experiment_id = f"plant-{uuid.uuid4().hex[:12]}"
        self.ids.append(experiment_id)
        self.sql("INSERT INTO experiments (experiment_id, type, template_version, state, params, created_at, "
                 "updated_at, finished_at) VALUES (%s, 'planted', 1, %s, '{}', %s, %s, NULL)",
                 [(experiment_id, state, CREATED, CREATED)])
        finished = finished or {}
        flags = flags or {}
        self.driver.execute_query(
            "CREATE (e:Experiment {experiment_id: $id, type: 'planted', version: 1, state: $state, remaining: 0}) "
            "WITH e UNWIND $tasks AS t CREATE (:Task {key: $id + '/' + t.name, experiment_id: $id, name: t.name, "
            "kind: 'planted', executed: true, status: 'SUCCEEDED', attempt: 1, waiting: 0, flags: t.flags, "
            "epoch: $epoch, finished_at: t.finished_at})",
            id=experiment_id, state=neo4j_state or state, epoch=self.epoch,
            tasks=[{"name": n, "finished_at": finished.get(n), "flags": flags.get(n, 1)} for n in tasks])
        self.driver.execute_query(
            "UNWIND $edges AS e MATCH (s:Task {key: $id + '/' + e[0]}), (p:Task {key: $id + '/' + e[1]}) "
            "CREATE (s)-[:DEPENDS_ON]->(p)", id=experiment_id, edges=[list(e) for e in edges])
        if successes:
            self.transitions([(experiment_id, n, to_state, 1, self.epoch, self.node, finished.get(n, T0))
                              for n in tasks for to_state in ("DISPATCHED", "SUCCEEDED")])
        return experiment_id

    def transitions(self, rows: list[tuple]) -> None:
        """Rows (experiment_id, task, to_state, attempt, epoch, node_id, at)."""
        self.sql("INSERT INTO transitions (experiment_id, task, from_state, to_state, attempt, epoch, node_id, at) "
                 "VALUES (%s, %s, NULL, %s, %s, %s, %s, %s)", rows)

    def ledger(self, rows: list[tuple]) -> None:
        """Rows (experiment_id, task, attempt, worker, started_at)."""
        self.sql("INSERT INTO ledger (experiment_id, task, attempt, worker, epoch, started_at, ended_at, outcome) "
                 "VALUES (%s, %s, %s, %s, %s, %s, %s + 0.05, 'success')",
                 [(e, t, a, w, self.epoch, s, s) for e, t, a, w, s in rows])

    def leader_term(self, epoch: int, node_id: str) -> None:
        self.epochs.append(epoch)
        self.sql("INSERT INTO leader_terms (epoch, node_id, elected_at) VALUES (%s, %s, %s)", [(epoch, node_id, T0)])

    def chain(self, t0: float = T0, **overrides: Any) -> str:
        """A clean history of the chain a -> b from ``t0`` on, led by ``self.epoch`` on ``self.node``;
        ``overrides`` replace rows by name: a_dispatched, a_succeeded, b_dispatched, b_succeeded, done, a_start,
        b_start (None drops a row)."""
        e, n = self.epoch, self.node
        experiment_id = self.experiment(finished={"a": t0 + 1, "b": t0 + 2}, successes=False)
        rows = {"a_dispatched": (experiment_id, "a", "DISPATCHED", 1, e, n, t0),
                "a_succeeded": (experiment_id, "a", "SUCCEEDED", 1, e, n, t0 + 1),
                "b_dispatched": (experiment_id, "b", "DISPATCHED", 1, e, n, t0 + 1),
                "b_succeeded": (experiment_id, "b", "SUCCEEDED", 1, e, n, t0 + 2),
                "done": (experiment_id, None, "COMPLETED", 0, e, n, t0 + 2)}
        starts = {"a_start": (experiment_id, "a", 1, "worker-1", t0 + 0.1),
                  "b_start": (experiment_id, "b", 1, "worker-1", t0 + 1.1)}
        for name, value in overrides.items():
            assert name in rows or name in starts, name
            target = rows if name in rows else starts
            if value is None:
                target.pop(name)
            else:
                target[name] = (experiment_id, *value)
        self.transitions(list(rows.values()))
        self.ledger(list(starts.values()))
        return experiment_id

    def cleanup(self) -> None:
        if self.ids:
            marks = ",".join(["%s"] * len(self.ids))
            with self.db.cursor() as cur:
                for table in ("transitions", "ledger", "experiments"):
                    cur.execute(f"DELETE FROM {table} WHERE experiment_id IN ({marks})", self.ids)
            self.db.commit()
            self.driver.execute_query("UNWIND $ids AS id MATCH (x) WHERE (x:Experiment OR x:Task) "
                                      "AND x.experiment_id = id DETACH DELETE x", ids=self.ids)
        if self.epochs:
            self.sql("DELETE FROM leader_terms WHERE epoch = %s", [(e,) for e in self.epochs])
        self.db.close()
        self.driver.close()


@pytest.fixture
def plant(stack: Config) -> Iterator[Planter]:
    planter = Planter(stack)
    try:
        yield planter
    finally:
        planter.cleanup()


def kinds(report: Report) -> set[str]:
    assert set(report.by_kind()) <= set(KINDS)
    return set(report.by_kind())


def run_cli(cfg: Config, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HAORCH_HOME": str(cfg.home), "HAORCH_PORT_BASE": str(cfg.port_base)}
    return subprocess.run([sys.executable, "-m", "node.cli", "chaos", "check", *args], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, timeout=60)


# --- a clean run ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def running_cluster(stack: Config) -> Iterator[Config]:
    cluster.up(stack, nodes=1, workers=1)
    try:
        yield stack
    finally:
        cluster.down(stack)


def test_clean_run_of_every_type_passes(running_cluster: Config) -> None:
    cfg = running_cluster
    since = time.time()
    ids = [f"clean-{t}-{i}-{uuid.uuid4().hex[:6]}" for t in TYPES for i in range(2)]
    with Experiments(cfg) as exps:
        exps.install_builtins()
        for t in TYPES:
            exps.submit_many(t, [i for i in ids if i.startswith(f"clean-{t}-")])
        rows = exps.wait(ids, timeout_s=120)
    assert {r["state"] for r in rows} == {"COMPLETED"}

    for report in (check(cfg, Scope(experiment_ids=ids)), check(cfg, Scope(since=since))):
        assert report.ok, report.to_markdown()
        assert report.violations == []
        assert report.experiments == len(ids) and report.states == {"COMPLETED": len(ids)}
        assert report.tasks >= 3 * len(ids)               # every type has at least 3 tasks
        assert report.executions >= report.tasks          # retry's flaky step runs twice
        assert report.epochs >= 1 and report.duplicate_executions == 0
        assert "Every invariant holds" in report.to_markdown()
        assert report.to_dict()["ok"] is True

    done = run_cli(cfg, "--since", str(since))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("chaos check: OK")


# --- planted violations --------------------------------------------------------------------------------------
def test_planted_baseline_is_clean(plant: Planter, stack: Config) -> None:
    ids = [plant.chain()]
    # a legitimate failover (after the first chain ended): epoch+1 takes over after a's dispatch and re-sends it,
    # the old leader never writes again
    new, t0 = plant.epoch + 1, T0 + 10
    ids.append(plant.chain(t0, a_succeeded=("a", "SUCCEEDED", 1, new, "plant-new", t0 + 1),
                           b_dispatched=("b", "DISPATCHED", 1, new, "plant-new", t0 + 1),
                           b_succeeded=("b", "SUCCEEDED", 1, new, "plant-new", t0 + 2),
                           done=(None, "COMPLETED", 0, new, "plant-new", t0 + 2)))
    plant.transitions([(ids[1], "a", "REDISPATCHED", 1, new, "plant-new", t0 + 0.5)])
    # a cancelled experiment (before the failover): a ran, b was cancelled before its dispatch (attempt 0, no
    # DISPATCHED row needed)
    ids.append(plant.chain(T0 + 5, b_dispatched=None, b_succeeded=None, b_start=None,
                           done=(None, "CANCELLED", 0, 0, "cancel", T0 + 6.5)))
    plant.driver.execute_query("MATCH (e:Experiment {experiment_id: $id}) SET e.state = 'CANCELLED'", id=ids[2])
    plant.driver.execute_query("MATCH (t:Task {key: $key}) SET t.executed = false, t.status = 'CANCELLED', "
                               "t.attempt = 0, t.flags = 0", key=f"{ids[2]}/b")
    plant.sql("UPDATE experiments SET state = 'CANCELLED' WHERE experiment_id = %s", [(ids[2],)])
    report = check(stack, Scope(experiment_ids=ids))
    assert report.ok, report.to_markdown()
    assert report.experiments == 3 and report.tasks == 6 and report.epochs == 2 and report.executions == 5


def test_lost_work_is_named(plant: Planter, stack: Config) -> None:
    lost = plant.experiment(state="RUNNING", finished={"a": T0 + 1, "b": T0 + 2})
    report = check(stack, Scope(experiment_ids=[lost]))
    assert kinds(report) == {"lost_work"}
    assert report.violations[0].experiment_id == lost and "RUNNING" in report.violations[0].detail


def test_state_mismatch_is_named(plant: Planter, stack: Config) -> None:
    odd = plant.experiment(state="COMPLETED", neo4j_state="FAILED", finished={"a": T0 + 1, "b": T0 + 2})
    assert kinds(check(stack, Scope(experiment_ids=[odd]))) == {"state_mismatch"}


def test_second_succeeded_transition_is_double_advancement(plant: Planter, stack: Config) -> None:
    experiment_id = plant.chain()
    plant.transitions([(experiment_id, "a", "SUCCEEDED", 1, plant.epoch, plant.node, T0 + 1.5)])
    report = check(stack, Scope(experiment_ids=[experiment_id]))
    assert kinds(report) == {"double_advancement"}
    assert f"{experiment_id}/a has 2 SUCCEEDED" in report.violations[0].detail


def test_neo4j_flags_two_is_double_flag(plant: Planter, stack: Config) -> None:
    experiment_id = plant.chain()
    plant.driver.execute_query("MATCH (t:Task {key: $key}) SET t.flags = 2", key=f"{experiment_id}/a")
    report = check(stack, Scope(experiment_ids=[experiment_id]))
    assert kinds(report) == {"double_flag"}
    assert "flagged executed 2 times" in report.violations[0].detail


def test_successor_dispatched_twice_is_double_dispatch(plant: Planter, stack: Config) -> None:
    experiment_id = plant.chain()
    plant.transitions([(experiment_id, "b", "DISPATCHED", 1, plant.epoch, plant.node, T0 + 1.2),
                       (experiment_id, "b", "REDISPATCHED", 1, plant.epoch, plant.node, T0 + 1.3)])
    report = check(stack, Scope(experiment_ids=[experiment_id]))
    assert kinds(report) == {"double_dispatch"} and len(report.violations) == 1


def test_successor_dispatched_before_predecessor_succeeded_is_order(plant: Planter, stack: Config) -> None:
    experiment_id = plant.chain(b_dispatched=("b", "DISPATCHED", 1, plant.epoch, plant.node, T0 + 0.5))
    report = check(stack, Scope(experiment_ids=[experiment_id]))
    assert kinds(report) == {"order_dispatch"}
    assert f"{experiment_id}/b was first dispatched at" in report.violations[0].detail


def test_ledger_start_before_predecessor_succeeded_is_order(plant: Planter, stack: Config) -> None:
    experiment_id = plant.chain(b_start=("b", 1, "worker-7", T0 + 0.5))
    report = check(stack, Scope(experiment_ids=[experiment_id]))
    assert kinds(report) == {"order_start"}
    assert "started on worker-7" in report.violations[0].detail


def test_successor_of_a_never_succeeded_predecessor_is_order(plant: Planter, stack: Config) -> None:
    experiment_id = plant.chain(a_succeeded=None)
    plant.driver.execute_query("MATCH (t:Task {key: $key}) SET t.executed = false, t.status = 'FAILED'",
                               key=f"{experiment_id}/a")
    assert kinds(check(stack, Scope(experiment_ids=[experiment_id]))) == {"order_dispatch", "order_start"}


def test_stale_epoch_after_newer_epoch_acted_is_fencing(plant: Planter, stack: Config) -> None:
    new = plant.epoch + 1
    experiment_id = plant.chain(a_succeeded=("a", "SUCCEEDED", 1, new, "plant-new", T0 + 1),
                                b_dispatched=("b", "DISPATCHED", 1, new, "plant-new", T0 + 1),
                                done=(None, "COMPLETED", 0, new, "plant-new", T0 + 2))
    # b_succeeded stays with the old epoch at T0 + 2: after epoch+1 had acted at T0 + 1
    report = check(stack, Scope(experiment_ids=[experiment_id]))
    assert kinds(report) == {"fencing"} and len(report.violations) == 1
    assert f"epoch {plant.epoch}" in report.violations[0].detail and f"epoch {new} had acted" in \
        report.violations[0].detail


def test_executed_task_without_a_succeeded_transition_is_success_mismatch(plant: Planter, stack: Config) -> None:
    experiment_id = plant.chain(b_succeeded=None)
    report = check(stack, Scope(experiment_ids=[experiment_id]))
    assert kinds(report) == {"success_mismatch"}
    assert report.violations[0].detail.startswith(f"{experiment_id}/b: executed in Neo4j with 0 SUCCEEDED")


def test_two_nodes_in_one_epoch_is_named(plant: Planter, stack: Config) -> None:
    experiment_id = plant.chain(b_succeeded=("b", "SUCCEEDED", 1, plant.epoch, "plant-other", T0 + 2))
    report = check(stack, Scope(experiment_ids=[experiment_id]))
    assert kinds(report) == {"one_leader_per_epoch"}
    assert "plant-node" in report.violations[0].detail and "plant-other" in report.violations[0].detail


def test_transitions_by_another_node_than_the_leader_term_is_named(plant: Planter, stack: Config) -> None:
    experiment_id = plant.chain()
    plant.leader_term(plant.epoch, "plant-elected")
    report = check(stack, Scope(experiment_ids=[experiment_id]))
    assert kinds(report) == {"one_leader_per_epoch"}
    assert "leader_terms says plant-elected" in report.violations[0].detail


def test_the_ledger_refuses_a_second_row_of_one_attempt(plant: Planter, stack: Config) -> None:
    """The unique key attempt_once makes double_execution impossible on a store built by the schema (the rule's own
    test is tests/unit/test_verify_rules.py); replays are counted."""
    experiment_id = plant.chain()
    with pytest.raises(pymysql.err.IntegrityError, match="attempt_once"):
        plant.ledger([(experiment_id, "b", 1, "worker-2", T0 + 1.2)])
    plant.db.rollback()
    plant.sql("UPDATE ledger SET replayed_count = 2 WHERE experiment_id = %s AND task = 'a'", [(experiment_id,)])
    report = check(stack, Scope(experiment_ids=[experiment_id]))
    assert report.ok, report.to_markdown()
    assert (report.executions, report.duplicate_executions, report.duplicate_rows, report.replays) == (2, 0, 0, 2)


def test_attempt_without_a_dispatched_row_is_dispatch_unrecorded(plant: Planter, stack: Config) -> None:
    # b's dispatch was lost (a leader died between its Neo4j and MariaDB commits); the next one re-sent it
    experiment_id = plant.chain(b_dispatched=("b", "REDISPATCHED", 1, plant.epoch, plant.node, T0 + 1))
    report = check(stack, Scope(experiment_ids=[experiment_id]))
    assert kinds(report) == {"dispatch_unrecorded"} and len(report.violations) == 1
    assert report.violations[0].detail == (f"{experiment_id}/b is at attempt 1 in Neo4j but attempt(s) 1 have no "
                                           "DISPATCHED transition")


def test_retry_without_its_dispatched_row_is_dispatch_unrecorded(plant: Planter, stack: Config) -> None:
    e, n = plant.epoch, plant.node
    experiment_id = plant.chain(b_succeeded=("b", "SUCCEEDED", 3, e, n, T0 + 4),
                                done=(None, "COMPLETED", 0, e, n, T0 + 4))
    plant.transitions([(experiment_id, "b", "RETRY_WAIT", 1, e, n, T0 + 2),
                       (experiment_id, "b", "RETRY_WAIT", 2, e, n, T0 + 2.5),
                       (experiment_id, "b", "DISPATCHED", 3, e, n, T0 + 3)])
    plant.driver.execute_query("MATCH (t:Task {key: $key}) SET t.attempt = 3", key=f"{experiment_id}/b")
    report = check(stack, Scope(experiment_ids=[experiment_id]))
    assert kinds(report) == {"dispatch_unrecorded"}
    assert "attempt(s) 2 have no DISPATCHED" in report.violations[0].detail


def test_terminal_row_before_a_task_ended_is_log_order(plant: Planter, stack: Config) -> None:
    experiment_id = plant.chain(done=(None, "COMPLETED", 0, plant.epoch, plant.node, T0 + 1.5))
    report = check(stack, Scope(experiment_ids=[experiment_id]))
    assert kinds(report) == {"log_order"} and len(report.violations) == 1
    assert report.violations[0].detail == (f"experiment {experiment_id} has its terminal transition at {T0 + 1.5}, "
                                           f"before task b ended (SUCCEEDED/FAILED) at {T0 + 2}")


def test_attempt_ended_before_its_dispatch_is_log_order(plant: Planter, stack: Config) -> None:
    e, n = plant.epoch, plant.node
    # b's attempt 1 SUCCEEDED at T0+2 but was DISPATCHED at T0+2.5; a re-send at T0+1 is not its dispatch
    experiment_id = plant.chain(b_dispatched=("b", "DISPATCHED", 1, e, n, T0 + 2.5))
    plant.transitions([(experiment_id, "b", "REDISPATCHED", 1, e, n, T0 + 1)])
    report = check(stack, Scope(experiment_ids=[experiment_id]))
    assert kinds(report) == {"log_order"} and len(report.violations) == 1
    assert report.violations[0].detail == (f"{experiment_id}/b attempt 1 ended (SUCCEEDED/FAILED) at {T0 + 2}, "
                                           f"before its DISPATCHED transition at {T0 + 2.5}")


def test_cli_exits_1_and_names_each_violation(plant: Planter, stack: Config) -> None:
    lost = plant.experiment(state="RUNNING", finished={"a": T0 + 1, "b": T0 + 2})
    twice = plant.chain()
    plant.transitions([(twice, "b", "SUCCEEDED", 1, plant.epoch, plant.node, T0 + 2)])   # not after COMPLETED
    done = run_cli(stack, "--id", lost, "--id", twice)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("violation ")]
    assert len(lines) == 2
    assert lines[0].startswith(f"violation lost_work: experiment {lost} is still RUNNING")
    assert lines[1].startswith(f"violation double_advancement: {twice}/b has 2 SUCCEEDED")
    as_json = run_cli(stack, "--id", twice, "--json")
    assert as_json.returncode == 1
    assert '"violations_by_kind": {"double_advancement": 1}' in as_json.stdout
    assert run_cli(stack, "--since", "not-a-time").returncode == 2
