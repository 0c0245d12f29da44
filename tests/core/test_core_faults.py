"""The orchestrator core under faults on a real cluster: lost responses (timeout), duplicate and malformed
responses, a submission while no node runs, a RabbitMQ restart in the middle of a run (issue 3)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from core_harness import (
    assert_completed_in_order,
    cli_ok,
    dag_tasks,
    experiment_states,
    metric,
    publish,
    purge,
    query,
    register,
    start_workers,
    stop_workers,
    submit,
    take,
    task_rows,
    transitions,
    unique,
    wait_all,
)
from polling import wait_until

from node import cluster as cluster_ops
from node.config import Config
from node.experiments import Experiments
from node.model.messages import TaskResponse
from node.stack import manager
from node.stores.queues import DEAD, REQUESTS, RESPONSES, SUBMISSIONS

pytestmark = pytest.mark.stack


def _dispatched(cfg: Config, exp: str, task: str) -> bool:
    t = dag_tasks(cfg, exp).get(task)
    return bool(t) and t["status"] == "DISPATCHED"


def test_lost_response_is_redispatched_after_timeout_and_grace(workers: Config, tmp_path: Path) -> None:
    cfg = workers
    template = {"type": "core-timeout", "description": "short timeout", "tasks": [
        {"name": "quick", "kind": "job_submission", "timeout_s": 1},
        {"name": "next", "kind": "output_staging", "depends_on": ["quick"]},
    ]}
    assert register(cfg, tmp_path, template).returncode == 0
    stop_workers(cfg)  # nobody answers: the response of "quick" never comes
    purge(cfg, REQUESTS)
    exp = submit(cfg, "core-timeout", unique("core-timeout"))
    rows = wait_until(lambda: task_rows(transitions(cfg, exp), "quick", "REDISPATCHED"), 30,
                    "a REDISPATCHED transition of the overdue task")
    (first,) = task_rows(transitions(cfg, exp), "quick", "DISPATCHED")
    assert rows[0]["at"] - first["at"] >= 1.0 + 0.5, "re-dispatched before timeout_s + grace"
    assert rows[0]["attempt"] == first["attempt"] == 1
    assert experiment_states(cfg, [exp]) == {exp: "RUNNING"}

    start_workers(cfg)
    assert wait_all(cfg, [exp], 90) == {exp: "COMPLETED"}
    rows = assert_completed_in_order(cfg, exp)
    assert len(task_rows(rows, "next", "DISPATCHED", "REDISPATCHED")) == 1


def test_duplicate_response_advances_the_dag_once(workers: Config) -> None:
    cfg = workers
    stop_workers(cfg)
    purge(cfg, REQUESTS)
    exp = submit(cfg, "chain", unique("core-dup"))
    wait_until(lambda: _dispatched(cfg, exp, "stage_in"), 30, "stage_in to be dispatched")
    now = time.time()
    response = TaskResponse(experiment_id=exp, task="stage_in", attempt=1, outcome="success", result={},
                            error=None, worker="core-test", started_at=now, ended_at=now).encode()
    duplicates_before = metric(cfg, "haorch_duplicate_responses_total")
    publish(cfg, RESPONSES, response, response)  # twice at once (likely one batch) ...
    wait_until(lambda: _dispatched(cfg, exp, "submit_job"), 30, "submit_job to be dispatched")
    publish(cfg, RESPONSES, response)  # ... and once more later (another batch)
    wait_until(lambda: metric(cfg, "haorch_duplicate_responses_total") >= duplicates_before + 2, 30,
             "two responses counted as duplicates")

    rows = transitions(cfg, exp)
    assert len(task_rows(rows, "stage_in", "SUCCEEDED")) == 1
    assert len(task_rows(rows, "submit_job", "DISPATCHED", "REDISPATCHED")) == 1
    assert task_rows(rows, "monitor") == []
    tasks = dag_tasks(cfg, exp)
    assert tasks["stage_in"]["flags"] == 1 and tasks["submit_job"]["status"] == "DISPATCHED"

    start_workers(cfg)  # the stale stage_in request runs too: its answer is one more duplicate
    assert wait_all(cfg, [exp], 90) == {exp: "COMPLETED"}
    rows = assert_completed_in_order(cfg, exp)
    assert len(task_rows(rows, "submit_job", "DISPATCHED", "REDISPATCHED")) == 1


def test_malformed_messages_are_dead_lettered_and_the_loop_goes_on(workers: Config) -> None:
    cfg = workers
    purge(cfg, DEAD)
    pid = cluster_ops.node_process(cfg, 1).pid()
    dead_before = metric(cfg, "haorch_dead_letters_total")
    now = time.time()
    unknown = TaskResponse(experiment_id="core-no-such-exp", task="t", attempt=1, outcome="success", result={},
                           error=None, worker="core-test", started_at=now, ended_at=now).encode()
    bad = [b"\xff\xfe\x00 garbage", b'{"v": 1, "experiment_id": "x"}', unknown]
    publish(cfg, RESPONSES, *bad, b"[1, 2, 3]")  # a pack of three items, none a response: each dead-lettered alone
    publish(cfg, SUBMISSIONS, b"not a notice")
    got = take(cfg, DEAD, 7, timeout_s=15)
    assert sorted(body for _p, body in got) == sorted([*bad, b"1", b"2", b"3", b"not a notice"])
    reasons = {body: props.headers.get("x-haorch-reason") for props, body in got}
    assert all(reasons.values()), reasons
    assert reasons[b"3"] == "pack item 2: not a JSON object but a number"
    assert reasons[b"\xff\xfe\x00 garbage"] == "not UTF-8"
    assert "missing field" in reasons[b'{"v": 1, "experiment_id": "x"}']
    assert "unknown task" in reasons[unknown]
    assert {props.headers.get("x-haorch-source-queue") for props, body in got if body != b"not a notice"} == {
        RESPONSES}
    wait_until(lambda: metric(cfg, "haorch_dead_letters_total") >= dead_before + 7, 30, "dead letters counted")

    exp = submit(cfg, "diamond", unique("core-after-garbage"))
    assert wait_all(cfg, [exp], 90) == {exp: "COMPLETED"}
    assert_completed_in_order(cfg, exp)
    assert cluster_ops.node_process(cfg, 1).pid() == pid, "the node died on bad input"


def test_submission_while_no_node_runs_is_picked_up_when_one_starts(workers: Config) -> None:
    cfg = workers
    epoch = cluster_ops.leader(cfg)["epoch"]
    assert cluster_ops.node_process(cfg, 1).stop(grace_s=10.0)
    try:
        exp = submit(cfg, "chain", unique("core-nonode"))
        purge(cfg, SUBMISSIONS)  # without the notice only the durable stores know about it
        time.sleep(1.0)
        assert experiment_states(cfg, [exp]) == {exp: "QUEUED"}
        assert {t["status"] for t in dag_tasks(cfg, exp).values()} == {"PENDING"}
    finally:
        cluster_ops.start_node(cfg, 1)
    assert cluster_ops.wait_for_leader(cfg, 60, newer_than=epoch)["epoch"] > epoch
    assert wait_all(cfg, [exp], 90) == {exp: "COMPLETED"}
    assert_completed_in_order(cfg, exp)


def test_submission_whose_notice_is_lost_is_swept_by_the_running_leader(workers: Config) -> None:
    cfg = workers
    exp = unique("core-nonotice")
    with Experiments(cfg) as exps:
        assert exps.submit("diamond", exp, notify=False)["created"] is True
    assert wait_all(cfg, [exp], 90) == {exp: "COMPLETED"}
    assert_completed_in_order(cfg, exp)


def test_rabbitmq_restart_mid_run_every_experiment_completes(workers: Config, tmp_path: Path) -> None:
    cfg = workers
    template = {"type": "core-steady", "description": "a chain that takes a few seconds", "tasks": [
        {"name": f"s{i}", "kind": "job_submission", "executor": "sleep", "params": {"ms": 1000},
         **({"depends_on": [f"s{i - 1}"]} if i > 1 else {})} for i in range(1, 6)]}
    assert register(cfg, tmp_path, template).returncode == 0
    steady, fan = [unique("core-rmq") for _ in range(6)], [unique("core-rmq-fan") for _ in range(2)]
    with Experiments(cfg) as exps:  # in-process: a CLI call per experiment is too slow on a busy machine
        exps.submit_many("core-steady", steady)
        exps.submit_many("fanout", fan)
    ids = steady + fan
    wait_until(lambda: query(cfg, "SELECT 1 FROM transitions WHERE experiment_id = %s AND task = 's1' "
                                "AND to_state = 'SUCCEEDED'", (ids[0],)), 60, "the run to be under way")
    assert any(s != "COMPLETED" for s in experiment_states(cfg, ids).values()), "the run ended too early"

    rabbit = manager.find_service(cfg, "rabbitmq")
    assert rabbit is not None and rabbit.stop()
    time.sleep(1.0)
    manager.up(cfg)
    states = wait_all(cfg, ids, 120)
    assert states == {i: "COMPLETED" for i in ids}
    for exp in ids:
        assert_completed_in_order(cfg, exp)
    # the cluster still works after the restart
    exp = submit(cfg, "chain", unique("core-after-rmq"))
    assert wait_all(cfg, [exp], 90) == {exp: "COMPLETED"}
    cli_ok(cfg, "status", exp)
