"""The worker answers each group of executions as it ends (Worker.handle_batch on an in-memory ledger and a stub
broker): a quick task's response is recorded and published while a slow task of the same batch still runs, and the
batch is acknowledged in order, never a delivery before its response is confirmed — no server."""

from __future__ import annotations

import time

import pytest
from fakes.responses import responses_in
from fakes.worker_rig import WorkerRig, worker_rig

from node.errors import DependencyError
from node.model.messages import TaskRequest
from node.stores.queues import REQUESTS, RESPONSES


def request(task: str, ms: int = 0) -> bytes:
    executor, params = ("sleep", {"ms": ms}) if ms else ("noop", {})
    return TaskRequest(experiment_id="e", task=task, kind="job_submission", executor=executor, params=params,
                       timeout_s=5.0, attempt=1, epoch=2, dispatched_at=time.time()).encode()


rig = pytest.fixture(worker_rig, name="rig")
Rig = WorkerRig


def test_a_quick_task_is_answered_before_a_slow_one_of_its_batch_ends_and_acked_after_it(rig: Rig) -> None:
    responses = rig.answer(request("slow", ms=400), request("quick"))
    assert [r.task for r in responses] == ["quick", "slow"]
    j = rig.journal
    # quick: recorded alone, published alone, while slow still ran; its ack waits for slow's (delivery 1) answer
    assert j[j.index_of("ledger.finish"):] == ["ledger.finish 1", f"publish {RESPONSES} 1", "ledger.finish 1",
                                               f"publish {RESPONSES} 1", "ack 2"]
    assert responses[1].ended_at - responses[0].ended_at > 0.3
    assert rig.consumer.idle()


def test_the_answered_prefix_of_a_batch_is_acked_while_a_later_task_runs(rig: Rig) -> None:
    rig.answer(request("quick"), request("slow", ms=400))
    j = rig.journal
    assert j[j.index_of("ledger.finish"):] == ["ledger.finish 1", f"publish {RESPONSES} 1", "ack 1",
                                               "ledger.finish 1", f"publish {RESPONSES} 1", "ack 2"]
    assert rig.consumer.idle()


def test_quick_tasks_of_one_batch_share_one_ledger_write_and_one_message(rig: Rig) -> None:
    responses = rig.answer(*[request(f"t{i}") for i in range(20)])
    assert sorted(r.task for r in responses) == sorted(f"t{i}" for i in range(20))
    assert rig.journal.count("ledger.finish 20") == 1 and rig.journal.count(f"publish {RESPONSES} 1") == 1
    assert rig.journal[-1] == "ack 20"


def test_a_failed_publish_stops_answering_and_acking_but_every_end_reaches_the_ledger(rig: Rig) -> None:
    rig.publisher.fail_with = DependencyError("rabbitmq", "127.0.0.1:5672", "no confirms")
    rig.broker.put(REQUESTS, request("quick"), request("slow", ms=300))
    with pytest.raises(DependencyError):
        rig.worker.handle_batch(rig.consumer.next_batch(max_n=100), rig.publisher, rig.consumer)
    assert all(row.outcome == "success" for row in rig.ledger.rows_by_id.values())
    assert len(rig.ledger.rows_by_id) == 2 and not rig.journal.has("ack")
    rig.publisher.fail_with = None
    rig.consumer.close()  # the reconnect: the batch comes back and is answered from the ledger
    consumer = rig.broker.consumer([REQUESTS])
    rig.worker.handle_batch(consumer.next_batch(max_n=100), rig.publisher, consumer)
    responses = responses_in(*rig.broker.bodies(RESPONSES))
    assert sorted(r.task for r in responses) == ["quick", "slow"] and all(r.replayed for r in responses)
    assert consumer.idle()
