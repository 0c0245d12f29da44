"""Retry from the failed step (issue 15): a FAILED or CANCELLED experiment resumes under the same id; its failed and
cancelled tasks run again with new attempts, its succeeded ones never again; every invariant holds after it — on a
real cluster."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from core_harness import (
    cli_json,
    cypher,
    dag_tasks,
    experiment_states,
    query,
    register,
    submit,
    transitions,
    unique,
    wait_all,
)
from polling import wait_until

from node.config import Config
from node.errors import ConflictError, NotFoundError
from node.experiments import Experiments
from node.verify.check import check
from node.verify.snapshot import Scope

pytestmark = pytest.mark.stack


def flaky_template(type_: str) -> dict:
    """prepare → flaky (fails its first 2 attempts, has 2) → finish; prepare → side (succeeds)."""
    return {"type": type_, "tasks": [
        {"name": "prepare", "kind": "data_staging"},
        {"name": "flaky", "kind": "job_submission", "executor": "fail", "params": {"first_n": 2}, "retries": 2,
         "backoff_s": 0.1, "depends_on": ["prepare"]},
        {"name": "finish", "kind": "output_staging", "depends_on": ["flaky"]},
        {"name": "side", "kind": "monitoring", "depends_on": ["prepare"]}]}


def ledger(cfg: Config, experiment_id: str) -> list[tuple[str, int, str]]:
    return [(r["task"], r["attempt"], r["outcome"]) for r in query(
        cfg, "SELECT task, attempt, outcome FROM ledger WHERE experiment_id = %s ORDER BY task, attempt",
        (experiment_id,))]


def failed_experiment(cfg: Config, tmp_path: Path, prefix: str) -> str:
    """A new experiment of a new flaky type (flaky_template), FAILED."""
    type_ = unique("flaky").replace("-", "_")
    assert register(cfg, tmp_path, flaky_template(type_)).returncode == 0
    exp = submit(cfg, type_, unique(prefix))
    assert wait_all(cfg, [exp], 60) == {exp: "FAILED"}
    return exp


def assert_invariants(cfg: Config, *ids: str) -> None:
    report = check(cfg, Scope(experiment_ids=list(ids)))
    assert report.ok, [v.line() for v in report.violations]


def test_a_failed_experiment_resumes_from_its_failed_step(workers: Config, tmp_path: Path) -> None:
    cfg = workers
    exp = failed_experiment(cfg, tmp_path, "retry")
    before = dag_tasks(cfg, exp)
    assert (before["flaky"]["status"], before["flaky"]["attempt"]) == ("FAILED", 2)
    assert before["finish"]["status"] == "CANCELLED"

    with Experiments(cfg) as exps:
        out = exps.retry(exp)
        assert out == {"experiment_id": exp, "state": "RUNNING", "retried_tasks": 2}
        assert wait_all(cfg, [exp], 60) == {exp: "COMPLETED"}
        again = exps.retry(exp)  # idempotent: a finished (or running) experiment is reported as it is
        assert again == {"experiment_id": exp, "state": "COMPLETED", "retried_tasks": 0}

    # the succeeded tasks ran once; flaky got a new attempt (3, its first of 2 new ones), finish its first
    assert ledger(cfg, exp) == [("finish", 1, "success"), ("flaky", 1, "failure"), ("flaky", 2, "failure"),
                                ("flaky", 3, "success"), ("prepare", 1, "success"), ("side", 1, "success")]
    rows = transitions(cfg, exp)
    reopened = [(r["task"], r["from_state"], r["to_state"], r["attempt"]) for r in rows if r["detail"] == "retry"]
    assert sorted(reopened) == [("finish", "CANCELLED", "PENDING", 0), ("flaky", "FAILED", "PENDING", 2)]
    states = [r["to_state"] for r in rows if r["task"] is None]
    assert states == ["QUEUED", "RUNNING", "FAILED", "RUNNING", "COMPLETED"]
    assert [r["epoch"] for r in rows if r["detail"] == "retry"] == [0, 0]  # a user's write, not a leader's
    assert query(cfg, "SELECT finished_at FROM experiments WHERE experiment_id = %s", (exp,))[0]["finished_at"]
    assert_invariants(cfg, exp)


def test_a_task_gets_its_attempts_again_and_a_cancelled_experiment_resumes(workers: Config, tmp_path: Path) -> None:
    cfg = workers
    type_ = unique("always").replace("-", "_")
    template = {"type": type_, "tasks": [
        {"name": "hold", "kind": "job_submission", "executor": "sleep", "params": {"ms": 4000}},
        {"name": "after", "kind": "output_staging", "depends_on": ["hold"]}]}
    assert register(cfg, tmp_path, template).returncode == 0
    exp = submit(cfg, type_, unique("cancelled"))
    wait_until(lambda: dag_tasks(cfg, exp)["hold"]["status"] == "DISPATCHED", 30, "hold dispatched")
    with Experiments(cfg) as exps:
        assert exps.cancel(exp)["state"] == "CANCELLED"
        out = exps.retry(exp)
        assert (out["state"], out["retried_tasks"]) == ("RUNNING", 2)
        assert wait_all(cfg, [exp], 60) == {exp: "COMPLETED"}
    tasks = dag_tasks(cfg, exp)
    assert (tasks["hold"]["attempt"], tasks["after"]["attempt"]) == (2, 1)
    assert_invariants(cfg, exp)


def test_a_retry_whose_caller_dies_before_mariadb_is_finished_by_the_leader(workers: Config, tmp_path: Path) -> None:
    """The Neo4j half alone (as if the CLI died right after it): the tasks stay held, MariaDB says FAILED, until the
    leader's sweep writes the Outbox node (after submit_grace_s) and releases them."""
    cfg = workers
    exp = failed_experiment(cfg, tmp_path, "half")
    with Experiments(cfg) as exps:
        recorded = exps.records.applied(exps.dags.outbox_naming(exp))
        state, result = exps.dags.retry(exp, now=time.time(), recorded=recorded)
        assert state == "RUNNING" and result.outbox_id
        time.sleep(2)  # nothing runs while held
        assert dag_tasks(cfg, exp)["flaky"]["status"] == "RETRY_WAIT"
        assert ("flaky", 3, "success") not in ledger(cfg, exp)
        with pytest.raises(ConflictError, match="does not record it yet"):  # a second retry meanwhile
            cypher(cfg, "MATCH (e:Experiment {experiment_id: $id}) SET e.state = 'FAILED'", id=exp)
            try:
                exps.retry(exp)
            finally:
                cypher(cfg, "MATCH (e:Experiment {experiment_id: $id}) SET e.state = 'RUNNING'", id=exp)
    # MariaDB says FAILED (terminal) until the sweep writes the retry
    wait_until(lambda: experiment_states(cfg, [exp])[exp] == "COMPLETED", 30 + cfg.submit_grace_s, "completed")
    assert ("flaky", 3, "success") in ledger(cfg, exp)
    assert_invariants(cfg, exp)


def test_retry_refuses_what_it_cannot_do(workers: Config) -> None:
    with Experiments(workers) as exps, pytest.raises(NotFoundError):
        exps.retry(unique("nope"))


def test_the_cli_retries_and_the_audit_log_says_who(workers: Config, tmp_path: Path) -> None:
    cfg = workers
    exp = failed_experiment(cfg, tmp_path, "cli")
    out = cli_json(cfg, "retry", exp)
    assert (out["state"], out["retried_tasks"]) == ("RUNNING", 2)
    wait_until(lambda: experiment_states(cfg, [exp])[exp] == "COMPLETED", 60, "completed")
    rows = query(cfg, "SELECT who, role, action, outcome, node_id FROM audit WHERE target = %s ORDER BY id", (exp,))
    assert [(r["action"], r["outcome"]) for r in rows] == [("submit", "ok"), ("retry", "ok")]
    assert all(r["who"].startswith("local:") and r["node_id"].startswith("cli@") for r in rows)
