"""The worker's answer path (Worker.handle_batch) on an in-memory ledger and a stub broker: replays, the same
attempt twice in one batch, dead letters, and the order ledger → publish → ack — no server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.broker import StubBroker
from fakes.journal import Journal
from fakes.ledger import FakeLedger

from node.config import Config
from node.model.messages import TaskRequest, TaskResponse
from node.stores.ledger import Start
from node.stores.queues import DEAD, REQUESTS, RESPONSES
from node.worker.worker import Worker


class Bench:
    def __init__(self) -> None:
        self.journal = Journal()
        self.ledger = FakeLedger(self.journal)
        self.broker = StubBroker(self.journal)
        self.publisher = self.broker.publisher()
        self.consumer = self.broker.consumer([REQUESTS])
        self.worker = Worker(Config(home=Path("/nonexistent")), "worker-1", concurrency=2, ledger=self.ledger)

    def answer(self, *bodies: bytes) -> list[TaskResponse]:
        """Deliver ``bodies`` as one batch; the responses published."""
        self.broker.put(REQUESTS, *bodies)
        self.worker.handle_batch(self.consumer.next_batch(max_n=100), self.publisher, self.consumer)
        return [TaskResponse.decode(body) for body in self.broker.bodies(RESPONSES)]


def request(task: str = "a", attempt: int = 1, executor: str = "noop") -> bytes:
    return TaskRequest(experiment_id="e", task=task, kind="job_submission", executor=executor, params={},
                       timeout_s=5.0, attempt=attempt, epoch=2, dispatched_at=time.time()).encode()


@pytest.fixture
def bench() -> Iterator[Bench]:
    bench = Bench()
    yield bench
    bench.worker._pool.shutdown(wait=True)


def test_a_request_is_executed_recorded_published_then_acked(bench: Bench) -> None:
    (response,) = bench.answer(request())
    assert (response.task, response.attempt, response.outcome, response.replayed) == ("a", 1, "success", False)
    assert bench.ledger.executions(("e", "a", 1)) == 1
    j = bench.journal
    assert j.index_of("ledger.begin") < j.index_of("ledger.finish") < j.index_of(f"publish {RESPONSES}") \
        < j.index_of("ack 1")
    assert bench.consumer.idle()


def test_a_replayed_request_of_an_ended_attempt_is_answered_from_the_ledger_without_running(bench: Bench) -> None:
    t0 = time.time() - 10
    row_id = bench.ledger.add(Start("e", "a", 1, "worker-0", 1, t0), ended_at=t0 + 1, outcome="failure",
                              error="disk full")
    (response,) = bench.answer(request())
    assert response.replayed and response.outcome == "failure" and response.error == "disk full"
    assert (response.worker, response.started_at, response.ended_at) == ("worker-0", t0, t0 + 1)
    assert bench.ledger.executions(("e", "a", 1)) == 1 and bench.ledger.rows[row_id].replayed_count == 1
    assert not bench.journal.has("ledger.begin") and bench.worker.replayed == 1


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
