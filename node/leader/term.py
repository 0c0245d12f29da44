"""One term of leadership: take over (fence, rescan, reconcile, re-dispatch), then advance DAGs batch by batch.

Per batch (docs/ARCHITECTURE.md, "The leader loop")::

    consume responses + submissions  →  Neo4j tx (fence, flag, find ready, outbox)  →  publish ready tasks
    (persistent)  →  MariaDB tx (fence, transitions) on the term's MariaDB thread, while the loop runs the next
    batch's Neo4j tx  →  MariaDB done, publisher confirms  →  ack

The ready tasks are published as soon as Neo4j has committed them, so the broker stores them (and a worker may
start) while MariaDB commits the batch's rows; the MariaDB write and the publisher confirms of a batch are awaited,
and the batch acknowledged, while the next batch's Neo4j transaction runs on the term's Neo4j thread (or at once
when no batch follows, before a sweep or a takeover page, and before any other ack): MariaDB's commit, the broker's
fsync and this thread's AMQP work overlap the leader's longest step. The writes run one
at a time, in order, and each batch is acknowledged only after its rows and its confirms, in order; the thread is
the only user of the term's MariaDB connection while a write is in flight (anything else the term does in MariaDB,
and its end, first waits for it). Nothing is acknowledged before its effects are durable, so a leader that dies
anywhere in this sequence leaves the batch in the queue for the next one; the next leader's Neo4j check
(``status``/``attempt``) turns the replays into counted duplicates, and its takeover writes the transition rows of a
Neo4j commit that never reached MariaDB from the Neo4j outbox (``node/stores/dags.py``) before it advances anything.
A request published by a leader whose MariaDB write then fails (fenced, or MariaDB lost) is a copy of an attempt
Neo4j has: a new leader re-sends the same attempt, and the ledger's claim lets only one copy run
(``node/stores/ledger.py``). A :class:`FencedError` from either store ends the term at once.

The takeover re-dispatches what the previous leader lost in bounded pages (``takeover_page_size`` ready tasks:
rescan page → ledger check → one small fenced Neo4j transaction → publish → MariaDB), the first before the loop
starts and the others between batches, so the leader advances DAGs, and services its AMQP connection, while a
backlog of any size is being re-dispatched. What a term has done is kept in a :class:`TermProgress` across retries
of the same epoch: a retried term resumes the takeover after the last page and finishes a step Neo4j committed
but MariaDB or the broker did not get, instead of starting over.

Concurrency pools: the term reads the bounded pools' slots from MariaDB when it takes over and at every sweep and
hands them to the DAG store, which holds a ready task of a full pool instead of dispatching it and dispatches the
held ones, oldest first, as slots free (``node/stores/dags.py``); a changed limit is in force within a sweep
interval. Everything it needs is in the stores, so a new leader enforces the same limits from its first dispatch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from node import failpoints, metrics
from node.errors import MalformedMessage
from node.isolation import handle_isolated
from node.leader.ports import Dags, PoolLimits, Records
from node.model.advance import RETRY_WRITER, AdvanceResult, Outcome, transition_rows
from node.model.messages import Rejected, SubmissionNotice, TaskRequest, TaskResponse, unpack_responses
from node.model.states import TaskStatus
from node.stores.ports import Consumer, Publisher
from node.stores.queues import REQUESTS, RESPONSES, SUBMISSIONS
from node.stores.rabbit import Delivery, dead_letter

log = logging.getLogger(__name__)


@dataclass
class PhaseClock:
    """Wall-clock timestamps of a takeover's phases, for the failover histogram and leader_terms.

    Marks, in order: ``last_seen`` (the previous leader's last fenced write: its last sign of life), ``won``
    (this node won the election lock), ``elected`` (its new epoch is taken), ``fence``, ``rescan``,
    ``redispatch``, ``first_advance`` (``rescan`` and ``redispatch`` end with the takeover's FIRST page: the rest
    is re-dispatched between batches, after the first advance may have happened; :class:`TermProgress` times the
    whole takeover). Each phase lasts from the previous mark to its own and is named as in
    ``metrics.FAILOVER_PHASES``: detect = last_seen→won, elect = won→elected, fence, rescan, redispatch,
    first_advance, and total = first mark → first_advance. A first leader (nobody to take over from) has no
    ``last_seen``, hence no detect phase.
    """

    marks: dict[str, float] = field(default_factory=dict)
    on_first_advance: Callable[[], None] | None = field(default=None, repr=False)  # called once, on that mark

    ORDER: ClassVar[tuple[str, ...]] = ("last_seen", "won", "elected", "fence", "rescan", "redispatch",
                                        "first_advance")
    PHASE: ClassVar[dict[str, str]] = {"won": "detect", "elected": "elect"}

    def mark(self, phase: str, at: float | None = None) -> None:
        if phase in self.marks:
            return
        self.marks[phase] = time.time() if at is None else at
        if phase == "first_advance" and self.on_first_advance is not None:
            self.on_first_advance()

    def durations(self) -> dict[str, float]:
        """Phase durations: each phase lasts from the previous mark to its own."""
        out: dict[str, float] = {}
        previous = None
        for mark in self.ORDER:
            if mark not in self.marks:
                continue
            if previous is not None:
                out[self.PHASE.get(mark, mark)] = max(0.0, self.marks[mark] - self.marks[previous])
            previous = mark
        start = next((self.marks[m] for m in self.ORDER if m in self.marks), None)
        if start is not None and "first_advance" in self.marks:
            out["total"] = self.marks["first_advance"] - start
        return out


OUTBOX_PAGE = 100  # Outbox nodes read at a time by the takeover (normally there are a few)
PAGE_BUDGET_S = 1.0  # a takeover page this slow halves the next (the loop and the AMQP connection wait for it)
MIN_PAGE = 100
# The consumer's prefetch: PREFETCH_BATCHES batches of what arrives (one awaiting its confirms, one being advanced,
# one filling), at least MIN_PREFETCH deliveries, at most PREFETCH_BATCHES full batches, a power of two that shrinks
# only when PREFETCH_SHRINK_AT times too big (batch sizes around a power of two would re-subscribe at every batch).
# Sized by what arrives, not by batch_size: the broker hands deliveries round-robin to every consumer with room, so a
# leader that is frozen (SIGSTOP, a stalled host) keeps taking its share — and holding it hostage — until its
# prefetch is full or the broker drops its connection (missed heartbeats); a small prefetch stops that soon.
PREFETCH_BATCHES = 3
MIN_PREFETCH = 16
PREFETCH_SHRINK_AT = 4


def prefetch_for(taken: int, wanted: int) -> int:
    """The prefetch after a batch of ``taken`` deliveries when a full batch is ``wanted`` (see PREFETCH_BATCHES)."""
    most = PREFETCH_BATCHES * wanted
    return max(MIN_PREFETCH, min(1 << (PREFETCH_BATCHES * max(taken, 1) - 1).bit_length(), most))


@dataclass(eq=False)
class Step:
    """A leader write Neo4j has committed (at ``at``), until MariaDB has its rows (``written``; ``writing``: the
    write running on the term's MariaDB thread), the broker has confirmed its dispatches (``sent``: the batches
    published, whose confirms are awaited; None: not published yet) and ``done`` ran (the batch's dead letters, its
    ack, its metrics)."""

    result: AdvanceResult
    at: float
    written: bool = False
    writing: Future[None] | None = None
    sent: list[Any] | None = None
    done: Callable[[], None] | None = None


@dataclass
class TermProgress:
    """What one epoch's term has done, kept by the replica across retries of the term (same epoch).

    ``after``: the takeover's rescan resumes after this key (tasks this epoch dispatched are skipped anyway, so a
    page is never redone); ``done`` once a page came back short; ``size``: the next page's size (0: not set yet),
    halved after a page slower than PAGE_BUDGET_S and doubled, up to ``takeover_page_size``, after a fast one,
    so that a page stays short on a loaded host too. ``unsent``: the steps (oldest first) whose Neo4j transaction
    committed but whose MariaDB write, publish or confirms may not have happened (normally the last batch, whose
    confirms are awaited after the next one's Neo4j transaction); a retried term finishes them first, since their
    tasks carry this epoch and no rescan would find them again."""

    after: str = ""
    done: bool = False
    size: int = 0
    pages: int = 0
    rescanned: int = 0
    redispatched: int = 0
    in_flight: int = 0
    started: float | None = None
    finished: float | None = None
    unsent: list[Step] = field(default_factory=list)


class LeaderTerm:
    """Acts as leader for one epoch, on the caller's thread, while ``acting()`` stays true.

    Its stores and queues are given (the replica passes Neo4j, MariaDB and RabbitMQ; unit tests in-memory
    fakes): ``open_consumer()`` opens the consumer of :attr:`QUEUES` when the loop starts, ``fence_guard(epoch)``
    wraps the Neo4j fence raise (it terminates an older leader's transaction that blocks it).
    ``ledger_progress`` maps (experiment_id, task, attempt) to the start time of an unfinished execution, so
    that the takeover does not re-dispatch work a live worker is doing. ``progress`` is the term's
    :class:`TermProgress`, shared by the retries of one epoch. ``pump()`` serves the AMQP connection (heartbeats)
    between the steps of a takeover page; it raises DependencyError once the connection is gone. ``pools`` reads the
    concurrency pools' slots (the replica passes MariaDB's ``pools`` table; None: every pool unbounded)."""

    QUEUES = (RESPONSES, SUBMISSIONS)

    def __init__(self, cfg, node_id: str, epoch: int, *, dags: Dags, records: Records,
                 publisher: Publisher, open_consumer: Callable[[], Consumer],
                 fence_guard: Callable[[int], AbstractContextManager[Any]], acting: Callable[[], bool],
                 clock: PhaseClock,
                 ledger_progress: Callable[[list[tuple[str, str, int]]], dict] | None = None,
                 progress: TermProgress | None = None,
                 repair_submits: Callable[[int, float], None] | None = None,
                 pump: Callable[[], None] = lambda: None,
                 waiting: Callable[[str], int] | None = None,
                 pools: PoolLimits | None = None) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.epoch = epoch
        self.dags = dags
        self.records = records
        self.publisher = publisher
        self.open_consumer = open_consumer
        self.fence_guard = fence_guard
        self.acting = acting
        self.clock = clock
        self.ledger_progress = ledger_progress
        self.repair_submits = repair_submits  # node/leader/submits.py: completes submits that died halfway
        self.progress = progress if progress is not None else TermProgress()
        self.pump = pump
        self.waiting = waiting
        self.pools = pools
        self._limits: dict[str, int] | None = None  # the pools' slots last read (None: not yet)
        self._gauged: set[str] | None = None  # the pools whose gauges this term set (None: none yet)
        self.consumer: Consumer | None = None
        self.advanced = 0
        self._settled: list[str] = []  # Outbox ids MariaDB has; deleted by the next sweep
        self._next_sweep = 0.0
        self._next_page = 0.0
        self._per_delivery = 1.0  # responses and submissions per delivery in the last batch
        self._taken = 0  # deliveries in the last batch that had any
        self._writer: ThreadPoolExecutor | None = None  # run()'s MariaDB thread: a batch's write overlaps the next
        self._neo4j: ThreadPoolExecutor | None = None  # run()'s Neo4j thread: a batch's transaction overlaps the
        # confirms, writes and acks of the one before

    # --- takeover ----------------------------------------------------------------------------------------
    def take_over(self) -> None:
        """Raise both fences, write the transition rows a previous leader committed in Neo4j only, finish what a
        failed attempt of this term left half-done, then re-dispatch the first page of lost work; :meth:`run`
        re-dispatches the other pages between batches."""
        self._read_pools()
        self.records.raise_fence(self.epoch, self.node_id, self.clock.marks.get("elected", time.time()))
        with self.fence_guard(self.epoch):  # an older leader frozen mid-transaction may hold the lock
            self.dags.raise_fence(self.epoch, self.node_id)
        self.clock.mark("fence")
        self._adopt_unsent(self._write_outbox())
        self._flush()
        self.redispatch_page()

    def _adopt_unsent(self, boxes: set[str]) -> None:
        """Take over the steps a failed attempt of this term left unfinished: their deliveries went back to the queue
        with the old consumer (no ack to run) and their confirms with the old connection (publish them again).
        Forget a step that Neo4j committed and MariaDB did not get if its Outbox node is gone: that node stays until
        its rows are written, so the commit went with it — Neo4j was emptied and rebuilt from MariaDB (``haorch
        recover neo4j``) in between. Writing its rows now would record changes the graph does not have; its
        deliveries were never acknowledged and advance the rebuilt graph again, which dispatches the same attempts
        (the ledger runs one copy of a request the step had published)."""
        p = self.progress
        for step in list(p.unsent):
            step.done, step.sent, step.writing = None, None, None
            if step.written or step.result.outbox_id is None or step.result.outbox_id in boxes:
                continue
            log.warning("leader: epoch=%d drops a step whose Neo4j commit is gone (Neo4j was rebuilt): %d "
                        "dispatches never recorded", self.epoch, len(step.result.dispatches))
            p.unsent.remove(step)

    def _write_outbox(self, before: float | None = None) -> set[str]:
        """Write to MariaDB the transition rows of every write that committed in Neo4j only (its Outbox node is still
        there: a leader died between its two commits, or a cancel's caller did), oldest first, as its writer wrote
        them (epoch, node id, time); a batch MariaDB has already is not written again. The takeover writes them all
        before advancing anything; the sweep, those written before ``before``. Returns the ids of the nodes."""
        written = boxes = 0
        seen: set[str] = set()
        while True:
            page = self.dags.outbox(OUTBOX_PAGE, before)
            seen.update(box["id"] for box in page)
            for box in page:
                retry = box["node"] == RETRY_WRITER
                written += self.records.write_batch(self.epoch, self.node_id, box["rows"], box["states"], box["at"],
                                                    batch_id=box["id"], written_by=(box["epoch"], box["node"]),
                                                    reopen=retry)
                if retry:  # its caller died before releasing the retried tasks
                    self.dags.release_retry(list(box["states"]), time.time())
                self.pump()
            self.dags.forget_outbox([box["id"] for box in page])
            boxes += len(page)
            if len(page) < OUTBOX_PAGE:
                break
        if written:
            log.warning("leader: epoch=%d wrote %d of %d batch(es) committed in Neo4j only (a previous leader or a "
                        "cancel died between its two writes)", self.epoch, written, boxes)
        return seen

    def redispatch_page(self) -> bool:
        """One takeover page: rescan up to ``takeover_page_size`` ready tasks after the last page, leave those a
        live worker is running, mark the rest dispatched by this epoch (one fenced Neo4j transaction), publish and
        record them. Returns whether pages remain. A crash after the Neo4j commit leaves the page to the next
        epoch's takeover (its tasks are not of that epoch); a failure, to this term's retry (``unsent``)."""
        p = self.progress
        if p.done:
            return False
        if p.started is None:
            p.started = time.time()
        self._flush()
        began = time.monotonic()
        limit = p.size or self.cfg.takeover_page_size
        page = self.dags.rescan(self.epoch, p.after, limit)
        metrics.RESCAN_TASKS.inc(len(page))
        self.clock.mark("rescan")
        now = time.time()
        candidates = [t for t in page if t["status"] in (TaskStatus.PENDING, TaskStatus.DISPATCHED)]
        in_flight = self._in_flight(candidates, now)
        self.pump()
        keys = [t["key"] for t in candidates if t["key"] not in in_flight]
        result = self.dags.mark_dispatched(self.epoch, keys, now) if keys else AdvanceResult()
        self.pump()
        if page:
            p.after = page[-1]["key"]
        p.pages += 1
        p.rescanned += len(page)
        p.redispatched += len(result.dispatches)
        p.in_flight += len(in_flight)
        if (result.dispatches or result.experiments) and not self._finish(self._commit(result, now), pump=True):
            return True
        self.clock.mark("redispatch")
        took = time.monotonic() - began
        if took > PAGE_BUDGET_S:
            p.size = max(MIN_PAGE, limit // 2)
        elif took < PAGE_BUDGET_S / 4:
            p.size = min(self.cfg.takeover_page_size, limit * 2)
        log.debug("leader: takeover page epoch=%d size=%d rescanned=%d redispatched=%d in_flight=%d ms=%.0f",
                  self.epoch, limit, len(page), len(result.dispatches), len(in_flight), took * 1000)
        if len(page) < limit:
            p.done, p.finished = True, time.time()
            log.info("leader: takeover epoch=%d pages=%d rescanned=%d redispatched=%d in_flight=%d seconds=%.2f",
                     self.epoch, p.pages, p.rescanned, p.redispatched, p.in_flight, p.finished - p.started)
        return not p.done

    def _commit(self, result: AdvanceResult, now: float, done: Callable[[], None] | None = None) -> Step:
        """Keep a step Neo4j has just committed until it is finished (:meth:`_finish`)."""
        step = Step(result, now, done=done)
        self.progress.unsent.append(step)
        return step

    def _flush(self) -> None:
        """Finish every unfinished step, oldest first."""
        for step in list(self.progress.unsent):
            if not self._finish(step):
                return

    def _finish(self, step: Step, pump: bool = False) -> bool:
        """Publish the step's dispatches (unless ``acting()`` turned false: then it stays unfinished and False is
        returned), write its rows to MariaDB while the broker stores them, wait for their confirms, run its
        ``done``. ``pump``: serve the connection between the steps (a takeover page)."""
        if not self.acting():
            return False
        sent = self._publish(step)
        self._written(step)
        if pump:
            self.pump()
        for batch in sent:
            self.publisher.settle(batch)
        self.progress.unsent.remove(step)
        if step.done is not None:
            step.done()
        return True

    def _write_async(self, step: Step) -> None:
        """Start the step's MariaDB write on the term's MariaDB thread (written at once outside :meth:`run`); the
        older steps are finished, so the writes stay in order. :meth:`_finish` waits for it."""
        if self._writer is None:
            self._write(step)
        else:
            step.writing = self._writer.submit(self._write, step)

    def _written(self, step: Step) -> None:
        """Return once MariaDB has the step's rows: wait for its write in flight (its error raised here), or write
        them now."""
        writing, step.writing = step.writing, None
        if writing is not None:
            writing.result()
        self._write(step)

    def _write(self, step: Step) -> None:
        if step.written:
            return
        failpoints.hit(self.cfg, self.node_id, "leader.between_commits")
        result = step.result
        self.records.write_batch(self.epoch, self.node_id, transition_rows(result), result.experiments, step.at,
                                 batch_id=result.outbox_id)
        if result.outbox_id is not None:
            self._settled.append(result.outbox_id)
        step.written = True

    def _publish(self, step: Step) -> list[Any]:
        """Publish the step's dispatches and undos (once); the batches whose confirms :meth:`_finish` awaits."""
        if step.sent is not None:
            return step.sent
        result = step.result
        if result.dispatches:
            failpoints.hit(self.cfg, self.node_id, "leader.before_publish")
        now = time.time()
        step.sent = [sent for sent in (
            self.publisher.publish_async(REQUESTS, (TaskRequest.wire_from_static(d.request, d.attempt, self.epoch,
                                                                                  now) for d in result.dispatches)),
            # rare: a task that ended after its experiment was cancelled (its response is not acked yet)
            self.publisher.publish_async(REQUESTS, (TaskRequest.from_static(d.request, d.attempt, self.epoch, now,
                                                                             undo=True).encode()
                                                    for d in result.undos)))
            if sent is not None]
        return step.sent

    def _in_flight(self, tasks: list[dict], now: float) -> set[str]:
        """Keys of dispatched tasks a worker is executing right now (started, not ended, not timed out)."""
        if self.ledger_progress is None:
            return set()
        dispatched = [t for t in tasks if t["status"] == TaskStatus.DISPATCHED]
        progress = self.ledger_progress([(t["experiment_id"], t["name"], t["attempt"]) for t in dispatched])
        busy = set()
        for t in dispatched:
            started = progress.get((t["experiment_id"], t["name"], t["attempt"]))
            if started is not None and started + t["timeout_s"] + self.cfg.task_timeout_grace_s > now:
                busy.add(t["key"])
        return busy

    # --- the loop ----------------------------------------------------------------------------------------
    def run(self) -> None:
        """Consume and advance until ``acting()`` turns false; FencedError propagates to the caller."""
        self.consumer = self.open_consumer()
        self.consumer.start()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leader-mariadb")
        self._neo4j = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leader-neo4j")
        try:
            while self.acting():
                taking_over = not self.progress.done  # then a page per batch: wait for responses only briefly
                # about batch_size responses: the workers pack several to a message
                wanted = max(1, round(self.cfg.batch_size / self._per_delivery))
                self.consumer.fit_prefetch(prefetch_for(self._taken, wanted), shrink_at=PREFETCH_SHRINK_AT)
                batch = self.consumer.next_batch(wanted, max_wait_s=0.005 if taking_over else 0.05,
                                                 linger_s=self.cfg.batch_wait_ms / 1000)
                if batch:
                    self._taken = len(batch)  # not an empty wait: a lull between bursts would shrink it each time
                    self.process(batch)
                else:
                    self._flush()
                if taking_over and self.acting() and (not batch or time.monotonic() >= self._next_page):
                    began = time.monotonic()
                    self.redispatch_page()  # then batches get as long as the page took, if any are waiting
                    self._next_page = 2 * time.monotonic() - began
                if time.monotonic() >= self._next_sweep:
                    self.sweep()
        finally:
            # the write in flight ends (its step stays unsent if it failed) before a retried term uses MariaDB
            self._writer.shutdown(wait=True)
            self._writer = None
            self._neo4j.shutdown(wait=True)  # idle: each transaction is awaited where it was started
            self._neo4j = None
            self._close_consumer()

    def _close_consumer(self) -> None:
        """Stop consuming; closing the channel hands every unacked delivery back to its queue."""
        if self.consumer is None:
            return
        try:
            self.consumer.close()
        except Exception:  # noqa: BLE001 - the connection may already be gone
            pass
        self.consumer = None

    def process(self, batch: list[Delivery]) -> None:
        """Advance the DAGs for one batch of deliveries; ack them only once every effect is durable. A message
        that makes the batch fail unexpectedly is dead-lettered alone (``node/isolation.py``)."""
        assert self.consumer is not None, "process() runs within run(), which opened the consumer"
        handle_isolated(batch, self._advance, self.publisher, _FlushingConsumer(self, self.consumer), who="leader",
                        acting=self.acting)

    def _advance(self, batch: list[Delivery]) -> None:
        """Advance one batch of deliveries: its responses (several to a message) in parts of at most ``batch_size``,
        one Neo4j transaction and one step each, the submissions with the first; the last part's step dead-letters
        what could not be used and acknowledges the whole batch, after every part's effects are durable."""
        outcomes: list[Outcome] = []
        submitted: list[str] = []
        dead: list[tuple[Delivery, str]] = []
        by_key: dict[str, list[tuple[Delivery, TaskResponse | None]]] = {}
        for d in batch:
            try:
                if d.queue == SUBMISSIONS:
                    submitted.append(SubmissionNotice.decode(d.body).experiment_id)
                    continue
                items = unpack_responses(d.body)
            except MalformedMessage as exc:
                dead.append((d, exc.reason))
                continue
            packed = len(items) > 1 or d.body[:1] == b"["
            for r in items:
                if isinstance(r, Rejected):
                    dead.append((replace(d, body=r.body), r.reason))
                    continue
                key = f"{r.experiment_id}/{r.task}"
                outcomes.append(Outcome(key, r.attempt, r.outcome == "success", r.error, r.lost, r.recheck_after_s,
                                        r.waiting_on))
                by_key.setdefault(key, []).append((d, r if packed else None))
        self._per_delivery = max(1.0, (len(outcomes) + len(submitted)) / len(batch))
        now = time.time()
        size = self.cfg.batch_size
        parts = [outcomes[i:i + size] for i in range(0, len(outcomes), size)] or [[]]
        reported: set[str] = set()
        for number, part in enumerate(parts):
            if not self.acting():
                return
            t0 = time.perf_counter()
            roots = submitted if number == 0 else []
            advancing = self._start_advance(part, roots, now)
            try:
                self._flush()  # the previous steps, while Neo4j works: their effects are durable whatever it does
                unfinished: Exception | None = None
            except Exception as exc:  # noqa: BLE001 - raised below, once the step of the transaction is kept
                unfinished = exc
            result = advancing.result()
            t1 = time.perf_counter()
            unknown = [key for key in dict.fromkeys(result.unknown) if key not in reported]
            reported.update(unknown)  # by_key has every response of the batch for the key, whatever its part
            dead += [(d if r is None else replace(d, body=r.encode()),
                      f"response for unknown task {key} (never submitted, or deleted by retention)")
                     for key in unknown for d, r in by_key[key]]
            last = number == len(parts) - 1
            step = self._commit(result, now, self._done(result, len(part) + len(roots), batch if last else [], dead,
                                                        now))
            if unfinished is not None:
                raise unfinished
            if not self.acting():
                return
            self._publish(step)  # confirmed (and the batch acknowledged) while the next step's Neo4j transaction runs
            self._write_async(step)  # while the next step's Neo4j transaction runs
            if log.isEnabledFor(logging.DEBUG):
                t2 = time.perf_counter()
                log.debug("leader: batch size=%d part=%d/%d flagged=%d dispatched=%d neo4j_and_previous_ms=%.1f "
                          "rest_ms=%.1f",
                          len(batch), number + 1, len(parts), len(result.flagged), len(result.dispatches),
                          (t1 - t0) * 1000, (t2 - t1) * 1000)

    def _start_advance(self, outcomes: list[Outcome], submitted: list[str], now: float) -> Future[AdvanceResult]:
        """``dags.advance`` on the term's Neo4j thread (within :meth:`run`; at once outside it), so that this thread
        finishes the previous steps meanwhile."""
        if self._neo4j is not None:
            return self._neo4j.submit(self.dags.advance, self.epoch, outcomes, submitted, now)
        done: Future[AdvanceResult] = Future()
        done.set_result(self.dags.advance(self.epoch, outcomes, submitted, now))
        return done

    def _done(self, result: AdvanceResult, advanced: int, batch: list[Delivery], dead: list[tuple[Delivery, str]],
              now: float) -> Callable[[], None]:
        """What runs once a step's effects are durable and confirmed: its metrics (``advanced``: the responses and
        submissions it advanced); for the batch's last step (the ``batch`` given), the batch's dead letters and its
        acknowledgement."""
        def done() -> None:
            if batch:
                for delivery, reason in dead:
                    dead_letter(self.publisher, delivery, reason)
                assert self.consumer is not None, "process() runs within run(), which opened the consumer"
                self.consumer.ack_through(batch[-1].tag)
            self._count(result, advanced, len(dead) if batch else 0, now)
        return done

    def sweep(self) -> None:
        """Delete the Outbox nodes of batches MariaDB has, write those older than ``submit_grace_s`` (a cancel that
        died halfway); complete submits that died halfway (``repair_submits``),
        dispatch retries whose backoff passed and re-dispatch tasks whose response is overdue (each bounded); prune
        old ``applied_batches`` rows, a bounded DELETE of its own."""
        self._next_sweep = time.monotonic() + self.cfg.sweep_interval_s
        if not self.acting():
            return
        self._flush()
        if self._settled:
            self.dags.forget_outbox(self._settled)
            self._settled = []
        now = time.time()
        self._read_pools()
        self._observe_pools(now)
        self._write_outbox(before=now - self.cfg.submit_grace_s)
        self.records.prune_applied_batches(limit=self.cfg.batch_size * 5)
        if self.repair_submits is not None:  # first: the roots of the DAGs it builds are due work
            self.repair_submits(self.epoch, now)
        due = self.dags.due_work(self.epoch, now, self.cfg.task_timeout_grace_s, limit=self.cfg.batch_size * 5,
                                 overdue=self._queues_drained())
        if due.dispatches:
            self._finish(self._commit(due, now))

    def _read_pools(self) -> None:
        """Hand the bounded pools' slots, as MariaDB has them now, to the DAG store, which enforces them at every
        dispatch from now on (a pool whose row went is unbounded again)."""
        limits = self.pools.limits() if self.pools is not None else {}
        if limits != self._limits and (limits or self._limits):
            log.info("leader: epoch=%d concurrency pools %s", self.epoch,
                     ", ".join(f"{name}={slots}" for name, slots in sorted(limits.items())) or "none")
        self.dags.pools = self._limits = limits

    def _observe_pools(self, now: float) -> None:
        """The pools' gauges: slots, tasks dispatched, ready tasks held (one read, bounded pools only)."""
        limits = self.dags.pools
        gauges = (metrics.POOL_SLOTS, metrics.POOL_IN_USE, metrics.POOL_WAITING)
        if self._gauged != set(limits):  # a pool's limit was lifted: its series go
            for gauge in gauges:
                gauge.clear()
            self._gauged = set(limits)
        if not limits:
            return
        usage = self.dags.pool_usage(sorted(limits), now)
        for name, slots in limits.items():
            metrics.POOL_SLOTS.labels(name).set(slots)
            metrics.POOL_IN_USE.labels(name).set(usage.get(name, {}).get("in_use", 0))
            metrics.POOL_WAITING.labels(name).set(usage.get(name, {}).get("waiting", 0))

    def _queues_drained(self) -> bool:
        """Whether an overdue attempt can only be lost or stuck with a worker: no more than a batch waits in
        ``haorch.requests`` (its request may be there) or ``haorch.responses`` (its answer may be). While a backlog
        waits, re-sending "overdue" attempts only feeds it duplicates (each one answered and advanced again)."""
        if self.waiting is None:
            return True
        return all(self.waiting(queue) <= self.cfg.batch_size for queue in (REQUESTS, RESPONSES))

    def _count(self, result: AdvanceResult, size: int, dead: int, now: float) -> None:
        if "first_advance" not in self.clock.marks and (result.flagged or result.dispatches):
            self.clock.mark("first_advance", now)
        self.advanced += len(result.flagged)
        metrics.BATCH_SIZE.observe(size)
        for f in result.flagged:
            metrics.TASKS.labels(f["kind"], "succeeded").inc()
            if f.get("dispatched_at"):
                metrics.TASK_LATENCY.observe(max(0.0, now - f["dispatched_at"]))
        for f in result.failed:
            metrics.TASKS.labels(f["kind"], "failed").inc()
        for r in result.retries:
            metrics.TASKS.labels(r["kind"], "retried").inc()
        if result.duplicates:
            metrics.DUPLICATE_RESPONSES.inc(len(result.duplicates))
        if dead:
            metrics.DEAD_LETTERS.inc(dead)


class _FlushingConsumer:
    """The term's consumer as :func:`handle_isolated` sees it: an ack (cumulative) first finishes the earlier
    batches whose confirms are still awaited, so that it never covers a delivery whose effects are not durable."""

    def __init__(self, term: LeaderTerm, consumer: Consumer) -> None:
        self.term = term
        self.consumer = consumer

    def ack_through(self, tag: int) -> None:
        self.term._flush()  # noqa: SLF001 - the term's own helper
        self.consumer.ack_through(tag)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)
