"""The leader's term on in-memory fakes (tests/fakes): takeover, one batch end to end, fencing, dead letters and
the sweep — the decision logic of node.leader.term without any server, in milliseconds."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fakes.broker import StubBroker, StubConsumer
from fakes.dags import FakeDagStore
from fakes.journal import Journal
from fakes.ledger import FakeLedger
from fakes.records import FakeRecords

from node.config import Config
from node.errors import DependencyError, FencedError
from node.leader.term import MIN_PREFETCH, LeaderTerm, PhaseClock, prefetch_for
from node.model.advance import Outcome, transition_rows
from node.model.messages import SubmissionNotice, TaskRequest, TaskResponse, pack_responses
from node.model.states import REDISPATCHED, ExperimentState, TaskStatus
from node.model.template import RetryPolicy, TaskSpec
from node.stores.ledger import Start
from node.stores.queues import DEAD, REQUESTS, RESPONSES, SUBMISSIONS

EPOCH = 2
CHAIN = [TaskSpec("a", "data_staging"), TaskSpec("b", "job_submission", depends_on=("a",))]


class Leader:
    """A LeaderTerm of epoch ``EPOCH`` on fakes sharing one journal; the previous leader held epoch 1."""

    def __init__(self) -> None:
        self.journal = Journal()
        self.dags = FakeDagStore(self.journal)
        self.records = FakeRecords(self.journal)
        self.broker = StubBroker(self.journal)
        self.ledger = FakeLedger()
        self.dags.fence = self.records.fence = EPOCH - 1
        self.consumer: StubConsumer | None = None
        self.term = LeaderTerm(Config(home=Path("/nonexistent")), "node-1", EPOCH, dags=self.dags,
                               records=self.records, publisher=self.broker.publisher(), open_consumer=self._open,
                               fence_guard=self._guard, acting=self._acting, clock=PhaseClock(),
                               ledger_progress=self.ledger.in_progress)

    def _open(self) -> StubConsumer:
        self.consumer = self.broker.consumer(LeaderTerm.QUEUES)
        return self.consumer

    @contextlib.contextmanager
    def _guard(self, epoch: int) -> Iterator[None]:
        self.journal.append(f"guard enter {epoch}")
        yield
        self.journal.append("guard exit")

    def _acting(self) -> bool:
        """Leads until everything consumed is acknowledged (then ``run`` returns)."""
        return self.consumer is None or not self.consumer.idle()

    def run(self) -> None:
        self.consumer = None
        self.term.run()

    def retried_term(self) -> LeaderTerm:
        """The term retried after a failure: same epoch, same progress, a new connection."""
        return LeaderTerm(self.term.cfg, "node-1", EPOCH, dags=self.dags, records=self.records,
                          publisher=self.broker.publisher(), open_consumer=self._open, fence_guard=self._guard,
                          acting=self._acting, clock=PhaseClock(), progress=self.term.progress)

    def requests(self) -> list[TaskRequest]:
        return [TaskRequest.decode(body) for body in self.broker.bodies(REQUESTS)]

    def dispatched(self, experiment_id: str, spec_names: list[str], attempt: int = 1) -> None:
        """Mark tasks DISPATCHED (attempt ``attempt``) by the previous leader, with their predecessors done."""
        for name in spec_names:
            self.dags.set_task(f"{experiment_id}/{name}", status=TaskStatus.DISPATCHED, attempt=attempt,
                               dispatched_at=time.time(), waiting=0)
        self.dags.experiments[experiment_id]["state"] = ExperimentState.RUNNING


def lost_confirms(_sent: Any) -> None:
    """A publisher's ``settle`` whose confirms never come."""
    raise DependencyError("rabbitmq", "127.0.0.1:5672", "no publisher confirms within 30 s")


def response(experiment_id: str, task: str, attempt: int = 1, error: str | None = None) -> bytes:
    now = time.time()
    return TaskResponse(experiment_id=experiment_id, task=task, attempt=attempt,
                        outcome="failure" if error else "success", result=None if error else {}, error=error,
                        worker="worker-1", started_at=now, ended_at=now).encode()


@pytest.fixture
def leader() -> Leader:
    return Leader()


# --- takeover ------------------------------------------------------------------------------------------
def test_takeover_raises_both_fences_in_order_then_rescans_and_redispatches_what_was_lost(leader: Leader) -> None:
    leader.dags.add_experiment("busy", CHAIN)
    leader.dispatched("busy", ["a"])
    busy_since = leader.dags.tasks["busy/a"]["dispatched_at"]
    leader.ledger.add(Start("busy", "a", 1, "worker-1", EPOCH - 1, time.time()))  # a worker is running it
    leader.dags.add_experiment("lost", [TaskSpec("x", "job_submission")])
    leader.dispatched("lost", ["x"])  # its request was lost with the previous leader
    leader.dags.add_experiment("unsent", CHAIN)  # submitted, its notice lost: the root was never dispatched
    leader.dags.add_experiment("backoff", [TaskSpec("r", "job_submission", retry=RetryPolicy(max_attempts=2))])
    leader.dags.set_task("backoff/r", status=TaskStatus.RETRY_WAIT, attempt=1, not_before=time.time() + 60)

    leader.term.take_over()

    j = leader.journal
    assert (j.index_of("mariadb.raise_fence 2") < j.index_of("guard enter 2") < j.index_of("neo4j.raise_fence 2")
            < j.index_of("guard exit") < j.index_of("neo4j.rescan") < j.index_of("neo4j.mark_dispatched")
            < j.index_of(f"publish {REQUESTS}") < j.index_of("mariadb.write_batch"))
    assert leader.dags.fence == leader.records.fence == EPOCH
    sent = {(r.experiment_id, r.task, r.attempt, r.epoch) for r in leader.requests()}
    assert sent == {("lost", "x", 1, EPOCH), ("unsent", "a", 1, EPOCH)}  # not the in-flight one, not the backoff
    assert leader.dags.tasks["busy/a"]["dispatched_at"] == busy_since and not leader.records.to_states("busy", "a")
    assert leader.records.to_states("lost", "x") == [REDISPATCHED]
    assert leader.records.states == {"unsent": ExperimentState.RUNNING}
    assert {"fence", "rescan", "redispatch"} <= set(leader.term.clock.marks)


def test_an_in_flight_task_whose_timeout_passed_is_redispatched(leader: Leader) -> None:
    leader.dags.add_experiment("slow", [TaskSpec("s", "job_submission", timeout_s=1.0)])
    leader.dispatched("slow", ["s"])
    leader.ledger.add(Start("slow", "s", 1, "worker-1", EPOCH - 1, time.time() - 60))  # started long ago
    leader.term.take_over()
    assert [(r.task, r.attempt) for r in leader.requests()] == [("s", 1)]


def test_a_takeover_by_an_older_epoch_is_fenced_before_any_write(leader: Leader) -> None:
    leader.dags.add_experiment("lost", [TaskSpec("x", "job_submission")])
    leader.records.fence = EPOCH + 1
    with pytest.raises(FencedError):
        leader.term.take_over()
    assert not leader.journal.has("neo4j") and not leader.broker.bodies(REQUESTS)


def _lost_backlog(leader: Leader, n: int, page_size: int) -> None:
    """``n`` one-task experiments whose requests the previous leader lost; takeover pages of ``page_size``."""
    leader.term.cfg = Config(home=Path("/nonexistent"), takeover_page_size=page_size)
    for i in range(n):
        leader.dags.add_experiment(f"e{i}", [TaskSpec("x", "job_submission")])
        leader.dispatched(f"e{i}", ["x"])


def _marked(journal: Journal) -> list[int]:
    """Keys per takeover mark_dispatched call, in order."""
    return [int(entry.split()[1]) for entry in journal if entry.startswith("neo4j.mark_dispatched")]


def _lead_until_taken_over(leader: Leader) -> None:
    """Run the loop until the takeover is done and every delivery acknowledged."""
    leader.term.acting = lambda: not leader.term.progress.done or leader._acting()
    leader.run()


def test_the_takeover_redispatches_in_pages_and_batches_are_advanced_between_pages(leader: Leader) -> None:
    _lost_backlog(leader, 5, page_size=2)
    leader.term.take_over()
    assert sorted(r.experiment_id for r in leader.requests()) == ["e0", "e1"]  # only the first page
    leader.broker.put(RESPONSES, response("e0", "x"))

    _lead_until_taken_over(leader)

    j = leader.journal
    assert _marked(j) == [2, 2, 1] and leader.term.progress.pages == 3
    assert j.index_of("neo4j.advance") < [i for i, e in enumerate(j) if e.startswith("neo4j.mark_dispatched")][1]
    assert leader.dags.experiments["e0"]["state"] == ExperimentState.COMPLETED
    assert sorted(r.experiment_id for r in leader.requests()) == ["e0", "e1", "e2", "e3", "e4"]  # each once


def test_a_retried_term_resumes_the_takeover_and_finishes_the_page_it_left_half_done(leader: Leader) -> None:
    _lost_backlog(leader, 5, page_size=2)
    leader.term.take_over()
    publisher = leader.term.publisher
    leader.term.publisher = failing = leader.broker.publisher()
    failing.fail_with = DependencyError("rabbitmq", "127.0.0.1:5672", "connection reset")
    with pytest.raises(DependencyError):
        leader.term.redispatch_page()  # page 2: marked in Neo4j and written to MariaDB, not published

    for _ in range(2):  # the replica runs the term again (same epoch, same progress); and once more after it
        leader.term = LeaderTerm(leader.term.cfg, "node-1", EPOCH, dags=leader.dags, records=leader.records,
                                 publisher=publisher, open_consumer=leader._open, fence_guard=leader._guard,
                                 acting=leader._acting, clock=leader.term.clock,
                                 ledger_progress=leader.ledger.in_progress, progress=leader.term.progress)
        leader.term.take_over()

    assert _marked(leader.journal) == [2, 2, 1]  # no page marked twice, nothing re-dispatched once done
    assert sorted(r.experiment_id for r in leader.requests()) == ["e0", "e1", "e2", "e3", "e4"]  # each once
    assert all(leader.records.to_states(f"e{i}", "x") == [REDISPATCHED] for i in range(5))  # each row once


def test_the_takeover_leaves_tasks_this_epoch_dispatched_meanwhile(leader: Leader) -> None:
    _lost_backlog(leader, 3, page_size=2)
    leader.dags.add_experiment("new", [TaskSpec("x", "job_submission")])  # after the first page's keys
    leader.term.take_over()
    leader.broker.put(SUBMISSIONS, SubmissionNotice(experiment_id="new").encode())
    _lead_until_taken_over(leader)  # the notice dispatches new/x before the takeover's page 2 reaches it
    assert sorted(r.experiment_id for r in leader.requests()) == ["e0", "e1", "e2", "new"]


# --- one batch -----------------------------------------------------------------------------------------
def test_a_batch_advances_neo4j_then_publishes_then_writes_mariadb_then_acks(leader: Leader) -> None:
    leader.dags.add_experiment("e", CHAIN)
    leader.dispatched("e", ["a"])
    leader.dags.add_experiment("new", [TaskSpec("root", "data_staging")])
    leader.broker.put(RESPONSES, response("e", "a"))
    leader.broker.put(SUBMISSIONS, SubmissionNotice(experiment_id="new").encode())

    leader.run()

    j = leader.journal
    assert j.index_of("neo4j.advance") < j.index_of(f"publish {REQUESTS}") < j.index_of("mariadb.write_batch") \
        < j.index_of("confirmed") < j.index_of("ack")
    assert {(r.experiment_id, r.task, r.attempt) for r in leader.requests()} == {("e", "b", 1), ("new", "root", 1)}
    assert (("e", "a", TaskStatus.DISPATCHED, TaskStatus.SUCCEEDED, 1, None, EPOCH) in leader.records.transitions)
    assert leader.records.to_states("e", "b") == [TaskStatus.DISPATCHED]
    assert leader.records.states == {"new": ExperimentState.RUNNING}
    assert leader.consumer is not None and leader.consumer.idle() and leader.consumer.closed
    assert leader.term.advanced == 1 and "first_advance" in leader.term.clock.marks


def test_the_last_success_completes_the_experiment(leader: Leader) -> None:
    leader.dags.add_experiment("e", CHAIN)
    leader.dags.set_task("e/a", status=TaskStatus.SUCCEEDED, executed=True)
    leader.dags.experiments["e"]["remaining"] = 1
    leader.dispatched("e", ["b"])
    leader.broker.put(RESPONSES, response("e", "b"))
    leader.run()
    assert leader.records.states == {"e": ExperimentState.COMPLETED}
    assert leader.records.to_states("e") == [ExperimentState.COMPLETED]


def test_a_fenced_neo4j_advance_stops_before_mariadb_publish_and_ack(leader: Leader) -> None:
    leader.dags.add_experiment("e", CHAIN)
    leader.dispatched("e", ["a"])
    leader.dags.fence = EPOCH + 1  # a newer leader raised its fence
    leader.broker.put(RESPONSES, response("e", "a"))
    with pytest.raises(FencedError):
        leader.run()
    assert not leader.journal.has("mariadb") and not leader.journal.has("publish") and not leader.journal.has("ack")
    (back,) = leader.broker.messages(RESPONSES)  # handed back to the queue for the next leader
    assert back.redelivered


def test_a_fenced_mariadb_write_stops_before_the_ack(leader: Leader) -> None:
    """The batch's requests go out between its Neo4j commit and its MariaDB write: a fenced write leaves them
    published (copies of attempts Neo4j has, which the next leader re-sends and the ledger runs once) and the
    response unacknowledged."""
    leader.dags.add_experiment("e", CHAIN)
    leader.dispatched("e", ["a"])
    leader.records.fence = EPOCH + 1
    leader.broker.put(RESPONSES, response("e", "a"))
    with pytest.raises(FencedError):
        leader.run()
    assert leader.journal.index_of("neo4j.advance") < leader.journal.index_of("publish")
    assert [(r.task, r.attempt) for r in leader.requests()] == [("b", 1)]
    assert not leader.records.transitions and not leader.journal.has("ack")
    assert len(leader.broker.messages(RESPONSES)) == 1


def test_a_malformed_message_is_dead_lettered_with_its_reason_and_the_batch_acked(leader: Leader) -> None:
    leader.dags.add_experiment("e", CHAIN)
    leader.dispatched("e", ["a"])
    leader.broker.put(RESPONSES, b"{not json", response("e", "a"))
    leader.broker.put(SUBMISSIONS, b'{"experiment_id": 7}')
    leader.run()
    dead = leader.broker.messages(DEAD)
    assert sorted(m.body for m in dead) == sorted([b"{not json", b'{"experiment_id": 7}'])
    assert all(m.headers["x-haorch-reason"] for m in dead)
    assert {m.headers["x-haorch-source-queue"] for m in dead} == {RESPONSES, SUBMISSIONS}
    assert [(r.task, r.attempt) for r in leader.requests()] == [("b", 1)]  # the good response still advanced
    assert leader.consumer is not None and leader.consumer.idle() and leader.journal.has("ack 3")


def test_a_pack_is_advanced_item_by_item_and_only_its_bad_items_are_dead_lettered(leader: Leader) -> None:
    leader.dags.add_experiment("e", CHAIN)
    leader.dispatched("e", ["a"])
    good, ghost = (TaskResponse.decode(response(e, "a")) for e in ("e", "ghost"))
    (pack,) = pack_responses([good, ghost])
    pack = pack[:-1] + b',{"v":1,"task":"x"},7]'  # a worker (or anyone) added two bad items
    leader.broker.put(RESPONSES, pack)
    leader.run()
    assert [(r.task, r.attempt) for r in leader.requests()] == [("b", 1)]  # the good item advanced
    dead = {m.headers["x-haorch-reason"]: m.body for m in leader.broker.messages(DEAD)}
    assert dead == {"pack item 2: missing field 'experiment_id'": b'{"v":1,"task":"x"}',
                    "pack item 3: not a JSON object but a number": b"7",
                    "response for unknown task ghost/a (never submitted, or deleted by retention)": ghost.encode()}
    assert leader.consumer is not None and leader.consumer.idle() and leader.journal.count("ack 1") == 1


def test_more_responses_than_a_batch_are_advanced_in_parts_and_acked_once_after_the_last(leader: Leader) -> None:
    leader.term.cfg = replace(leader.term.cfg, batch_size=2)
    for name in "pqrst":
        leader.dags.add_experiment(name, CHAIN)
        leader.dispatched(name, ["a"])
    leader.broker.put(RESPONSES, *pack_responses(TaskResponse.decode(response(name, "a")) for name in "pqrst"))
    consumer = leader.term.consumer = leader._open()
    consumer.start()
    leader.term.process(consumer.next_batch(2))  # one message: five responses
    j = leader.journal
    assert [e for e in j if e.startswith("neo4j.advance")] == ["neo4j.advance 2 0"] * 2 + ["neo4j.advance 1 0"]
    assert not j.has("ack")  # the last part awaits its confirms
    leader.term.sweep()
    assert [e.split(" ")[0] for e in j if e.startswith(("neo4j.advance", "confirmed", "ack"))] == [
        "neo4j.advance", "neo4j.advance", "confirmed", "neo4j.advance", "confirmed", "confirmed", "ack"]
    assert j.count("ack 1") == 1
    assert sorted(r.experiment_id for r in leader.requests()) == list("pqrst")
    assert all(leader.records.to_states(name, "a") == [TaskStatus.SUCCEEDED] for name in "pqrst")


@pytest.mark.parametrize(("taken", "wanted", "prefetch"), [
    (0, 200, MIN_PREFETCH), (1, 200, MIN_PREFETCH),  # idle or a trickle: a frozen leader takes few hostages
    (6, 200, 32), (50, 200, 256),  # three batches of what arrives, a power of two (it changes rarely)
    (200, 200, 600), (400, 200, 600),  # full batches: three of them
    (4, 4, MIN_PREFETCH), (1, 4, MIN_PREFETCH)])  # packs of 50 responses: 4 make a batch of 200
def test_the_prefetch_is_three_batches_of_what_arrives_within_bounds(taken: int, wanted: int, prefetch: int) -> None:
    assert prefetch_for(taken, wanted) == prefetch


def test_the_term_fits_its_consumers_prefetch_before_each_batch(leader: Leader) -> None:
    leader.dags.add_experiment("e", CHAIN)
    leader.dispatched("e", ["a"])
    leader.broker.put(RESPONSES, response("e", "a"))
    leader.run()
    assert leader.consumer is not None and leader.consumer.prefetches == [MIN_PREFETCH]


def test_a_lull_between_bursts_does_not_shrink_the_prefetch(leader: Leader) -> None:
    leader.term.cfg = replace(leader.term.cfg, batch_size=200)
    names = [f"e{i}" for i in range(200)]
    for name in names:
        leader.dags.add_experiment(name, CHAIN)
        leader.dispatched(name, ["a"])
    leader.broker.put(RESPONSES, *(response(name, "a") for name in names))  # a burst of single messages
    empty = [0]
    consumer = leader._open()
    taking = consumer.next_batch

    def counting(max_n: int, max_wait_s: float = 0.0, linger_s: float = 0.0) -> list:
        batch = taking(max_n, max_wait_s, linger_s)
        empty[0] += not batch
        return batch

    consumer.next_batch = counting  # type: ignore[method-assign]
    leader.term.open_consumer = lambda: consumer
    leader.term.acting = lambda: empty[0] < 3  # then three empty waits: the lull
    leader.term.run()
    assert consumer.prefetches == [MIN_PREFETCH, 600]  # grown for the burst, kept through the lull


def test_copies_of_an_unknown_response_in_different_parts_are_each_dead_lettered_once(leader: Leader) -> None:
    leader.term.cfg = replace(leader.term.cfg, batch_size=1)
    ghost = TaskResponse.decode(response("ghost", "t"))
    leader.broker.put(RESPONSES, *pack_responses([ghost, ghost]))
    leader.run()
    assert leader.broker.bodies(DEAD) == [ghost.encode(), ghost.encode()]
    assert leader.consumer is not None and leader.consumer.idle()


def test_a_response_for_an_unknown_task_is_dead_lettered_and_acked(leader: Leader) -> None:
    leader.broker.put(RESPONSES, response("ghost", "t"))
    leader.run()
    (dead,) = leader.broker.messages(DEAD)
    assert dead.headers["x-haorch-reason"] == ("response for unknown task ghost/t (never submitted, or deleted by "
                                               "retention)")
    assert leader.consumer is not None and leader.consumer.idle()
    assert not leader.broker.bodies(REQUESTS)


def test_a_duplicate_response_is_ignored(leader: Leader) -> None:
    leader.dags.add_experiment("e", CHAIN)
    leader.dispatched("e", ["a"])
    leader.broker.put(RESPONSES, response("e", "a"), response("e", "a"))
    leader.run()
    assert leader.records.to_states("e", "a") == [TaskStatus.SUCCEEDED]
    assert leader.dags.tasks["e/a"]["flags"] == 1 and len(leader.requests()) == 1


def test_the_takeover_writes_what_a_previous_leader_committed_in_neo4j_only_first_in_order_and_once(
        leader: Leader) -> None:
    leader.dags.add_experiment("e", CHAIN)
    leader.dispatched("e", ["a"])
    written = leader.dags.advance(EPOCH - 1, [Outcome("e/a", 1, True)], [], now=100.0)  # MariaDB got this one ...
    leader.records.write_batch(EPOCH - 1, "node-0", transition_rows(written), written.experiments, 100.0,
                               batch_id=written.outbox_id)
    leader.dags.advance(EPOCH - 1, [Outcome("e/b", 1, True)], [], now=101.0)  # ... and died before this one's
    leader.term.take_over()
    assert leader.records.to_states("e", "a") == [TaskStatus.SUCCEEDED]  # not twice
    assert leader.records.to_states("e", "b") == [TaskStatus.DISPATCHED, TaskStatus.SUCCEEDED]
    assert {t[-1] for t in leader.records.transitions} == {EPOCH - 1}  # as the previous leader wrote them
    assert leader.records.states == {"e": ExperimentState.COMPLETED}
    assert leader.dags.boxes == {}
    j = leader.journal
    assert j.index_of("neo4j.raise_fence 2") < j.index_of("neo4j.forget_outbox") < j.index_of("neo4j.rescan")


def test_a_batch_s_outbox_is_deleted_by_the_next_sweep_once_mariadb_has_it(leader: Leader) -> None:
    leader.dags.add_experiment("e", CHAIN)
    leader.dispatched("e", ["a"])
    leader.broker.put(RESPONSES, response("e", "a"))
    leader.run()
    assert len(leader.dags.boxes) == 1 and leader.records.applied == set(leader.dags.boxes)
    leader.consumer = None  # acting again
    leader.term.sweep()
    assert leader.dags.boxes == {}


def test_a_failure_with_attempts_left_waits_and_the_last_one_fails_the_experiment(leader: Leader) -> None:
    retry = RetryPolicy(max_attempts=2, backoff_s=0.0)
    leader.dags.add_experiment("e", [TaskSpec("a", "job_submission", retry=retry),
                                     TaskSpec("b", "job_submission", depends_on=("a",))])
    leader.dispatched("e", ["a"])
    leader.broker.put(RESPONSES, response("e", "a", 1, error="boom"))
    leader.run()
    assert leader.dags.tasks["e/a"]["status"] == TaskStatus.RETRY_WAIT
    leader.dags.set_task("e/a", status=TaskStatus.DISPATCHED, attempt=2)
    leader.broker.put(RESPONSES, response("e", "a", 2, error="boom again"))
    leader.run()
    assert leader.records.to_states("e", "a") == [TaskStatus.RETRY_WAIT, TaskStatus.FAILED]
    assert leader.records.to_states("e", "b") == [TaskStatus.CANCELLED]
    assert leader.records.states == {"e": ExperimentState.FAILED}


# --- the sweep -----------------------------------------------------------------------------------------
def test_the_sweep_dispatches_due_retries_lost_roots_and_overdue_tasks(leader: Leader) -> None:
    now = time.time()
    leader.dags.add_experiment("retry", [TaskSpec("r", "job_submission", retry=RetryPolicy(max_attempts=3))])
    leader.dags.set_task("retry/r", status=TaskStatus.RETRY_WAIT, attempt=1, not_before=now - 1)
    leader.dags.add_experiment("later", [TaskSpec("w", "job_submission", retry=RetryPolicy(max_attempts=3))])
    leader.dags.set_task("later/w", status=TaskStatus.RETRY_WAIT, attempt=1, not_before=now + 60)
    leader.dags.add_experiment("root", [TaskSpec("x", "data_staging")])
    leader.dags.add_experiment("late", [TaskSpec("o", "job_submission", timeout_s=1.0)])
    leader.dispatched("late", ["o"])
    leader.dags.set_task("late/o", dispatched_at=now - 60)

    leader.term.sweep()

    j = leader.journal
    assert j.index_of("neo4j.due_work") < j.index_of(f"publish {REQUESTS}") < j.index_of("mariadb.write_batch")
    assert j.index_of("mariadb.prune_applied_batches") < j.index_of("neo4j.due_work")  # not in the fence raise
    sent = {(r.experiment_id, r.task, r.attempt) for r in leader.requests()}
    assert sent == {("retry", "r", 2), ("root", "x", 1), ("late", "o", 1)}
    assert leader.records.to_states("late", "o") == [REDISPATCHED]
    assert leader.records.to_states("retry", "r") == [TaskStatus.DISPATCHED]


def test_the_sweep_resends_no_overdue_attempt_while_a_backlog_waits_in_the_queues(leader: Leader) -> None:
    leader.dags.add_experiment("late", [TaskSpec("o", "job_submission", timeout_s=1.0)])
    leader.dispatched("late", ["o"])
    leader.dags.set_task("late/o", dispatched_at=time.time() - 60)
    depths = {REQUESTS: 0, RESPONSES: 5000}  # its answer may be among the responses waiting for the leader
    leader.term.waiting = depths.__getitem__
    leader.term.sweep()
    assert not leader.requests()
    depths[RESPONSES] = 0
    leader.term.sweep()
    assert [(r.task, r.attempt) for r in leader.requests()] == [("o", 1)]


def test_the_sweep_does_nothing_once_the_term_is_over(leader: Leader) -> None:
    leader.dags.add_experiment("root", [TaskSpec("x", "data_staging")])
    leader.term.acting = lambda: False
    leader.term.sweep()
    assert not leader.journal and not leader.broker.bodies(REQUESTS)


def test_a_lost_attempt_is_retried_at_once_as_a_new_attempt_and_the_task_keeps_its_tries(leader: Leader) -> None:
    leader.dags.add_experiment("e", [TaskSpec("a", "job_submission")])  # one attempt allowed
    leader.dispatched("e", ["a"])
    now = time.time()
    leader.broker.put(RESPONSES, TaskResponse(
        experiment_id="e", task="a", attempt=1, outcome="failure", result=None, error="abandoned: worker died",
        worker="worker-1", started_at=now, ended_at=now, lost=True).encode())
    leader.run()
    task = leader.dags.tasks["e/a"]
    assert (task["status"], task["lost"]) == (TaskStatus.RETRY_WAIT, 1) and task["not_before"] <= time.time()
    leader.consumer = None  # acting again
    leader.term.sweep()
    assert [(r.task, r.attempt) for r in leader.requests()] == [("a", 2)]
    leader.broker.put(RESPONSES, response("e", "a", 2))
    leader.run()
    assert leader.records.states == {"e": ExperimentState.COMPLETED}


def test_the_sweep_writes_an_outbox_node_older_than_the_submit_grace_as_its_writer_would_have(
        leader: Leader) -> None:
    leader.dags.add_experiment("old", CHAIN)
    leader.dags.add_experiment("new", CHAIN)
    now = time.time()
    for exp, at in (("old", now - 3600), ("new", now)):  # cancels whose callers died before their MariaDB write
        leader.dags.boxes[f"box-{exp}"] = {"id": f"box-{exp}", "at": at, "epoch": 0, "node": "cancel",
                                          "rows": [(exp, None, None, ExperimentState.CANCELLED, 0, None)],
                                          "states": {exp: ExperimentState.CANCELLED}}
    leader.term.sweep()
    assert leader.records.to_states("old")[0] == ExperimentState.CANCELLED  # before the sweep's own dispatches
    assert ExperimentState.CANCELLED not in leader.records.to_states("new")
    assert leader.records.transitions[0][-1] == 0  # epoch 0, as the cancel writes it
    assert "box-new" in leader.dags.boxes and "box-old" not in leader.dags.boxes


def test_a_batch_is_confirmed_and_acknowledged_after_the_next_batchs_neo4j_transaction(leader: Leader) -> None:
    """The pipelined loop: batch 1's confirms are awaited once batch 2 is advanced in Neo4j, and batch 1 is acked
    only after its own confirms — never before its MariaDB write and publish, never after batch 2's ack."""
    for experiment_id in ("e", "f"):
        leader.dags.add_experiment(experiment_id, CHAIN)
        leader.dispatched(experiment_id, ["a"])
    leader.broker.put(RESPONSES, response("e", "a"), response("f", "a"))
    term = leader.term
    consumer = term.consumer = leader._open()
    consumer.start()
    term.process(consumer.next_batch(1))
    j = leader.journal
    assert j.has("mariadb.write_batch") and j.has(f"publish {REQUESTS} 1")
    assert not j.has("confirmed") and not j.has("ack")  # batch 1 waits for its confirms
    term.process(consumer.next_batch(1))
    term.sweep()  # a sweep (like an empty poll of the loop, or a takeover page) first finishes what is pending
    order = [entry.split(" ")[0] for entry in j if entry.split(" ")[0] in
             ("neo4j.advance", "mariadb.write_batch", "publish", "confirmed", "ack")]
    assert order == ["neo4j.advance", "publish", "mariadb.write_batch",  # batch 1
                     "neo4j.advance",  # batch 2's Neo4j transaction overlaps batch 1's confirms
                     "confirmed", "ack",  # batch 1
                     "publish", "mariadb.write_batch", "confirmed", "ack"]  # batch 2, finished by the sweep
    assert [e for e in j if e.startswith("ack")] == ["ack 1", "ack 2"] and term.progress.unsent == []


def test_a_batch_s_mariadb_write_runs_while_the_next_batch_s_neo4j_transaction_does(leader: Leader) -> None:
    leader.term.cfg = replace(leader.term.cfg, batch_size=1)  # one response per batch
    for name in "pq":
        leader.dags.add_experiment(name, CHAIN)
        leader.dispatched(name, ["a"])
    leader.broker.put(RESPONSES, response("p", "a"), response("q", "a"))
    real_write, real_advance = leader.records.write_batch, leader.dags.advance
    second = threading.Event()
    overlapped: list[bool] = []

    def write(*args: Any, **kwargs: Any) -> Any:
        overlapped.append(second.wait(5))  # a write on the loop's thread would wait here for nothing
        return real_write(*args, **kwargs)

    def advance(*args: Any, **kwargs: Any) -> Any:
        if leader.journal.has("neo4j.advance"):
            second.set()
        return real_advance(*args, **kwargs)
    leader.records.write_batch = write  # type: ignore[method-assign]
    leader.dags.advance = advance  # type: ignore[method-assign]
    # no sweep, no takeover page in between: each would first wait for batch 1's write
    leader.term._next_sweep, leader.term.progress.done = time.monotonic() + 60, True
    leader.run()
    assert overlapped == [True, True]
    assert leader.records.to_states("p", "b") == leader.records.to_states("q", "b") == [TaskStatus.DISPATCHED]
    assert [e for e in leader.journal if e.startswith("ack")] == ["ack 1", "ack 2"]


def test_a_failed_mariadb_write_in_flight_ends_the_term_and_the_retry_writes_it_once(leader: Leader) -> None:
    leader.dags.add_experiment("e", CHAIN)
    leader.dispatched("e", ["a"])
    leader.broker.put(RESPONSES, response("e", "a"))
    real_write = leader.records.write_batch

    def down(*_args: Any, **_kwargs: Any) -> Any:
        raise DependencyError("mariadb", "127.0.0.1:3306", "OperationalError 2013")
    leader.records.write_batch = down  # type: ignore[method-assign]
    with pytest.raises(DependencyError):
        leader.run()
    assert not leader.journal.has("ack") and len(leader.term.progress.unsent) == 1
    leader.records.write_batch = real_write  # type: ignore[method-assign]
    retry = leader.retried_term()
    retry.take_over()
    assert leader.records.to_states("e", "b") == [TaskStatus.DISPATCHED] and retry.progress.unsent == []


def test_a_failed_confirm_leaves_the_batch_unacknowledged_and_the_retried_term_publishes_it_again(
        leader: Leader) -> None:
    leader.dags.add_experiment("e", CHAIN)
    leader.dispatched("e", ["a"])
    leader.broker.put(RESPONSES, response("e", "a"))
    publisher = leader.term.publisher
    publisher.settle = lost_confirms  # type: ignore[method-assign]
    with pytest.raises(DependencyError):
        leader.run()
    assert not leader.journal.has("ack") and len(leader.term.progress.unsent) == 1
    assert len(leader.broker.bodies(REQUESTS)) == 1  # published, its confirm never came
    del publisher.settle  # the retried term (same epoch, same progress) on a new connection
    retry = leader.retried_term()
    retry.take_over()
    assert leader.records.to_states("e", "b") == [TaskStatus.DISPATCHED]  # written once
    assert [(r.task, r.attempt) for r in leader.requests()] == [("b", 1), ("b", 1)]  # published again
    assert retry.progress.unsent == []


def test_a_failed_confirm_while_the_next_batch_commits_keeps_both_steps_for_the_retried_term(
        leader: Leader) -> None:
    """run() advances batch 2 on its Neo4j thread while finishing batch 1: batch 1's confirm fails meanwhile, and
    batch 2's committed step is kept all the same (its tasks carry this epoch: no rescan of a retried term would find
    them again), so that the retried term publishes both."""
    leader.term.cfg = replace(leader.term.cfg, batch_size=1)  # one response per batch
    for name in "pq":
        leader.dags.add_experiment(name, CHAIN)
        leader.dispatched(name, ["a"])
    leader.broker.put(RESPONSES, response("p", "a"), response("q", "a"))
    leader.term._next_sweep, leader.term.progress.done = time.monotonic() + 60, True
    publisher = leader.term.publisher
    publisher.settle = lost_confirms  # type: ignore[method-assign]
    with pytest.raises(DependencyError):
        leader.run()
    assert [e.split(" ")[0] for e in leader.journal if e.startswith("neo4j.advance")] == ["neo4j.advance"] * 2
    assert not leader.journal.has("ack") and len(leader.term.progress.unsent) == 2
    del publisher.settle
    retry = leader.retried_term()
    retry.take_over()
    assert sorted((r.experiment_id, r.task) for r in leader.requests()) == [("p", "b"), ("p", "b"), ("q", "b")]
    assert leader.records.to_states("q", "b") == [TaskStatus.DISPATCHED] and retry.progress.unsent == []
