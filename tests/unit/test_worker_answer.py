"""The worker's answer path (Worker.handle_batch) on an in-memory ledger and a stub broker: claims, replays, the
same attempt twice in one batch, copies of attempts held elsewhere, abandoned claims, a lost channel, dead
letters, and the order ledger → publish → ack — no server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fakes.worker_rig import WorkerRig, worker_rig

from node.config import Config
from node.errors import DependencyError
from node.model.messages import TaskRequest
from node.stores.ledger import Finish, Start
from node.stores.queues import DEAD, REQUESTS, RESPONSES
from node.worker import worker as worker_module


def request(task: str = "a", attempt: int = 1, executor: str = "noop", params: dict | None = None) -> bytes:
    return TaskRequest(experiment_id="e", task=task, kind="job_submission", executor=executor, params=params or {},
                       timeout_s=5.0, attempt=attempt, epoch=2, dispatched_at=time.time()).encode()


bench = pytest.fixture(worker_rig, name="bench")
Bench = WorkerRig


def test_a_request_is_executed_recorded_published_then_acked(bench: Bench) -> None:
    (response,) = bench.answer(request())
    assert (response.task, response.attempt, response.outcome, response.replayed) == ("a", 1, "success", False)
    assert bench.ledger.executions(("e", "a", 1)) == 1
    j = bench.journal
    assert j.index_of("ledger.claim") < j.index_of("ledger.finish") < j.index_of(f"publish {RESPONSES}") \
        < j.index_of("ack 1")
    assert bench.consumer.idle()


def test_a_replayed_request_of_an_ended_attempt_is_answered_from_the_ledger_without_running(bench: Bench) -> None:
    t0 = time.time() - 10
    row_id = bench.ledger.add(Start("e", "a", 1, "worker-0", 1, t0), ended_at=t0 + 1, outcome="failure",
                              error="disk full")
    (response,) = bench.answer(request())
    assert response.replayed and response.outcome == "failure" and response.error == "disk full"
    assert (response.worker, response.started_at, response.ended_at) == ("worker-0", t0, t0 + 1)
    assert bench.ledger.executions(("e", "a", 1)) == 1 and bench.ledger.rows_by_id[row_id].replayed_count == 1
    assert bench.worker.executed == 0 and bench.worker.replayed == 1


def test_the_same_attempt_twice_in_one_batch_runs_once_and_the_copy_is_a_replay(bench: Bench) -> None:
    first, second = bench.answer(request(), request())
    assert bench.ledger.executions(("e", "a", 1)) == 1 and bench.worker.executed == 1
    assert (first.replayed, second.replayed) == (False, True)
    assert first.outcome == second.outcome == "success" and first.started_at == second.started_at


def test_another_attempt_of_the_same_task_runs_again(bench: Bench) -> None:
    bench.answer(request(attempt=1), request(attempt=2))
    assert bench.ledger.executions(("e", "a", 1)) == bench.ledger.executions(("e", "a", 2)) == 1


def test_a_malformed_request_is_dead_lettered_with_its_reason_and_the_batch_still_acked(bench: Bench) -> None:
    responses = bench.answer(b"{not json", request(task="b"), b'{"experiment_id": "e"}')
    assert [r.task for r in responses] == ["b"]
    dead = bench.broker.messages(DEAD)
    assert [m.body for m in dead] == [b"{not json", b'{"experiment_id": "e"}']
    assert all(m.headers["x-haorch-reason"] and m.headers["x-haorch-source-queue"] == REQUESTS for m in dead)
    assert bench.journal.has("ack 3") and bench.consumer.idle() and bench.worker.dead_lettered == 2


def test_a_batch_of_only_malformed_requests_touches_no_ledger(bench: Bench) -> None:
    assert bench.answer(b"nope") == []
    assert not bench.journal.has("ledger") and bench.journal.has("ack 1")


def test_an_executor_failure_is_a_failure_response(bench: Bench) -> None:
    (response,) = bench.answer(request(executor="no_such_executor"))
    assert response.outcome == "failure" and "unknown executor" in (response.error or "")


def test_a_copy_of_an_attempt_another_worker_holds_is_not_run_and_gets_no_response(bench: Bench) -> None:
    bench.ledger.add(Start("e", "a", 1, "worker-0", 1, time.time(), hold_s=60))
    assert bench.answer(request()) == []
    assert bench.ledger.executions(("e", "a", 1)) == 1 and bench.worker.executed == 0 and bench.worker.skipped == 1
    assert bench.journal.has("ack 1") and bench.consumer.idle()


def test_a_claim_past_its_deadline_is_abandoned_as_a_failure_and_its_late_holder_publishes_nothing(
        bench: Bench) -> None:
    held = bench.ledger.add(Start("e", "a", 1, "worker-0", 1, time.time() - 100, hold_s=-1))
    (response,) = bench.answer(request())
    assert (response.outcome, response.replayed, response.worker) == ("failure", False, "worker-0")
    assert (response.error or "").startswith("abandoned:") and bench.worker.executed == 0
    assert bench.ledger.finish([Finish(held, time.time(), "success", {}, None)]) == set()  # the holder wakes up
    assert bench.ledger.rows_by_id[held].outcome == "failure"


def test_a_lost_channel_starts_nothing_more_of_the_batch_and_releases_those_claims(bench: Bench) -> None:
    bodies = [TaskRequest(experiment_id="e", task=f"t{i}", kind="k", executor="sleep", params={"ms": 300},
                          timeout_s=5.0, attempt=1, epoch=2, dispatched_at=time.time()).encode() for i in range(6)]
    bench.broker.put(REQUESTS, *bodies)
    # as _pump() finds it while the tasks run
    bench.worker._lost = DependencyError("rabbitmq", "127.0.0.1:5672", "connection lost")
    with pytest.raises(DependencyError):
        bench.worker.handle_batch(bench.consumer.next_batch(max_n=100), bench.publisher, bench.consumer)
    rows = list(bench.ledger.rows_by_id.values())
    assert len(rows) == 2 and all(r.outcome == "success" for r in rows)  # concurrency 2: two had started
    assert bench.journal.has("ledger.release 4") and not bench.journal.has("ack")
    assert bench.broker.bodies(RESPONSES) == []


def test_the_batch_shrinks_to_the_concurrency_for_slow_tasks_and_grows_for_quick_ones(bench: Bench) -> None:
    assert bench.worker.batch_limit() == 2  # nothing ran yet
    bench.worker._mean_s = 5.0
    assert bench.worker.batch_limit() == 2
    bench.worker._mean_s = 0.0001
    assert bench.worker.batch_limit() == Config(home=Path("/nonexistent")).batch_size


def test_an_ended_task_waits_for_its_batch_twice_the_mean_execution_within_bounds(bench: Bench) -> None:
    assert bench.worker.group_s() == worker_module.GROUP_S  # nothing ran yet
    bench.worker._mean_s = 0.0001                             # noop tasks: a batch ends together anyway
    assert bench.worker.group_s() == worker_module.GROUP_S
    bench.worker._mean_s = 0.008
    assert bench.worker.group_s() == 0.016
    bench.worker._mean_s = 5.0                                # slow tasks: a response waits 20 ms at most
    assert bench.worker.group_s() == worker_module.MAX_GROUP_S


def test_claims_are_renewed_while_their_tasks_run(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "RENEW_S", 0.05)
    (response,) = bench.answer(TaskRequest(experiment_id="e", task="a", kind="k", executor="sleep",
                                           params={"ms": 300}, timeout_s=5.0, attempt=1, epoch=2,
                                           dispatched_at=time.time()).encode())
    assert response.outcome == "success", response.error
    assert bench.journal.has("ledger.renew 1")


def test_a_replay_of_an_abandoned_attempt_is_lost_too(bench: Bench) -> None:
    t0 = time.time() - 10
    bench.ledger.add(Start("e", "a", 1, "worker-0", 1, t0), ended_at=t0 + 1, outcome="failure",
                     error="abandoned: its worker did not end it")
    (response,) = bench.answer(request())
    assert response.replayed and response.lost and response.outcome == "failure"


def test_a_waiting_attempt_is_answered_waiting_and_its_claim_released_for_the_re_check(bench: Bench,
                                                                                      tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    (response,) = bench.answer(request("w", executor="wait_file", params={"path": str(flag), "poll_s": 3}))
    assert (response.outcome, response.recheck_after_s, response.error) == ("waiting", 3.0, None)
    assert str(flag) in (response.waiting_on or "")
    assert bench.ledger.rows([("e", "w", 1)]) == {}, "the claim is released: the re-check claims the attempt again"
    j = bench.journal
    assert j.index_of(f"publish {RESPONSES}") < j.index_of("ack 1")
    flag.write_text("x")
    _, again = bench.answer(request("w", executor="wait_file", params={"path": str(flag)}))
    assert (again.outcome, again.result) == ("success", {"path": str(flag), "size": 1})
    assert bench.ledger.executions(("e", "w", 1)) == 1


def test_output_references_are_resolved_from_the_ledger_before_the_executor_runs(bench: Bench) -> None:
    bench.ledger.add(Start("e", "submit", 1, "worker-0", 2, time.time()), ended_at=time.time(), outcome="success",
                     result={"job_id": "42", "nested": {"n": 7}})
    ref = {"ms": "{{ tasks.submit.outputs.nested.n }}", "note": "job {{ tasks.submit.outputs.job_id }}",
           "where": "{{ experiment.id }}/{{ params.note }}"}
    (response,) = bench.answer(request("sleepy", executor="sleep", params=ref))
    assert (response.outcome, response.result) == ("success", {"slept_ms": 7})
    (missing,) = bench.answer(request("other", executor="noop", params={"x": "{{ tasks.ghost.outputs.id }}"}))[1:]
    assert missing.outcome == "failure" and "task 'ghost' has no recorded outputs" in (missing.error or "")


def test_an_undo_request_runs_the_executor_s_undo_without_a_claim_or_a_response(bench: Bench,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    undone: list[tuple[str, dict]] = []
    monkeypatch.setitem(worker_module.UNDOS, "noop", lambda params, ctx: undone.append((ctx.task, params)))
    body = TaskRequest(experiment_id="e", task="submit", kind="job_submission", executor="noop", params={"site": "x"},
                       timeout_s=5.0, attempt=1, epoch=2, dispatched_at=time.time(), undo=True).encode()
    assert bench.answer(body) == []
    assert undone == [("submit", {"site": "x"})]
    assert bench.ledger.rows([("e", "submit", 1)]) == {}
    assert bench.consumer.idle()
