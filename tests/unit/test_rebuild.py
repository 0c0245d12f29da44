"""The pure rebuild of an experiment's graph from MariaDB's record (node/model/rebuild.py): hand-made logs, and the
in-memory DAG store driven at random, whose every task is rebuilt from the rows it wrote to the transition log."""

from __future__ import annotations

import random

import pytest
from fakes.dags import FakeDagStore

from node.model.advance import AdvanceResult, Outcome, transition_rows
from node.model.messages import static_request_bytes
from node.model.rebuild import LOST_MARK, ExperimentRecord, Step, Unbuildable, rebuild, unbuilt
from node.model.states import REDISPATCHED, TaskStatus
from node.model.template import RetryPolicy, TaskSpec, Template

S = TaskStatus
CHAIN = Template("chain", "test", (
    TaskSpec("a", "data_staging"),
    TaskSpec("b", "job_submission", depends_on=("a",), retry=RetryPolicy(3, backoff_s=2.0, backoff_factor=3.0)),
    TaskSpec("c", "output_staging", depends_on=("b",)),
), params={"ms": None})
DIAMOND = Template("diamond", "test", (
    TaskSpec("a", "data_staging"),
    TaskSpec("b", "job_submission", depends_on=("a",), retry=RetryPolicy(2, backoff_s=0.5)),
    TaskSpec("c", "job_submission", depends_on=("a",)),
    TaskSpec("d", "output_staging", depends_on=("b", "c")),
), params={"ms": None})


def _record(steps: list[Step], state: str = "RUNNING", template: Template = CHAIN) -> ExperimentRecord:
    return ExperimentRecord("e1", template.type, 1, state, {"ms": "5"}, created_at=100.0, steps=steps)


def _tasks(graph) -> dict[str, dict]:
    return {t["name"]: t for t in graph.tasks}


def test_a_queued_experiment_is_its_template_with_every_task_pending() -> None:
    graph = rebuild(_record([], state="QUEUED"), CHAIN, now=500.0)
    tasks = _tasks(graph)
    assert [t["status"] for t in graph.tasks] == [S.PENDING] * 3
    assert [t["waiting"] for t in graph.tasks] == [0, 1, 1]
    assert tasks["a"]["request"] == static_request_bytes("e1", CHAIN.tasks[0], {"ms": "5"}, {})
    assert tasks["b"]["max_attempts"] == 3 and tasks["b"]["backoff_factor"] == 3.0
    assert graph.experiment == {"experiment_id": "e1", "type": "chain", "version": 1, "state": "QUEUED",
                                "remaining": 3, "created_at": 100.0, "started_at": None, "finished_at": None,
                                "rebuilt_at": 500.0}
    assert sorted(graph.edges) == [("e1/b", "e1/a"), ("e1/c", "e1/b")]
    assert graph.live


def test_flags_dispatches_and_retries_follow_the_log() -> None:
    steps = [Step("a", S.DISPATCHED, 1, 3, 10.0), Step("a", S.SUCCEEDED, 1, 3, 11.0),
             Step("b", S.DISPATCHED, 1, 3, 11.0), Step("b", S.RETRY_WAIT, 1, 3, 12.0, "boom"),
             Step("b", S.DISPATCHED, 2, 4, 14.0), Step("b", REDISPATCHED, 2, 5, 20.0),
             Step("b", S.RETRY_WAIT, 2, 5, 21.0, f"{LOST_MARK} worker-1 died")]
    tasks = _tasks(rebuild(_record(steps), CHAIN, now=30.0))
    assert tasks["a"] | {"request": None} == tasks["a"] | {
        "executed": True, "status": S.SUCCEEDED, "attempt": 1, "flags": 1, "finished_at": 11.0, "epoch": 3,
        "dispatched_at": 10.0, "request": None}
    b = tasks["b"]
    assert (b["status"], b["attempt"], b["dispatched_at"], b["epoch"]) == (S.RETRY_WAIT, 2, 20.0, 5)
    assert b["not_before"] == 21.0 and b["lost"] == 1  # a lost attempt is retried at once, and counted
    assert (b["waiting"], tasks["c"]["waiting"], tasks["c"]["status"]) == (0, 1, S.PENDING)


def test_a_failed_attempt_waits_for_the_templates_backoff() -> None:
    steps = [Step("a", S.DISPATCHED, 1, 1, 1.0), Step("a", S.SUCCEEDED, 1, 1, 2.0),
             Step("b", S.DISPATCHED, 1, 1, 2.0), Step("b", S.RETRY_WAIT, 1, 1, 3.0, "boom"),
             Step("b", S.DISPATCHED, 2, 1, 5.0), Step("b", S.RETRY_WAIT, 2, 1, 6.0, "boom again")]
    b = _tasks(rebuild(_record(steps), CHAIN, now=7.0))["b"]
    assert b["not_before"] == 6.0 + 2.0 * 3.0 and b["lost"] is None and b["last_error"] == "boom again"


def test_a_failed_experiment_keeps_its_cancelled_tasks_at_their_attempt() -> None:
    steps = [Step("a", S.DISPATCHED, 1, 1, 1.0), Step("a", S.FAILED, 1, 1, 2.0, "no"),
             Step("b", S.CANCELLED, 0, 1, 2.0), Step("c", S.CANCELLED, 0, 1, 2.0)]
    graph = rebuild(_record(steps, state="FAILED"), CHAIN, now=3.0)
    tasks = _tasks(graph)
    assert [(t["status"], t["attempt"]) for t in graph.tasks] == [(S.FAILED, 1), (S.CANCELLED, 0), (S.CANCELLED, 0)]
    assert tasks["a"]["last_error"] == "no" and graph.experiment["remaining"] == 3 and not graph.live


def test_a_log_naming_a_task_the_template_lacks_cannot_be_built() -> None:
    with pytest.raises(Unbuildable, match="zzz"):
        rebuild(_record([Step("zzz", S.DISPATCHED, 1, 1, 1.0)]), CHAIN, now=1.0)
    graph = unbuilt(_record([], state="FAILED"), "template gone", now=2.0)
    assert graph.tasks == [] and graph.experiment["reason"] == "template gone"


COMPARED = ("status", "executed", "attempt", "waiting", "flags", "dispatched_at", "finished_at", "not_before",
            "last_error", "epoch")


@pytest.mark.parametrize("seed", range(25))
def test_every_task_of_a_random_run_is_rebuilt_as_the_dag_store_left_it(seed: int) -> None:
    """The fake DAG store (DagStore's semantics) runs experiments with random successes, failures, lost attempts,
    overdue re-sends and leader changes, writing each result's transition rows as the leader would; at random
    moments every experiment is rebuilt from the rows and compared with the store, field by field."""
    rng = random.Random(seed)
    dags = FakeDagStore()
    templates = {"e0": CHAIN, "e1": DIAMOND, "e2": CHAIN, "e3": DIAMOND}
    for experiment_id, template in templates.items():
        dags.add_experiment(experiment_id, list(template.tasks), {"ms": "5"})
    log: dict[str, list[Step]] = {i: [] for i in templates}
    states = {i: "QUEUED" for i in templates}
    epoch, now = 1, 1000.0

    def record(result: AdvanceResult) -> None:
        for experiment_id, task, _from, to, attempt, detail in transition_rows(result):
            if task is None:
                states[experiment_id] = to
            else:
                log[experiment_id].append(Step(task, to, attempt, epoch, now, detail))

    record(dags.advance(epoch, [], sorted(templates), now))
    for _ in range(60):
        now += rng.choice((0.1, 1.0, 30.0, 100.0))
        if rng.random() < 0.1:
            epoch += 1
        dispatched = [t for t in dags.tasks.values() if t["status"] == S.DISPATCHED]
        outcomes = []
        for task in rng.sample(dispatched, k=min(len(dispatched), rng.randint(0, 3))):
            kind = rng.choice(("ok", "ok", "ok", "fail", "lost"))
            attempt = task["attempt"] if rng.random() < 0.9 else task["attempt"] - 1  # a stale copy, now and then
            outcomes.append(Outcome(task["key"], attempt, kind == "ok",
                                    None if kind == "ok" else (f"{LOST_MARK} gone" if kind == "lost" else "boom"),
                                    lost=kind == "lost"))
        record(dags.advance(epoch, outcomes, [], now))
        record(dags.due_work(epoch, now, grace_s=5.0, limit=10))
        if rng.random() < 0.3 or _ == 59:
            for experiment_id, template in templates.items():
                graph = rebuild(ExperimentRecord(experiment_id, template.type, 1, states[experiment_id], {"ms": "5"},
                                                 0.0, steps=log[experiment_id]), template, now)
                assert graph.experiment["state"] == dags.experiments[experiment_id]["state"]
                assert graph.experiment["remaining"] == dags.experiments[experiment_id]["remaining"]
                for node in graph.tasks:
                    kept = dags.tasks[node["key"]]
                    assert node["request"] == kept["request"]
                    assert (node["lost"] or 0) == kept["lost"], node["key"]
                    for name in COMPARED:
                        assert node[name] == kept.get(name, 0 if name == "epoch" else None), (node["key"], name)


def test_a_retried_task_is_pending_again_with_its_attempts_as_base() -> None:
    """A user's retry logs PENDING (detail ``retry``, epoch 0): the task is PENDING again, its attempt kept as the
    base of its next ones, and its next backoff counts from that base; its successors wait on it again."""
    steps = [Step("a", S.DISPATCHED, 1, 3, 10.0), Step("a", S.SUCCEEDED, 1, 3, 11.0),
             Step("b", S.DISPATCHED, 1, 3, 11.0), Step("b", S.RETRY_WAIT, 1, 3, 12.0, "boom"),
             Step("b", S.DISPATCHED, 2, 3, 14.0), Step("b", S.RETRY_WAIT, 2, 3, 15.0, "boom"),
             Step("b", S.DISPATCHED, 3, 3, 33.0), Step("b", S.FAILED, 3, 3, 34.0, "boom"),
             Step("c", S.CANCELLED, 0, 3, 34.0),
             Step("b", S.PENDING, 3, 0, 50.0, "retry"), Step("c", S.PENDING, 0, 0, 50.0, "retry")]
    graph = rebuild(_record(steps), CHAIN, now=60.0)
    tasks = _tasks(graph)
    assert (tasks["b"]["status"], tasks["b"]["attempt"], tasks["b"]["attempt_base"]) == (S.PENDING, 3, 3)
    assert (tasks["b"]["finished_at"], tasks["b"]["last_error"], tasks["b"]["waiting"]) == (None, None, 0)
    assert (tasks["c"]["status"], tasks["c"]["attempt"], tasks["c"]["waiting"]) == (S.PENDING, 0, 1)
    assert graph.experiment["remaining"] == 2
    # the first new attempt fails: its backoff is the first one (2 s), not the fourth
    more = [*steps, Step("b", S.DISPATCHED, 4, 7, 51.0), Step("b", S.RETRY_WAIT, 4, 7, 52.0, "boom")]
    assert _tasks(rebuild(_record(more), CHAIN, now=60.0))["b"]["not_before"] == 52.0 + 2.0
