"""One bad message never stops a leader or a worker (node/isolation.py), on the in-memory fakes: a message that makes
a store fail in a way the decoder did not foresee is dead-lettered alone with the exception as its reason, the
rest of its batch advances and is acked; a dependency failure still leaves the whole batch for redelivery."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fakes.broker import StubBroker
from fakes.worker_rig import WorkerRig, worker_rig
from test_leader_term import CHAIN, Leader, response
from test_worker_answer import request as request_body

from node.config import Config
from node.errors import DependencyError
from node.metrics import DEAD_LETTERS
from node.model.messages import SubmissionNotice, TaskRequest, TaskResponse, pack_responses
from node.replica import Replica
from node.stores.queues import DEAD, RESPONSES, SUBMISSIONS
from node.worker import executors


def _store_rejects(experiment_id: str, real: Any) -> Any:
    """A store call that fails like a driver given a value it cannot encode, for ``experiment_id``'s messages."""
    def call(*args: Any) -> Any:
        if experiment_id in repr(args):
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return real(*args)
    return call


def _dead_reasons(broker: StubBroker) -> list[str]:
    return [m.headers["x-haorch-reason"] for m in broker.messages(DEAD)]


# --- the leader -----------------------------------------------------------------------------------------------
def test_the_leader_dead_letters_only_the_message_a_store_rejects_and_advances_the_rest(leader: Leader) -> None:
    leader.dags.add_experiment("e", CHAIN)
    leader.dispatched("e", ["a"])
    leader.dags.add_experiment("poison", CHAIN)
    leader.dispatched("poison", ["a"])
    leader.dags.add_experiment("new", CHAIN)
    leader.dags.advance = _store_rejects("poison", leader.dags.advance)  # type: ignore[method-assign]
    before = DEAD_LETTERS._value.get()
    leader.broker.put(RESPONSES, response("e", "a"), response("poison", "a"))
    leader.broker.put(SUBMISSIONS, SubmissionNotice("new").encode())

    leader.run()

    assert _dead_reasons(leader.broker) == ["UnicodeEncodeError: 'utf-8' codec can't encode character '\\ud800' in "
                                            "position 0: surrogates not allowed"]
    assert TaskResponse.decode(leader.broker.bodies(DEAD)[0]).experiment_id == "poison"
    assert {(r.experiment_id, r.task) for r in leader.requests()} == {("e", "b"), ("new", "a")}
    assert leader.consumer is not None and leader.consumer.idle()
    assert DEAD_LETTERS._value.get() == before + 1


def test_a_pack_a_store_rejects_is_dead_lettered_whole_and_the_other_messages_advance(leader: Leader) -> None:
    """The cost of packing: the isolation works per message, so the good responses of a poisoned pack go with it to
    haorch.dead (their attempts are then overdue, re-sent and answered from the ledger)."""
    for name in ("e", "good", "poison"):
        leader.dags.add_experiment(name, CHAIN)
        leader.dispatched(name, ["a"])
    leader.dags.advance = _store_rejects("poison", leader.dags.advance)  # type: ignore[method-assign]
    pack = pack_responses([TaskResponse.decode(response(name, "a")) for name in ("good", "poison")])
    leader.broker.put(RESPONSES, response("e", "a"), *pack)
    leader.run()
    assert leader.broker.bodies(DEAD) == pack and _dead_reasons(leader.broker)[0].startswith("UnicodeEncodeError")
    assert {(r.experiment_id, r.task) for r in leader.requests()} == {("e", "b")}
    assert leader.consumer is not None and leader.consumer.idle()


def test_a_dependency_failure_leaves_the_whole_batch_unacked_and_nothing_dead(leader: Leader) -> None:
    leader.dags.add_experiment("e", CHAIN)
    leader.dispatched("e", ["a"])

    def down(*_args: Any) -> Any:
        raise DependencyError("neo4j", "127.0.0.1:1", "ServiceUnavailable")

    leader.dags.advance = down  # type: ignore[method-assign]
    leader.broker.put(RESPONSES, response("e", "a"), b"{not json")
    with pytest.raises(DependencyError):
        leader.run()
    assert not leader.broker.messages(DEAD) and not leader.journal.has("ack")
    assert len(leader.broker.messages(RESPONSES)) == 2  # handed back for the next term


def test_unknown_tasks_are_dead_lettered_once_per_message(leader: Leader) -> None:
    first, second = response("ghost", "t", attempt=1), response("ghost", "t", attempt=2)
    leader.broker.put(RESPONSES, first, second)
    leader.run()
    reason = "response for unknown task ghost/t (never submitted, or deleted by retention)"
    assert _dead_reasons(leader.broker) == [reason] * 2
    assert leader.broker.bodies(DEAD) == [first, second]


@pytest.fixture
def leader() -> Leader:
    return Leader()


# --- the worker -----------------------------------------------------------------------------------------------
bench = pytest.fixture(worker_rig, name="bench")
WorkerBench = WorkerRig


def _request(experiment_id: str, task: str) -> bytes:
    data = TaskRequest.decode(request_body(task))
    return TaskRequest(**{**vars(data), "experiment_id": experiment_id}).encode()


def test_the_worker_dead_letters_only_the_request_the_ledger_rejects(bench: WorkerBench) -> None:
    bench.ledger.claim = _store_rejects("poison", bench.ledger.claim)  # type: ignore[method-assign]
    responses = bench.answer(_request("e", "a"), _request("poison", "a"), b"{not json", _request("e", "b"))
    assert sorted((r.experiment_id, r.task, r.outcome) for r in responses) == [("e", "a", "success"),
                                                                               ("e", "b", "success")]
    # the malformed one is parked before the claims, the poison one once the batch is retried one by one: each once
    reasons = _dead_reasons(bench.broker)
    assert len(reasons) == 2 and reasons[0] == "not JSON" and reasons[1].startswith("UnicodeEncodeError: ")
    assert bench.consumer.idle() and bench.worker.dead_lettered == 2


def test_a_result_that_is_not_encodable_is_the_task_s_failure(bench: WorkerBench,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(executors.EXECUTORS, "noop", lambda _params, _ctx: {"file": "caf\udce9"})
    (answer,) = bench.answer(request_body("a"))
    assert answer.outcome == "failure" and answer.error == "result is not encodable as UTF-8"
    assert not bench.broker.messages(DEAD) and bench.consumer.idle()


# --- the replica loop -----------------------------------------------------------------------------------------
def test_a_term_that_keeps_failing_the_same_way_logs_a_bounded_number_of_lines(caplog: pytest.LogCaptureFixture,
                                                                             ) -> None:
    replica = Replica(Config(home=Path("/nonexistent")), "node-1")
    with caplog.at_level(logging.ERROR, logger="node.replica"):
        for _ in range(1000):
            replica._log_term_failure(ValueError("bad value"))
        replica._log_term_failure(KeyError("other"))
    lines = [r for r in caplog.records if r.name == "node.replica"]
    assert len(lines) == 1 + 9 + 1  # the first with its traceback, then the 2nd, 4th, ..., 512th; a new failure
    assert lines[0].exc_info and "512 times" in lines[9].getMessage() and lines[10].exc_info
