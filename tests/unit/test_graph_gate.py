"""What keeps a leader from acting in an emptied or rebuilt Neo4j, without servers: the generation check of the DAG
store, Neo4j's credential refusals while a new store starts, and a term's step whose Neo4j commit went away with
the store (on the in-memory fakes of tests/fakes)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import neo4j.exceptions
import pytest
from fakes.broker import StubBroker, StubConsumer
from fakes.dags import FakeDagStore
from fakes.journal import Journal
from fakes.records import FakeRecords

from node.config import Config
from node.errors import DependencyError
from node.leader.term import LeaderTerm, PhaseClock, TermProgress
from node.model.messages import TaskRequest, TaskResponse
from node.model.states import REDISPATCHED, ExperimentState, TaskStatus
from node.model.template import TaskSpec
from node.stores.dags import DagStore, GraphNotReady
from node.stores.failures import neo4j_boundary
from node.stores.queues import REQUESTS, RESPONSES

EPOCH = 2


class _Driver:
    address = "127.0.0.1:7687"


def _store(generation: str | None) -> DagStore:
    store = DagStore(_Driver())  # type: ignore[arg-type]  # only the boundary reads it here
    store.generation = generation
    return store


def test_the_dag_store_refuses_a_graph_without_the_expected_generation() -> None:
    _store(None)._gate(None)  # nothing expected: nothing checked
    _store("g1")._gate("g1")
    for found in (None, "g0"):  # an emptied store's new fence (or none), another store's
        with pytest.raises(GraphNotReady) as raised:
            _store("g1")._gate(found)
        assert isinstance(raised.value, DependencyError) and raised.value.service == "neo4j"
        assert "haorch recover neo4j" in str(raised.value)


@pytest.mark.parametrize("code", ["Neo.ClientError.Security.Unauthorized",
                                  "Neo.ClientError.Security.AuthenticationRateLimit"])
def test_credentials_refused_by_a_starting_neo4j_are_a_dependency_failure_not_a_poison_message(code: str) -> None:
    boundary = neo4j_boundary(_Driver())  # type: ignore[arg-type]
    with pytest.raises(DependencyError), boundary:
        raise neo4j.exceptions.ClientError._hydrate_neo4j(code=code, message="refused")
    with pytest.raises(neo4j.exceptions.CypherSyntaxError), boundary:  # the caller's own mistake stays one
        raise neo4j.exceptions.ClientError._hydrate_neo4j(code="Neo.ClientError.Statement.SyntaxError",
                                                         message="bad")


class _Cluster:
    """A term of epoch EPOCH on fakes; MariaDB's write can be made to fail."""

    def __init__(self) -> None:
        self.journal = Journal()
        self.dags = FakeDagStore(self.journal)
        self.records = FakeRecords(self.journal)
        self.broker = StubBroker(self.journal)
        self.progress = TermProgress()
        self.consumer: StubConsumer | None = None
        self.dags.add_experiment("e", [TaskSpec("a", "data_staging"), TaskSpec("b", "job_submission",
                                                                                depends_on=("a",))])
        self.dags.set_task("e/a", status=TaskStatus.DISPATCHED, attempt=1, dispatched_at=time.time())
        self.dags.experiments["e"]["state"] = ExperimentState.RUNNING

    def term(self) -> LeaderTerm:
        """A (new) term of the same epoch, sharing the progress: what the replica runs after a failure."""
        return LeaderTerm(Config(home=Path("/nonexistent")), "node-1", EPOCH, dags=self.dags, records=self.records,
                          publisher=self.broker.publisher(), open_consumer=self._open, fence_guard=self._guard,
                          acting=lambda: self.consumer is None or not self.consumer.idle(), clock=PhaseClock(),
                          progress=self.progress)

    def _open(self) -> StubConsumer:
        self.consumer = self.broker.consumer(LeaderTerm.QUEUES)
        return self.consumer

    @contextlib.contextmanager
    def _guard(self, _epoch: int) -> Iterator[None]:
        yield

    def run(self, term: LeaderTerm) -> None:
        self.consumer = None
        term.run()

    def requests(self) -> list[tuple[str, int]]:
        return [(r.task, r.attempt) for r in map(TaskRequest.decode, self.broker.bodies(REQUESTS))]

    def answer(self) -> None:
        now = time.time()
        self.broker.put(RESPONSES, TaskResponse(experiment_id="e", task="a", attempt=1, outcome="success",
                                                result={}, error=None, worker="w", started_at=now,
                                                ended_at=now).encode())

    def commit_in_neo4j_only(self) -> None:
        """The response is advanced in Neo4j; MariaDB's write fails: the term fails with the step unsent."""
        term = self.term()
        term.take_over()
        self.answer()
        real = self.records.write_batch

        def down(*_a: Any, **_k: Any) -> bool:
            raise DependencyError("mariadb", "127.0.0.1:3306", "OperationalError 2013")
        self.records.write_batch = down  # type: ignore[method-assign]
        with pytest.raises(DependencyError):
            self.run(term)
        self.records.write_batch = real  # type: ignore[method-assign]
        (step,) = self.progress.unsent
        assert not step.written


def test_a_step_committed_in_a_neo4j_that_was_since_rebuilt_is_dropped_and_advanced_again() -> None:
    cluster = _Cluster()
    cluster.commit_in_neo4j_only()
    # Neo4j emptied and rebuilt from MariaDB meanwhile: e/a dispatched again, the Outbox node gone
    cluster.dags.boxes.clear()
    cluster.dags.set_task("e/a", status=TaskStatus.DISPATCHED, executed=False, finished_at=None, flags=0,
                          epoch=EPOCH)  # its last row: the takeover's re-send
    cluster.dags.set_task("e/b", status=TaskStatus.PENDING, attempt=0, waiting=1, dispatched_at=None)
    cluster.dags.experiments["e"]["remaining"] = 2
    term = cluster.term()
    term.take_over()
    assert cluster.progress.unsent == []
    assert cluster.records.to_states("e", "a") == [REDISPATCHED]  # the first takeover's re-send, nothing more
    # the first takeover's re-send of a, and b's request, published before MariaDB's write failed
    assert cluster.records.to_states("e", "b") == [] and cluster.requests() == [("a", 1), ("b", 1)]
    cluster.answer()  # the response was never acknowledged: it comes back
    cluster.run(term)
    assert cluster.records.to_states("e", "a") == [REDISPATCHED, TaskStatus.SUCCEEDED]
    assert cluster.records.to_states("e", "b") == [TaskStatus.DISPATCHED]
    assert cluster.requests() == [("a", 1), ("b", 1), ("b", 1)]  # the same attempt: the ledger runs one copy


def test_a_step_whose_neo4j_commit_is_still_there_is_written_once_and_published_again() -> None:
    cluster = _Cluster()
    cluster.commit_in_neo4j_only()
    cluster.term().take_over()  # MariaDB is back: the outbox and the unsent step are one batch, written once
    assert cluster.records.to_states("e", "a") == [REDISPATCHED, TaskStatus.SUCCEEDED]
    assert cluster.records.to_states("e", "b") == [TaskStatus.DISPATCHED]
    # its confirms went with the failed term: sent again, the same attempt (the ledger runs one copy)
    assert cluster.requests() == [("a", 1), ("b", 1), ("b", 1)]
