"""The worker against the real broker and database: execute, fail, replay, time out, dead-letter, batch, survive a
broker restart."""

from __future__ import annotations

import time

import pytest
from polling import wait_until
from worker_harness import Bus, ledger_rows, request, running_worker

from node.model.executors import KNOWN_EXECUTORS
from node.stack import manager
from node.worker.worker import Worker

pytestmark = pytest.mark.stack


def test_noop_request_is_answered_and_recorded(stack, bus: Bus, worker: Worker) -> None:
    req = request(executor="noop", task="stage_in")
    bus.publish(req.encode())
    [resp] = bus.responses(1, extra_s=0.3)
    assert (resp.experiment_id, resp.task, resp.attempt) == (req.experiment_id, "stage_in", 1)
    assert resp.outcome == "success" and resp.error is None and resp.result == {}
    assert resp.worker == "worker-test" and resp.replayed is False
    assert resp.started_at <= resp.ended_at
    [row] = ledger_rows(stack, req.experiment_id)
    assert (row["task"], row["attempt"], row["worker"], row["epoch"]) == ("stage_in", 1, "worker-test", 3)
    assert row["ended_at"] is not None and row["outcome"] == "success" and row["result"] == "{}"
    assert row["error"] is None and row["replayed_count"] == 0


def test_fail_first_attempt_then_succeed(stack, bus: Bus, worker: Worker) -> None:
    first = request(executor="fail", params={"first_n": 1})
    bus.publish(first.encode())
    [failed] = bus.responses(1)
    assert failed.outcome == "failure" and failed.attempt == 1
    assert failed.error == "injected failure (attempt 1 of the first 1)"

    bus.publish(request(first.experiment_id, executor="fail", params={"first_n": 1}, attempt=2).encode())
    [ok] = bus.responses(1)
    assert ok.outcome == "success" and ok.attempt == 2 and ok.error is None
    rows = ledger_rows(stack, first.experiment_id)
    assert [(r["attempt"], r["outcome"]) for r in rows] == [(1, "failure"), (2, "success")]
    assert rows[0]["error"] == failed.error


def test_completed_attempt_is_replayed_not_rerun(stack, bus: Bus, worker: Worker) -> None:
    req = request(executor="sleep", params={"ms": 400})
    bus.publish(req.encode())
    [original] = bus.responses(1)
    assert original.outcome == "success" and original.result == {"slept_ms": 400} and not original.replayed

    t0 = time.monotonic()
    bus.publish(req.encode())  # the same attempt again, as a redelivery after a lost ack would bring it
    [again] = bus.responses(1, extra_s=0.3)
    replay_s = time.monotonic() - t0 - 0.3
    assert again.replayed is True
    assert (again.outcome, again.result, again.error) == ("success", {"slept_ms": 400}, None)
    assert (again.started_at, again.ended_at, again.worker) == (original.started_at, original.ended_at,
                                                                original.worker)
    [row] = ledger_rows(stack, req.experiment_id)  # still ONE execution for the key
    assert row["replayed_count"] == 1
    assert worker.executed == 1 and worker.replayed == 1
    print(f"replay answered in {replay_s * 1000:.0f} ms (the task itself sleeps 400 ms)")


def test_same_attempt_twice_in_one_batch_runs_once(stack, bus: Bus) -> None:
    req = request(executor="noop")
    bus.publish(req.encode(), req.encode())  # both waiting before the worker starts: they arrive in one batch
    with running_worker(stack) as running:
        responses = bus.responses(2, extra_s=0.3)
    assert sorted(r.replayed for r in responses) == [False, True]
    assert {(r.experiment_id, r.attempt, r.outcome) for r in responses} == {(req.experiment_id, 1, "success")}
    [row] = ledger_rows(stack, req.experiment_id)
    assert row["replayed_count"] == 1 and running.executed == 1


def test_timeout_fails_the_task_without_waiting_for_it(stack, bus: Bus, worker: Worker) -> None:
    req = request(executor="sleep", params={"ms": 2000}, timeout_s=0.3)
    t0 = time.monotonic()
    bus.publish(req.encode())
    [resp] = bus.responses(1)
    elapsed = time.monotonic() - t0
    assert resp.outcome == "failure" and resp.error == "timed out after 0.3 s" and resp.result is None
    assert elapsed < 1.5, f"the timeout answer took {elapsed:.2f} s: the worker waited for the sleep"
    [row] = ledger_rows(stack, req.experiment_id)
    assert row["outcome"] == "failure" and row["error"] == "timed out after 0.3 s"

    follow = request(executor="noop")  # the abandoned thread does not stop the worker
    bus.publish(follow.encode())
    [ok] = bus.responses(1)
    assert ok.experiment_id == follow.experiment_id and ok.outcome == "success"


def test_executor_exception_is_a_one_line_failure(stack, bus: Bus, worker: Worker) -> None:
    bus.publish(request(executor="teleport").encode(), request(executor="sleep", params={"ms": "soon"}).encode())
    responses = bus.responses(2)
    errors = sorted(r.error for r in responses)
    assert all(r.outcome == "failure" for r in responses)
    assert errors == ["param 'ms' must be int, got 'soon'",
                      f"unknown executor 'teleport' (known: {', '.join(KNOWN_EXECUTORS)})"]


def test_malformed_requests_are_dead_lettered_and_the_worker_goes_on(stack, bus: Bus, worker: Worker) -> None:
    good = request(executor="noop")
    too_long = request(experiment_id="x" * 65).encode()
    bus.publish(b"\xff not json", b'{"v":1,"experiment_id":"e"}', too_long)
    bus.publish(good.encode())
    [resp] = bus.responses(1, extra_s=0.3)
    assert resp.experiment_id == good.experiment_id and resp.outcome == "success"
    dead = bus.take("haorch.dead", 3, extra_s=0.2)
    reasons = sorted(props.headers["x-haorch-reason"] for props, _body in dead)
    assert reasons == [f"invalid experiment_id {'x' * 65!r}: 1-64 printable characters, no '/'",
                       "missing field 'task'", "not UTF-8"]
    assert {body for _props, body in dead} == {b"\xff not json", b'{"v":1,"experiment_id":"e"}', too_long}
    assert worker.dead_lettered == 3
    assert [r["experiment_id"] for r in ledger_rows(stack)] == [good.experiment_id]


def test_batch_of_500_noops_each_answered_once(stack, bus: Bus) -> None:
    requests = [request(task=f"t{i}") for i in range(500)]
    bus.publish(*(r.encode() for r in requests))
    t0 = time.monotonic()
    with running_worker(stack) as running:
        responses = bus.responses(500, timeout_s=30, extra_s=0.5)
        elapsed = time.monotonic() - t0 - 0.5
    keys = [(r.experiment_id, r.task, r.attempt) for r in responses]
    assert len(keys) == 500 and set(keys) == {(r.experiment_id, r.task, 1) for r in requests}
    assert all(r.outcome == "success" and not r.replayed for r in responses)
    assert running.executed == 500
    rows = ledger_rows(stack)
    assert len(rows) == 500 and all(r["ended_at"] is not None for r in rows)
    print(f"500 noop tasks answered in {elapsed:.2f} s: {500 / elapsed:.0f} tasks/s (incl. the test's consumer)")


def test_rabbitmq_restart_loses_nothing(stack, bus: Bus, worker: Worker) -> None:
    def ended(prefix: str) -> int:
        return sum(1 for r in ledger_rows(stack) if r["task"].startswith(prefix) and r["ended_at"])

    answered = [request(task=f"answered{i}") for i in range(100)]  # answered before the restart, not yet read
    bus.publish(*(r.encode() for r in answered))
    wait_until(lambda: ended("answered") == 100, timeout_s=10)
    busy = [request(task=f"busy{i}", executor="sleep", params={"ms": 100}) for i in range(40)]  # a 1 s batch
    bus.publish(*(r.encode() for r in busy))
    wait_until(lambda: any(r["task"].startswith("busy") for r in ledger_rows(stack)), timeout_s=10)
    bus.close()
    rabbit = manager.find_service(stack, "rabbitmq")
    assert rabbit is not None
    rabbit.stop()  # under the worker, in the middle of the busy batch
    manager.up(stack)

    after_bus = Bus(stack)
    try:
        after = [request(task=f"after{i}") for i in range(50)]
        after_bus.publish(*(r.encode() for r in after))
        wanted = {(r.experiment_id, r.task, 1) for r in answered + busy + after}
        seen: set[tuple] = set()
        deadline = time.monotonic() + 60
        while not wanted <= seen and time.monotonic() < deadline:
            seen |= {(r.experiment_id, r.task, r.attempt) for r in after_bus.responses(len(wanted), timeout_s=1)}
    finally:
        after_bus.close()
    missing = wanted - seen
    assert not missing, f"{len(missing)} request(s) never answered, e.g. {sorted(missing)[:3]}"
    rows = ledger_rows(stack)
    assert wanted == {(r["experiment_id"], r["task"], r["attempt"]) for r in rows if r["ended_at"]}
    assert not worker.dead_lettered
    duplicates = len(rows) - len(wanted)
    print(f"broker restart: {duplicates} duplicate execution(s) of the {len(busy)} in flight")
    assert duplicates <= len(busy)


def test_mariadb_restart_is_waited_out(stack, bus: Bus, worker: Worker) -> None:
    first = request(task="first")
    bus.publish(first.encode())
    assert [r.task for r in bus.responses(1)] == ["first"]
    mariadb = manager.find_service(stack, "mariadb")
    assert mariadb is not None
    mariadb.stop()
    try:
        later = [request(task=f"later{i}") for i in range(20)]
        bus.publish(*(r.encode() for r in later))
        time.sleep(3.0)  # the worker retries the ledger meanwhile, keeping its AMQP connection alive
        assert bus.responses(1, timeout_s=0.2) == []  # nothing is answered without the ledger
    finally:
        manager.up(stack)
    responses = bus.responses(20, timeout_s=30, extra_s=0.3)
    assert sorted(r.task for r in responses) == sorted(r.task for r in later)
    assert all(r.outcome == "success" for r in responses)
    assert len(ledger_rows(stack)) == 21


def test_two_workers_share_a_backlog_of_slow_tasks_and_run_each_attempt_once(stack, bus: Bus) -> None:
    """A backlog larger than the prefetch, of tasks slower than a batch may take, each request published twice
    (as takeover re-sends do): the first worker to run a task shrinks its batch and prefetch to its
    concurrency, so the second gets work too; each attempt runs exactly once; every copy gets a response or is
    dropped as held."""
    reqs = [request(f"share-{time.time_ns()}-{i}", executor="sleep", params={"ms": 150}) for i in range(40)]
    with running_worker(stack, "worker-a", concurrency=2) as a, running_worker(stack, "worker-b", concurrency=2) as b:
        bus.publish(*[r.encode() for r in reqs], *[r.encode() for r in reqs])
        responses = []
        deadline = time.monotonic() + 60
        while sum(not r.replayed for r in responses) < 40 and time.monotonic() < deadline:
            responses += bus.responses(1, timeout_s=5)
        responses += bus.responses(0, extra_s=1.0)  # the copies: answered as replays, or dropped while held
    assert {r.experiment_id for r in responses} == {r.experiment_id for r in reqs}
    assert all(r.outcome == "success" for r in responses)
    fresh = [r for r in responses if not r.replayed]
    assert len({r.experiment_id for r in fresh}) == len(fresh) == 40  # each attempt executed once
    print(f"\nexecuted: worker-a {a.executed}, worker-b {b.executed}; copies dropped while held: "
          f"{a.skipped + b.skipped}; replays: {len(responses) - len(fresh)}")
    assert a.executed + b.executed == 40 and a.executed >= 5 and b.executed >= 5, (a.executed, b.executed)
    for r in reqs:
        assert len(ledger_rows(stack, r.experiment_id)) == 1
