"""The worker loop: a batch of requests in, one claim, the executions, one update, one publish, one ack.

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
4. one transaction records every end (an attempt abandoned meanwhile by another worker keeps that end, and its
   result is dropped); one publish (confirmed by the broker) sends every response;
5. then the batch is acknowledged up to its last delivery tag.

A crash anywhere before step 5 leaves the batch unacknowledged: the broker redelivers it, and the claims replay
what ended and hold what did not until its deadline (then a copy — the leader re-sends overdue attempts —
abandons it, and the leader retries it as a new attempt). If the
AMQP connection is lost while tasks run, nothing more of the batch starts: the claims of what had not started are
released (deleted) so that the redelivered copies can be claimed, and what runs finishes and is recorded. A lost
RabbitMQ or MariaDB connection is logged in one line and reopened with backoff for as long as the worker is not
stopped; AMQP heartbeats keep flowing while tasks run or the database is retried.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace

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
from node.model.messages import MAX_RECHECK_S, TaskRequest, TaskResponse
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
            prefetch = min(self.cfg.worker_prefetch, 2 * limit)
            if not prefetch <= self._consumer.prefetch < 2 * prefetch:  # a change of less than 2x is not worth it
                self._consumer.set_prefetch(prefetch)
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
        """Answer every delivery of ``batch`` durably on ``publisher``, then acknowledge it on ``consumer``. A
        request that makes the batch fail unexpectedly is dead-lettered alone (``node/isolation.py``)."""
        WORKER_BATCH_SIZE.observe(len(batch))

        def answer(deliveries: list[Delivery]) -> None:
            self._answer_batch(deliveries, publisher, consumer)

        isolated = handle_isolated(batch, answer, publisher, consumer, who=f"worker: {self.worker_id}")
        self.dead_lettered += isolated  # not in one statement: answer() counts the malformed ones meanwhile

    def _answer_batch(self, batch: list[Delivery], publisher: Publisher, consumer: Consumer) -> None:
        requests, dead = [], []
        for delivery in batch:
            try:
                requests.append(TaskRequest.decode(delivery.body))
            except MalformedMessage as exc:
                dead.append((delivery, exc.reason))
        undos = [r for r in requests if r.undo]
        if undos:
            self._undo(undos)
            requests = [r for r in requests if not r.undo]
        if requests:
            responses = self._answer(requests)
            DEPENDENCY_UP.labels(service="mariadb").set(1)
            publisher.publish_batch(RESPONSES, [r.encode() for r in responses])
        for delivery, reason in dead:
            dead_letter(publisher, delivery, reason)
        DEAD_LETTERS.inc(len(dead))
        self.dead_lettered += len(dead)
        consumer.ack_through(batch[-1].tag)

    def _answer(self, requests: list[TaskRequest]) -> list[TaskResponse]:
        """The responses to publish, in request order: executed now, replayed from the ledger or ended as abandoned.
        A copy of an attempt another worker holds gets none (its holder answers)."""
        fresh: dict[Key, TaskRequest] = {}
        for request in requests:
            fresh.setdefault(request_key(request), request)
        runs = list(fresh.values())
        now = time.time()
        won = self.ledger.claim([Start(r.experiment_id, r.task, r.attempt, self.worker_id, r.epoch, now)
                                 for r in runs])
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

        claimed = [request for key, request in fresh.items() if key in won]
        outputs = self._outputs_referenced(claimed)
        outcomes = self._execute(claimed, [won[request_key(r)] for r in claimed], outputs)
        ran = [(r, o) for r, o in zip(claimed, outcomes, strict=True) if o is not None and o.outcome != "waiting"]
        waiting = {request_key(r): o for r, o in zip(claimed, outcomes, strict=True)
                   if o is not None and o.outcome == "waiting"}
        unstarted = [won[request_key(r)] for r, o in zip(claimed, outcomes, strict=True) if o is None]
        ended = self.ledger.finish([Finish(won[request_key(r)], o.ended_at, o.outcome, o.result, o.error,
                                           o.started_at) for r, o in ran])
        self._account([r for r, _ in ran], [o for _, o in ran])
        if waiting:  # not ended: the re-check the leader sends later claims the attempt again
            self.ledger.release([won[key] for key in waiting])
        if unstarted:
            self.ledger.release(unstarted)
            WORKER_CLAIMS.labels("released").inc(len(unstarted))
            log.info("worker: %s released %d claim(s) it had not started", self.worker_id, len(unstarted))
        if self._lost is not None:
            lost, self._lost = self._lost, None
            raise lost
        executed = {}
        for request, outcome in ran:
            key = request_key(request)
            if won[key] in ended:
                executed[key] = outcome
            else:
                log.warning("worker: exp=%s task=%s attempt=%d was abandoned while it ran here; result dropped",
                            *key)

        responses, replayed_ids, answered = [], [], set()
        for request in requests:
            key = request_key(request)
            if key in executed and key not in answered:
                answered.add(key)
                responses.append(self._response(request, executed[key]))
            elif key in waiting and key not in answered:
                answered.add(key)
                responses.append(self._response(request, waiting[key]))
            elif key in executed:  # the same attempt twice in this batch: ran once, the copy is a replay
                outcome = executed[key]
                responses.append(replay_response(LedgerRow(
                    won[key], *key, self.worker_id, request.epoch, outcome.started_at, outcome.ended_at,
                    outcome.outcome, outcome.result, outcome.error, 0)))
                replayed_ids.append(won[key])
            elif key in answers and key not in answered and answers[key].id in abandoned:
                answered.add(key)
                responses.append(replace(replay_response(answers[key]), replayed=False, lost=True))
            elif key in answers:
                responses.append(replay_response(answers[key]))
                replayed_ids.append(answers[key].id)
                log.info("worker: replayed exp=%s task=%s attempt=%d outcome=%s", *key, answers[key].outcome)
        if replayed_ids:
            self.ledger.mark_replayed(replayed_ids)
            self.replayed += len(replayed_ids)
        return responses

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
    def _execute(self, runs: list[TaskRequest], claims: list[int],
                 outputs: dict[str, dict[str, dict]]) -> list[Outcome | None]:
        """Run every request on the pool, each within its timeout, its output references resolved from ``outputs``;
        pump AMQP events while waiting and renew the claims (ledger ids ``claims``, in the order of ``runs``) of
        what has not ended every RENEW_S. Once the AMQP connection is lost, what has not started does not start: its
        slot is None."""
        if not runs:
            return []
        renew_at = time.monotonic() + RENEW_S
        began: list[float | None] = [None] * len(runs)  # monotonic start, set by the executing thread
        futures = [self._pool.submit(self._run_one, request, began, i, outputs.get(request.experiment_id, {}))
                   for i, request in enumerate(runs)]
        outcomes: list[Outcome | None] = [None] * len(runs)
        pending = set(range(len(runs)))
        abandoned = 0
        try:
            while True:
                now = time.monotonic()
                for i in list(pending):
                    start = began[i]
                    if futures[i].done():
                        outcomes[i] = futures[i].result()
                    elif start is not None and now - start >= runs[i].timeout_s:
                        outcomes[i] = timed_out(runs[i].timeout_s, now - start)
                        self._abandoned.append(futures[i])
                        abandoned += 1
                    else:
                        continue
                    pending.discard(i)
                if self._lost is not None:
                    for i in list(pending):
                        if began[i] is None and futures[i].cancel():
                            pending.discard(i)  # its slot stays None: never started
                if not pending:
                    break
                deadlines = [start + runs[i].timeout_s for i in pending if (start := began[i]) is not None]
                limit = min([POLL_S] + [d - now for d in deadlines])
                wait([futures[i] for i in pending], timeout=max(limit, 0.0), return_when=ALL_COMPLETED)
                self._pump()
                if time.monotonic() >= renew_at:
                    self._renew([claims[i] for i in pending])
                    renew_at = time.monotonic() + RENEW_S
        finally:  # when the connection failed under us, what has not started yet will not start
            for future in futures:
                future.cancel()
        if abandoned:
            log.info("worker: %s abandoned %d timed-out task thread(s); using a fresh pool", self.worker_id,
                     abandoned)
            self._pool.shutdown(wait=False)
            self._pool = self._new_pool()
        return outcomes

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

