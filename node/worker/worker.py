"""The worker loop: a batch of requests in, one claim, the executions, and each group of them answered as it ends.

    stop = threading.Event()
    Worker(cfg, "worker-1", concurrency=4).run(stop)      # until stop is set; survives broker/database restarts

Per batch taken from ``haorch.requests`` (at most ``cfg.batch_size``, fewer while tasks are slow: see
:meth:`Worker.batch_limit`):

1. decode each message; a malformed one goes to ``haorch.dead`` with its reason;
2. one transaction *claims* every attempt of the batch in the ledger (``node/stores/ledger.py``: a unique key per
   experiment/task/attempt, so at most one worker ever executes an attempt). For an attempt claimed before: if it
   ended, its recorded response is published again with ``replayed=True`` (without running it); if its holder
   let the claim's deadline pass (a live holder renews it: it died or froze), the attempt is *abandoned* (ended as
   failed and lost, that is the response: the leader runs a new attempt); if its holder holds it, this copy gets
   no response — the holder answers;
3. the claimed attempts run concurrently on ``concurrency`` threads, each within its request's ``timeout_s``
   counted from its own start (a late task is reported as failed and its thread abandoned: Python cannot kill a
   thread, so the pool is replaced and the straggler finishes alone);
4. as they end, in groups (an ended task waits for others of its batch at most twice the mean execution time, within
   ``GROUP_S``..``MAX_GROUP_S``: :meth:`Worker.group_s`), one transaction records the group's ends (an attempt
   abandoned meanwhile by another worker keeps that end, and its result is dropped), then one publish (confirmed by
   the broker) sends the group's responses, packed several to a message (``node/model/messages.py``): a short task
   is not held up by a long one of the same batch;
5. then the batch is acknowledged cumulatively through its answered prefix (:class:`Acks`): no delivery is
   acknowledged before its response is confirmed, or before it is known to need none.

A crash anywhere before step 5 leaves (the rest of) the batch unacknowledged: the broker redelivers it, and the claims
replay what ended and hold what did not until its deadline (then a copy — the leader re-sends overdue attempts —
abandons it, and the leader retries it as a new attempt). If the
AMQP connection is lost (or a publish fails) while tasks run, nothing more of the batch starts, is published or is
acknowledged: the claims of what had not started are released (deleted) so that the redelivered copies can be claimed,
and what runs finishes and is recorded. A lost
RabbitMQ or MariaDB connection is logged in one line and reopened with backoff for as long as the worker is not
stopped; AMQP heartbeats keep flowing while tasks run or the database is retried.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import zlib
from collections import Counter
from collections.abc import Generator
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, replace
from functools import partial

from pika.adapters.blocking_connection import BlockingConnection

from node.config import Config
from node.errors import DependencyError, MalformedMessage, UsageError
from node.isolation import handle_isolated
from node.metrics import (
    DEAD_LETTERS,
    DEPENDENCY_UP,
    WORKER_BATCH_SIZE,
    WORKER_CLAIMS,
    WORKER_EXECUTION_SECONDS,
    WORKER_EXECUTIONS,
    WORKER_IN_PROGRESS,
)
from node.model.limits import MAX_ERROR_CHARS, name_problem, value_problem
from node.model.messages import MAX_RECHECK_S, TaskRequest, TaskResponse, pack_responses
from node.model.messages import Outcome as OutcomeName
from node.model.references import UnresolvedReference, find_refs, resolve
from node.retry import RECONNECT, RESUME, call
from node.stores.ledger import ABANDONED, CLAIM_LEASE_S, Finish, Key, Ledger, LedgerRow, Start
from node.stores.ports import Consumer, Publisher
from node.stores.queues import REQUESTS, RESPONSES, WORKER_EXCHANGE
from node.stores.rabbit import (
    BatchConsumer,
    BatchPublisher,
    Delivery,
    connect,
    dead_letter,
    pump,
)
from node.worker.executors import UNDOS, ExecutionContext, ExecutorFailure, NotYet, get_executor
from node.worker.ports import ExecutionLedger

log = logging.getLogger(__name__)

MAX_RESULT_BYTES = 60_000  # ledger column result (TEXT: 65,535 bytes)
RENEW_S = CLAIM_LEASE_S / 6  # how often a worker renews the claims it holds while their tasks run or wait
TARGET_BATCH_S = 1.0  # a batch of slow tasks is cut to about this much work per thread (see batch_limit)
POLL_S = 0.05  # longest wait without pumping AMQP events (heartbeats) or checking timeouts
# an ended execution waits at most twice the mean execution time, within these bounds, for others of its batch still
# running: quick tasks share one ledger write and one publish (a batch of 200 noop tasks ends within a few ms; 10 ms
# tasks end every few ms on 4 threads, and a group of ~2 made the ledger commits and confirmed publishes ~30 % of the
# stack's CPU per task), a slow one holds up nobody, and no response waits much longer than its task ran
GROUP_S = 0.005
MAX_GROUP_S = 0.020
MIN_RECHECK_S = 0.5  # a waiting task's re-checks come at most this often
DEPENDENCIES = ("rabbitmq", "mariadb")  # the services of the worker's haorch_dependency_up


@dataclass
class Outcome:
    """How one execution ended."""

    outcome: OutcomeName
    result: dict | None
    error: str | None
    started_at: float
    ended_at: float
    seconds: float
    recheck_after_s: float | None = None  # a waiting outcome: the task waits on something outside haorch
    waiting_on: str | None = None


class Acks:
    """In-order cumulative acknowledgement of a batch's deliveries. A delivery is *settled* once its response is
    confirmed by the broker, or once it needs none (a copy another worker's claim holds, a dead letter, an undo); the
    batch is acknowledged through the last delivery of its settled prefix. A quick task's response is not held up by
    a slow one before it, only its ack: if the worker dies meanwhile, that delivery comes back and is answered from
    the ledger (a replay). One ack frame per settled run instead of one per delivery, and the consumer's cumulative
    ``ack_through`` stays the only ack there is (``node/isolation.py`` relies on it)."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.through = 0  # the highest delivery tag acknowledged on this consumer
        self._order: list[int] = []
        self._settled: set[int] = set()
        self._done: set[int] = set()  # settled in any batch of this object (kept across expect())
        self._next = 0

    def expect(self, deliveries: list[Delivery]) -> None:
        """Start a batch: ``deliveries``, in delivery order, all later than what was acknowledged."""
        self._order, self._settled, self._next = [d.tag for d in deliveries], set(), 0

    def settle(self, deliveries: list[Delivery]) -> None:
        """Mark ``deliveries`` settled and acknowledge the batch through its settled prefix, if that grew."""
        self._settled.update(d.tag for d in deliveries)
        self._done.update(d.tag for d in deliveries)
        last = None
        while self._next < len(self._order) and self._order[self._next] in self._settled:
            last = self._order[self._next]
            self._next += 1
        if last is not None:
            self.consumer.ack_through(last)
            self.through = last

    def pending(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Those of ``deliveries`` (in order, every earlier one settled) not settled yet. When there is none, the
        last is acknowledged: a dead letter of an earlier try at the batch, now handled again one by one
        (``node/isolation.py``), is neither parked twice nor left unacknowledged."""
        rest = [d for d in deliveries if d.tag > self.through and d.tag not in self._done]
        if not rest and deliveries and deliveries[-1].tag > self.through:
            self.consumer.ack_through(deliveries[-1].tag)
            self.through = deliveries[-1].tag
        return rest


def request_key(request: TaskRequest) -> Key:
    return (request.experiment_id, request.task, request.attempt)


def experiment_seed(experiment_id: str) -> int:
    """The executors' seed for an experiment: the same on every worker and in every run."""
    return zlib.crc32(experiment_id.encode("utf-8"))


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` on one line of at most ``limit`` characters, encodable (a lone surrogate becomes ``\\udXXX``)."""
    flat = " ".join(text.split()) or "no message"
    flat = flat.encode("utf-8", "backslashreplace").decode("utf-8")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class Worker:
    """Consumes ``haorch.requests``, executes, publishes to ``haorch.responses``; see the module docstring.

    ``ledger`` defaults to the MariaDB ledger (unit tests pass an in-memory one)."""

    def __init__(self, cfg: Config, worker_id: str, concurrency: int, ledger: ExecutionLedger | None = None) -> None:
        problem = name_problem(worker_id, "worker id")
        if problem:
            raise UsageError(problem)
        if concurrency < 1:
            raise UsageError(f"worker concurrency must be at least 1, got {concurrency}")
        self.cfg = cfg
        self.worker_id = worker_id
        self.concurrency = concurrency
        self._stop = threading.Event()
        self.ledger: ExecutionLedger = ledger if ledger is not None else Ledger(
            cfg, idle=self._idle, stop=lambda: self._stop.is_set(), role="worker")
        self.executed = 0
        self.replayed = 0
        self.dead_lettered = 0
        self._pool = self._new_pool()
        self._conn: BlockingConnection | None = None
        self._consumer: BatchConsumer | None = None
        self._publisher: BatchPublisher | None = None
        self._lost: BaseException | None = None  # the AMQP connection failed while tasks were running
        self._abandoned: list[Future] = []  # executions that outlived their timeout
        self._mean_s: float | None = None  # moving mean of one execution's seconds (None: nothing ran yet)
        self.skipped = 0  # copies of attempts another worker held

    def stragglers(self) -> int:
        """Executions abandoned at their timeout that are still running (their threads cannot be stopped)."""
        self._abandoned = [f for f in self._abandoned if not f.done()]
        return len(self._abandoned)

    # --- life cycle ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; the batch in hand is finished first."""
        self._stop = stop
        log.info("worker: %s started concurrency=%d batch=%d prefetch=%d", self.worker_id, self.concurrency,
                 self.cfg.batch_size, self.cfg.worker_prefetch)
        try:
            call(RESUME, self._serve, what=None, retry_on=Exception, stop=stop, on_failure=self._lost_dependency)
        except Exception:  # noqa: BLE001 - logged by _lost_dependency
            pass  # stopped while failing
        finally:
            self._close()
            self.ledger.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
        log.info("worker: %s stopped executed=%d replayed=%d dead_lettered=%d", self.worker_id, self.executed,
                 self.replayed, self.dead_lettered)

    def _lost_dependency(self, exc: BaseException) -> None:
        """After a failure of the serving loop (a dependency, or an unexpected error: logged with its traceback):
        drop the connection (the batch in hand is redelivered) and serve again."""
        if self._stop.is_set():
            pass
        elif isinstance(exc, DependencyError):
            log.warning("worker: %s lost a dependency (%s); reconnecting", self.worker_id, one_line(str(exc), 200))
        else:
            log.error("worker: %s batch failed (%s); reconnecting", self.worker_id, type(exc).__name__, exc_info=exc)
        self._close()

    def _open(self) -> None:
        """Connect to RabbitMQ, retrying until stopped (then DependencyError), and start consuming."""
        conn = connect(self.cfg, self.worker_id, RECONNECT, stop=self._stop, role="worker",
                       on_failure=lambda _exc: DEPENDENCY_UP.labels(service="rabbitmq").set(0))
        DEPENDENCY_UP.labels(service="rabbitmq").set(1)
        self._conn = conn
        self._publisher = BatchPublisher(conn, exchange=WORKER_EXCHANGE)
        self._consumer = BatchConsumer(conn, [REQUESTS], prefetch=self.cfg.worker_prefetch)
        self._consumer.start()

    def _serve(self) -> None:
        """Connect, then answer batches until stopped."""
        self._open()
        assert self._consumer is not None
        while not self._stop.is_set():
            limit = self.batch_limit()
            self._consumer.fit_prefetch(min(self.cfg.worker_prefetch, 2 * limit))
            batch = self._consumer.next_batch(max_n=limit, max_wait_s=0.1, linger_s=self.cfg.batch_wait_ms / 1000)
            if batch:
                assert self._publisher is not None
                self.handle_batch(batch, self._publisher, self._consumer)
        self._consumer.stop()

    def batch_limit(self) -> int:
        """How many requests to take at once: ``batch_size`` while tasks are quick (round trips amortized), down to
        ``concurrency`` once a batch would keep each thread busy for more than TARGET_BATCH_S — requests of slow
        tasks would otherwise wait here, claimed, while other workers idle. The prefetch follows at twice this.
        Until a task has run, ``concurrency``."""
        if self._mean_s is None:
            return min(self.concurrency, self.cfg.batch_size)
        fits = int(self.concurrency * TARGET_BATCH_S / max(self._mean_s, 1e-6))
        return max(1, min(self.cfg.batch_size, max(self.concurrency, fits)))

    def group_s(self) -> float:
        """How long an ended execution waits at most for others of its batch: twice the mean execution time, within
        GROUP_S..MAX_GROUP_S (GROUP_S until a task has run)."""
        if self._mean_s is None:
            return GROUP_S
        return min(MAX_GROUP_S, max(GROUP_S, 2 * self._mean_s))

    def _close(self) -> None:
        """Drop the AMQP connection: deliveries not acknowledged go back to the queue."""
        conn, self._conn, self._consumer, self._publisher, self._lost = self._conn, None, None, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - the connection is already broken; the broker requeues anyway
                pass

    def _idle(self, seconds: float) -> None:
        """Wait between ledger retries while keeping the AMQP connection alive."""
        DEPENDENCY_UP.labels(service="mariadb").set(0)
        if self._conn is not None and self._conn.is_open:
            pump(self._conn, seconds)
        else:
            self._stop.wait(seconds)

    # --- one batch ----------------------------------------------------------------------------
    def handle_batch(self, batch: list[Delivery], publisher: Publisher, consumer: Consumer) -> None:
        """Answer every delivery of ``batch`` durably on ``publisher`` and acknowledge it on ``consumer``, each group
        of executions as soon as it ends (:meth:`_answer`). A request that makes the batch fail unexpectedly is
        dead-lettered alone (``node/isolation.py``); what was acknowledged before the failure is not handled again."""
        WORKER_BATCH_SIZE.observe(len(batch))
        acks = Acks(consumer)

        def answer(deliveries: list[Delivery]) -> None:
            rest = acks.pending(deliveries)
            if rest:
                self._answer_batch(rest, publisher, acks)

        isolated = handle_isolated(batch, answer, publisher, consumer, who=f"worker: {self.worker_id}")
        self.dead_lettered += isolated  # not in one statement: answer() counts the malformed ones meanwhile

    def _answer_batch(self, batch: list[Delivery], publisher: Publisher, acks: Acks) -> None:
        acks.expect(batch)
        requests: list[tuple[Delivery, TaskRequest]] = []
        dead: list[tuple[Delivery, str]] = []
        for delivery in batch:
            try:
                requests.append((delivery, TaskRequest.decode(delivery.body)))
            except MalformedMessage as exc:
                dead.append((delivery, exc.reason))
        if dead and self._lost is None:
            for delivery, reason in dead:
                dead_letter(publisher, delivery, reason)
            DEAD_LETTERS.inc(len(dead))
            self.dead_lettered += len(dead)
            self._deliver([], [d for d, _ in dead], publisher, acks)
        undos = [(d, r) for d, r in requests if r.undo]
        if undos:
            self._undo([r for _, r in undos])
            self._deliver([], [d for d, _ in undos], publisher, acks)
        runs = [(d, r) for d, r in requests if not r.undo]
        if runs:
            self._answer(runs, publisher, acks)
            DEPENDENCY_UP.labels(service="mariadb").set(1)
        if self._lost is not None:
            lost, self._lost = self._lost, None
            raise lost

    def _deliver(self, responses: list[TaskResponse], deliveries: list[Delivery], publisher: Publisher,
                 acks: Acks) -> None:
        """Publish ``responses`` (returns once the broker confirmed them), then settle ``deliveries``. Once the AMQP
        connection failed, nothing more is published or acknowledged: the failure is remembered and raised when the
        batch ends, after the outcomes of what runs have reached the ledger (their redelivered copies replay them)."""
        if self._lost is not None:
            return
        try:
            if responses:
                publisher.publish_batch(RESPONSES, pack_responses(responses))
            acks.settle(deliveries)
        except DependencyError as exc:
            self._lost = exc

    def _answer(self, runs: list[tuple[Delivery, TaskRequest]], publisher: Publisher, acks: Acks) -> None:
        """Claim every attempt of ``runs`` (one transaction) and answer the copies of attempts claimed before at once
        (replayed from the ledger or ended as abandoned; a copy of an attempt another worker holds gets no response:
        its holder answers). Then execute the claimed attempts and answer them group by group as they end (see
        :meth:`_settle`): a quick task's response does not wait for a slow one of the same batch."""
        copies: dict[Key, list[tuple[Delivery, TaskRequest]]] = {}
        for delivery, request in runs:
            copies.setdefault(request_key(request), []).append((delivery, request))
        fresh = {key: pairs[0][1] for key, pairs in copies.items()}
        now = time.time()
        won = self.ledger.claim([Start(r.experiment_id, r.task, r.attempt, self.worker_id, r.epoch, now)
                                 for r in fresh.values()])
        held = self.ledger.rows([key for key in fresh if key not in won]) if len(won) < len(fresh) else {}
        answers = {key: row for key, row in held.items() if row.ended_at is not None}
        expired = [row.id for row in held.values() if row.ended_at is None and row.expired]
        abandoned = self.ledger.abandon(expired, "its worker did not end it by its claim's deadline "
                                                 "(it died or froze while running it)") if expired else {}
        answers.update({row.key: row for row in abandoned.values()})
        WORKER_CLAIMS.labels("abandoned").inc(len(abandoned))
        for key, row in held.items():
            if key not in answers:
                self.skipped += 1
                WORKER_CLAIMS.labels("held").inc()
                log.info("worker: exp=%s task=%s attempt=%d is claimed by %s; this copy is not run", *key,
                         row.worker)
        for row in abandoned.values():
            log.warning("worker: abandoned exp=%s task=%s attempt=%d claimed by %s at %.3f", *row.key, row.worker,
                        row.started_at)

        responses: list[TaskResponse] = []
        replayed_ids: list[int] = []
        settled: list[Delivery] = []
        for key, pairs in copies.items():
            if key in won:
                continue
            recorded = answers.get(key)
            for i, (delivery, _copy) in enumerate(pairs):
                if recorded is not None and i == 0 and recorded.id in abandoned:
                    responses.append(replace(replay_response(recorded), replayed=False, lost=True))
                elif recorded is not None:
                    responses.append(replay_response(recorded))
                    replayed_ids.append(recorded.id)
                    log.info("worker: replayed exp=%s task=%s attempt=%d outcome=%s", *key, recorded.outcome)
                settled.append(delivery)
        self._mark_replayed(replayed_ids)
        self._deliver(responses, settled, publisher, acks)

        claimed = [request for key, request in fresh.items() if key in won]
        outputs = self._outputs_referenced(claimed)
        with closing(self._execute(claimed, [won[request_key(r)] for r in claimed], outputs)) as groups:
            for group in groups:
                self._settle(group, won, copies, publisher, acks)

    def _settle(self, group: list[tuple[TaskRequest, Outcome | None]], won: dict[Key, int],
                copies: dict[Key, list[tuple[Delivery, TaskRequest]]], publisher: Publisher, acks: Acks) -> None:
        """Answer a group of executions that ended: record their ends (one transaction; a waiting attempt, and one
        that never started because the AMQP connection was lost, releases its claim instead), then publish their
        responses — a copy of the same attempt in the batch gets a replay — and settle their deliveries. An attempt
        abandoned by another worker while it ran here keeps that end: its result is dropped, it gets no response."""
        ran = [(r, o) for r, o in group if o is not None and o.outcome != "waiting"]
        waiting = [(r, o) for r, o in group if o is not None and o.outcome == "waiting"]
        unstarted = [won[request_key(r)] for r, o in group if o is None]
        ended = self.ledger.finish([Finish(won[request_key(r)], o.ended_at, o.outcome, o.result, o.error,
                                           o.started_at) for r, o in ran]) if ran else set()
        self._account([r for r, _ in ran], [o for _, o in ran])
        if waiting:  # not ended: the re-check the leader sends later claims the attempt again
            self.ledger.release([won[request_key(r)] for r, _ in waiting])
        if unstarted:
            self.ledger.release(unstarted)
            WORKER_CLAIMS.labels("released").inc(len(unstarted))
            log.info("worker: %s released %d claim(s) it had not started", self.worker_id, len(unstarted))
        responses: list[TaskResponse] = []
        replayed_ids: list[int] = []
        settled: list[Delivery] = []
        for request, outcome in ran:
            key = request_key(request)
            if won[key] in ended:
                responses.append(self._response(request, outcome))
                for _delivery, copy in copies[key][1:]:  # the same attempt twice in this batch: ran once
                    responses.append(replay_response(LedgerRow(
                        won[key], *key, self.worker_id, copy.epoch, outcome.started_at, outcome.ended_at,
                        outcome.outcome, outcome.result, outcome.error, 0)))
                    replayed_ids.append(won[key])
            else:
                log.warning("worker: exp=%s task=%s attempt=%d was abandoned while it ran here; result dropped",
                            *key)
            settled += [d for d, _ in copies[key]]
        for request, outcome in waiting:
            responses.append(self._response(request, outcome))
            settled += [d for d, _ in copies[request_key(request)]]
        self._mark_replayed(replayed_ids)
        self._deliver(responses, settled, publisher, acks)

    def _mark_replayed(self, ids: list[int]) -> None:
        if ids:
            self.ledger.mark_replayed(ids)
            self.replayed += len(ids)

    def _undo(self, requests: list[TaskRequest]) -> None:
        """Run the undo of each request's executor (no claim, no response: undos are idempotent, and a crash before
        the ack runs them again); a failure is logged in one line, it does not fail the batch."""
        def one(request: TaskRequest) -> None:
            undo = UNDOS.get(request.executor)
            if undo is None:
                log.warning("worker: exp=%s task=%s: executor %r has no undo", request.experiment_id, request.task,
                            request.executor)
                return
            undo(request.params, ExecutionContext(request.experiment_id, request.task, request.attempt,
                                                  seed=experiment_seed(request.experiment_id), home=str(self.cfg.home)))

        futures = {self._pool.submit(one, r): r for r in requests}
        deadline = time.monotonic() + max(r.timeout_s for r in requests)
        while futures and time.monotonic() < deadline:
            done, _ = wait(list(futures), timeout=POLL_S, return_when=ALL_COMPLETED)
            self._pump()
            for future in done:
                request = futures.pop(future)
                exc = future.exception()
                if exc is None:
                    log.info("worker: undid exp=%s task=%s (%s)", request.experiment_id, request.task,
                             request.executor)
                else:
                    log.warning("worker: undo of exp=%s task=%s failed: %s", request.experiment_id, request.task,
                                one_line(str(exc) or type(exc).__name__, 200))
        for request in futures.values():
            log.warning("worker: undo of exp=%s task=%s did not end within %g s", request.experiment_id,
                        request.task, request.timeout_s)

    def _outputs_referenced(self, runs: list[TaskRequest]) -> dict[str, dict[str, dict]]:
        """The outputs the params of ``runs`` reference, by experiment and task (one ledger read for the batch)."""
        wanted = [(r.experiment_id, task) for r in runs for task in find_refs(r.params)]
        found: dict[str, dict[str, dict]] = {}
        for (experiment_id, task), values in (self.ledger.outputs(wanted) if wanted else {}).items():
            found.setdefault(experiment_id, {})[task] = values
        return found

    def _response(self, request: TaskRequest, outcome: Outcome) -> TaskResponse:
        return TaskResponse(experiment_id=request.experiment_id, task=request.task, attempt=request.attempt,
                            outcome=outcome.outcome, result=outcome.result, error=outcome.error,
                            worker=self.worker_id, started_at=outcome.started_at, ended_at=outcome.ended_at,
                            recheck_after_s=outcome.recheck_after_s, waiting_on=outcome.waiting_on)

    def _account(self, runs: list[TaskRequest], outcomes: list[Outcome]) -> None:
        """Metrics and log lines for executed tasks (successes only at DEBUG: thousands per second)."""
        counts: Counter[tuple[str, str]] = Counter()
        debug = log.isEnabledFor(logging.DEBUG)
        for request, outcome in zip(runs, outcomes, strict=True):
            counts[(request.kind, outcome.outcome)] += 1
            WORKER_EXECUTION_SECONDS.observe(outcome.seconds)
            if outcome.outcome != "success":
                log.info("worker: executed exp=%s task=%s attempt=%d outcome=%s error=%s", request.experiment_id,
                         request.task, request.attempt, outcome.outcome, outcome.error)
            elif debug:
                log.debug("worker: executed exp=%s task=%s attempt=%d outcome=%s seconds=%.4f",
                          request.experiment_id, request.task, request.attempt, outcome.outcome, outcome.seconds)
        for (kind, outcome_name), n in counts.items():
            WORKER_EXECUTIONS.labels(kind=kind, outcome=outcome_name).inc(n)
        self.executed += len(runs)
        if outcomes:
            mean = sum(o.seconds for o in outcomes) / len(outcomes)
            self._mean_s = mean if self._mean_s is None else 0.5 * self._mean_s + 0.5 * mean

    # --- execution ----------------------------------------------------------------------------
    def _execute(self, runs: list[TaskRequest], claims: list[int], outputs: dict[str, dict[str, dict]]
                 ) -> Generator[list[tuple[TaskRequest, Outcome | None]], None, None]:
        """Run every request on the pool, each within its timeout, its output references resolved from ``outputs``,
        and yield the executions in groups, in request order within a group, as they end: one that ended waits at most
        :meth:`group_s` for others still running, so that many quick tasks share one ledger write and one publish
        while a slow one holds up nobody. Meanwhile AMQP events are pumped and the claims (ledger ids ``claims``, in
        the order of ``runs``) of what has not ended are renewed every RENEW_S. Once the AMQP connection is lost, what
        has not started does not start: it is yielded with None as its outcome."""
        if not runs:
            return
        renew_at = time.monotonic() + RENEW_S
        began: list[float | None] = [None] * len(runs)  # monotonic start, set by the executing thread
        ended: queue.SimpleQueue[int] = queue.SimpleQueue()  # indexes of the executions that ended, as they end
        futures = []
        for i, request in enumerate(runs):
            future = self._pool.submit(self._run_one, request, began, i, outputs.get(request.experiment_id, {}))
            future.add_done_callback(partial(_put_index, ended, i))
            futures.append(future)
        pending = set(range(len(runs)))
        ready: list[tuple[int, Outcome | None]] = []
        group_by = 0.0  # monotonic time by which the ended ones in ``ready`` are yielded
        look_at = 0.0  # monotonic time of the next look for late (or, once the connection is lost, unstarted) ones
        group_s = self.group_s()
        pump_at = 0.0
        abandoned = 0
        arrived: list[int] = []
        try:
            while pending or ready:
                now = time.monotonic()
                taken: list[tuple[int, Outcome | None]] = [(i, futures[i].result()) for i in arrived if i in pending]
                if now >= look_at or self._lost is not None:
                    # every pending one, but only this often: a look per ended execution made a batch quadratic
                    look_at = now + POLL_S
                    for i in sorted(pending.difference(i for i, _ in taken)):
                        start = began[i]
                        outcome: Outcome | None
                        if start is not None and now - start >= runs[i].timeout_s and not futures[i].done():
                            outcome = timed_out(runs[i].timeout_s, now - start)
                            self._abandoned.append(futures[i])
                            abandoned += 1
                        elif start is None and self._lost is not None and futures[i].cancel():
                            outcome = None  # never started, never will
                        else:
                            if start is not None:
                                look_at = min(look_at, start + runs[i].timeout_s)
                            continue
                        taken.append((i, outcome))
                for i, outcome in taken:
                    pending.discard(i)
                    if not ready:
                        group_by = now + group_s
                    ready.append((i, outcome))
                if ready and (not pending or now >= group_by):
                    group, ready = sorted(ready, key=lambda item: item[0]), []
                    yield [(runs[i], outcome) for i, outcome in group]
                    arrived = _drained(ended)
                    continue  # answering took a while: look again before waiting
                # the first end starts a group; then wait for the rest of it (one wake-up per end, each O(1))
                arrived = _drained(ended, timeout=max(0.0, (min(look_at, group_by) if ready else look_at) - now))
                if time.monotonic() >= pump_at:
                    self._pump()
                    pump_at = time.monotonic() + POLL_S
                if time.monotonic() >= renew_at:
                    self._renew([claims[i] for i in pending])
                    renew_at = time.monotonic() + RENEW_S
        finally:  # when the connection failed under us, or answering failed, what has not started will not start
            for future in futures:
                future.cancel()
            if abandoned:
                log.info("worker: %s abandoned %d timed-out task thread(s); using a fresh pool", self.worker_id,
                         abandoned)
                self._pool.shutdown(wait=False)
                self._pool = self._new_pool()

    def _renew(self, ids: list[int]) -> None:
        """Push the deadlines of claims this worker still holds ahead. If MariaDB does not answer within a moment,
        the tasks go on: a claim whose deadline passes may be abandoned by another worker, and then this worker's
        result of it is dropped (the attempt still ran only here)."""
        try:
            self.ledger.renew(ids)
        except DependencyError as exc:
            log.warning("worker: %s could not renew %d claim(s): %s", self.worker_id, len(ids),
                        one_line(str(exc), 200))

    def _pump(self) -> None:
        """Serve AMQP heartbeats while tasks run. A lost connection is remembered, not raised: the tasks in hand
        finish and reach the ledger first, so that their redelivery is replayed instead of run again."""
        if self._conn is None or self._lost is not None:
            return
        try:
            pump(self._conn)
        except DependencyError as exc:
            self._lost = exc

    @WORKER_IN_PROGRESS.track_inprogress()
    def _run_one(self, request: TaskRequest, began: list[float | None], index: int,
                 outputs: dict[str, dict]) -> Outcome:
        """Execute one request (on a pool thread), its references resolved (``node/model/references.py``; task
        outputs from ``outputs``: task name -> outputs of its experiment's tasks); never raises."""
        began[index] = t0 = time.monotonic()
        started_at = time.time()
        result, error = None, None
        try:
            run = get_executor(request.executor, shell_enabled=self.cfg.shell_executor_enabled)
            try:
                params = resolve(request.params, outputs, request.params, request.experiment_id)
            except UnresolvedReference as exc:
                raise ExecutorFailure(str(exc)) from None
            value = run(params, ExecutionContext(request.experiment_id, request.task, request.attempt,
                                                         seed=experiment_seed(request.experiment_id),
                                                         home=str(self.cfg.home)))
            if not isinstance(value, dict):
                raise ExecutorFailure(f"executor returned {type(value).__name__}, not an object")
            problem = value_problem(value, "result")  # what the leader's decoder would reject
            if problem:
                raise ExecutorFailure(problem)
            try:
                size = len(json.dumps(value, allow_nan=False, separators=(",", ":")).encode("utf-8"))
            except (TypeError, ValueError) as exc:
                raise ExecutorFailure(f"result is not JSON: {exc}") from None
            if size > MAX_RESULT_BYTES:
                raise ExecutorFailure(f"result is {size} bytes of JSON, more than {MAX_RESULT_BYTES}")
            result = value
        except NotYet as wait:
            recheck = min(max(wait.recheck_after_s, MIN_RECHECK_S), MAX_RECHECK_S)
            return Outcome("waiting", None, None, started_at, time.time(), time.monotonic() - t0, recheck,
                           one_line(wait.status))
        except ExecutorFailure as exc:
            error = one_line(str(exc))
        except Exception as exc:  # noqa: BLE001 - a task's bug is the task's failure, not the worker's
            error = one_line(f"{type(exc).__name__}: {exc}")
        return Outcome("success" if error is None else "failure", result, error, started_at, time.time(),
                       time.monotonic() - t0)

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"{self.worker_id}-task")


def _put_index(ended: queue.SimpleQueue[int], index: int, _future: Future[Outcome]) -> None:
    ended.put(index)


def _drained(ended: queue.SimpleQueue[int], timeout: float | None = None) -> list[int]:
    """What ``ended`` holds: without ``timeout``, what it holds now; with one, waiting up to it for the first."""
    out: list[int] = []
    if timeout is not None:
        try:
            out.append(ended.get(timeout=timeout))
        except queue.Empty:
            return out
    while True:
        try:
            out.append(ended.get_nowait())
        except queue.Empty:
            return out


def timed_out(timeout_s: float, elapsed_s: float) -> Outcome:
    ended = time.time()
    return Outcome("failure", None, f"timed out after {timeout_s:g} s", ended - elapsed_s, ended, elapsed_s)


def replay_response(row: LedgerRow) -> TaskResponse:
    """The response recorded in a ledger row, marked as a replay (a replay of an abandoned claim is lost)."""
    failed = row.outcome != "success"
    return TaskResponse(experiment_id=row.experiment_id, task=row.task, attempt=row.attempt,
                        outcome="failure" if failed else "success", result=row.result,
                        error=(row.error or "failed (no error recorded)") if failed else None, worker=row.worker,
                        started_at=row.started_at, ended_at=row.ended_at or row.started_at, replayed=True,
                        lost=failed and (row.error or "").startswith(f"{ABANDONED}:"))

