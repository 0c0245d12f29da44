"""One term of leadership: take over (fence, rescan, reconcile, re-dispatch), then advance DAGs batch by batch.

Per batch (docs/ARCHITECTURE.md, "The leader loop")::

    consume responses + submissions  →  Neo4j tx (fence, flag, find ready)  →  MariaDB tx (fence, transitions)
    →  publish ready tasks (persistent, confirmed)  →  ack the batch

Nothing is acknowledged before its effects are durable, so a leader that dies anywhere in this sequence
leaves the batch in the queue for the next one; the next leader's Neo4j check (``status``/``attempt``) turns the
replays into counted duplicates. A :class:`FencedError` from either store ends the term at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from node import metrics
from node.errors import MalformedMessage
from node.leader.ports import Dags, Records
from node.model.advance import AdvanceResult, Dispatch, Outcome
from node.model.messages import SubmissionNotice, TaskRequest, TaskResponse
from node.model.states import REDISPATCHED, TERMINAL_EXPERIMENT_STATES, TaskStatus
from node.stores.ports import Consumer, Publisher
from node.stores.queues import REQUESTS, RESPONSES, SUBMISSIONS
from node.stores.rabbit import Delivery, dead_letter

log = logging.getLogger(__name__)


@dataclass
class PhaseClock:
    """Wall-clock timestamps of a takeover's phases, for the failover histogram and leader_terms.

    Marks, in order: ``last_seen`` (the previous leader's last fenced write: its last sign of life), ``won``
    (this node won the election lock), ``elected`` (its new epoch is taken), ``fence``, ``rescan``,
    ``redispatch``, ``first_advance``. Each phase lasts from the previous mark to its own and is named as in
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


def _transitions_for(result: AdvanceResult) -> list[tuple]:
    """Transition rows ``(experiment_id, task, from, to, attempt, detail)`` of one batch."""
    S = TaskStatus
    rows: list[tuple] = []
    rows += [(f["experiment_id"], f["name"], S.DISPATCHED, S.SUCCEEDED, f["attempt"], None) for f in result.flagged]
    rows += [(r["experiment_id"], r["name"], S.DISPATCHED, S.RETRY_WAIT, r["attempt"], (r["error"] or "")[:255])
             for r in result.retries]
    rows += [(f["experiment_id"], f["name"], S.DISPATCHED, S.FAILED, f["attempt"], (f["error"] or "")[:255])
             for f in result.failed]
    rows += [(c["experiment_id"], c["name"], None, S.CANCELLED, c["attempt"], None) for c in result.cancelled]
    rows += [(d.experiment_id, d.name, None, REDISPATCHED if d.redispatch else S.DISPATCHED, d.attempt, None)
             for d in result.dispatches]
    rows += [(exp, None, None, state, 0, None) for exp, state in result.experiments.items()]
    return rows


class LeaderTerm:
    """Acts as leader for one epoch, on the caller's thread, while ``acting()`` stays true.

    Its stores and queues are given (the replica passes Neo4j, MariaDB and RabbitMQ; unit tests in-memory
    fakes): ``open_consumer()`` opens the consumer of :attr:`QUEUES` when the loop starts, ``fence_guard(epoch)``
    wraps the Neo4j fence raise (it terminates an older leader's transaction that blocks it).
    ``ledger_progress`` maps (experiment_id, task, attempt) to the start time of an unfinished execution, so
    that the takeover does not re-dispatch work a live worker is doing."""

    QUEUES = (RESPONSES, SUBMISSIONS)

    def __init__(self, cfg, node_id: str, epoch: int, *, dags: Dags, records: Records,
                 publisher: Publisher, open_consumer: Callable[[], Consumer],
                 fence_guard: Callable[[int], AbstractContextManager[Any]], acting: Callable[[], bool],
                 clock: PhaseClock,
                 ledger_progress: Callable[[list[tuple[str, str, int]]], dict] | None = None) -> None:
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
        self.consumer: Consumer | None = None
        self.advanced = 0
        self._next_sweep = 0.0

    # --- takeover ----------------------------------------------------------------------------------------
    def take_over(self) -> None:
        """Raise both fences, rescan Neo4j, reconcile with the ledger and re-dispatch what was lost."""
        self.records.raise_fence(self.epoch, self.node_id, self.clock.marks.get("elected", time.time()))
        with self.fence_guard(self.epoch):  # an older leader frozen mid-transaction may hold the lock
            self.dags.raise_fence(self.epoch, self.node_id)
        self.clock.mark("fence")
        found = self.dags.rescan(self.epoch, time.time())
        metrics.RESCAN_TASKS.inc(len(found))
        self.clock.mark("rescan")
        now = time.time()
        candidates = [t for t in found if t["status"] in (TaskStatus.PENDING, TaskStatus.DISPATCHED)]
        in_flight = self._in_flight(candidates, now)
        keys = [t["key"] for t in candidates if t["key"] not in in_flight]
        result = self.dags.mark_dispatched(self.epoch, keys, now) if keys else AdvanceResult()
        self.records.write_batch(self.epoch, self.node_id, _transitions_for(result), result.experiments, now)
        self._publish(result.dispatches)
        self.clock.mark("redispatch")
        log.info("leader: takeover epoch=%d rescanned=%d redispatched=%d in_flight=%d",
                 self.epoch, len(found), len(result.dispatches), len(in_flight))

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
        try:
            while self.acting():
                batch = self.consumer.next_batch(self.cfg.batch_size, max_wait_s=0.05,
                                                 linger_s=self.cfg.batch_wait_ms / 1000)
                if batch:
                    self.process(batch)
                if time.monotonic() >= self._next_sweep:
                    self.sweep()
        finally:
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
        """Advance the DAGs for one batch of deliveries; ack them only once every effect is durable."""
        outcomes: list[Outcome] = []
        submitted: list[str] = []
        dead: list[tuple[Delivery, str]] = []
        by_key: dict[str, Delivery] = {}
        for d in batch:
            try:
                if d.queue == SUBMISSIONS:
                    submitted.append(SubmissionNotice.decode(d.body).experiment_id)
                else:
                    r = TaskResponse.decode(d.body)
                    key = f"{r.experiment_id}/{r.task}"
                    outcomes.append(Outcome(key, r.attempt, r.outcome == "success", r.error))
                    by_key[key] = d
            except MalformedMessage as exc:
                dead.append((d, exc.reason))
        now = time.time()
        if not self.acting():
            return
        t0 = time.perf_counter()
        result = self.dags.advance(self.epoch, outcomes, submitted, now)
        t1 = time.perf_counter()
        dead += [(by_key[key], f"response for unknown task {key}") for key in result.unknown]
        self.records.write_batch(self.epoch, self.node_id, _transitions_for(result), result.experiments, now)
        if result.duplicates:
            self._repair_duplicates(result.duplicates)
        if not self.acting():
            return
        self._publish(result.dispatches)
        for delivery, reason in dead:
            dead_letter(self.publisher, delivery, reason)
        assert self.consumer is not None, "process() runs within run(), which opened the consumer"
        self.consumer.ack_through(batch[-1].tag)
        self._count(result, len(batch), len(dead), now)
        if log.isEnabledFor(logging.DEBUG):
            t2 = time.perf_counter()
            log.debug("leader: batch size=%d flagged=%d dispatched=%d neo4j_ms=%.1f rest_ms=%.1f", len(batch),
                      len(result.flagged), len(result.dispatches), (t1 - t0) * 1000, (t2 - t1) * 1000)

    def _repair_duplicates(self, keys: list[str]) -> None:
        """A duplicate of a flagged task may mean the previous leader died between its Neo4j and MariaDB
        commits: write the SUCCEEDED transition it could not."""
        pairs = [(experiment_id, task) for experiment_id, task in (k.split("/", 1) for k in keys)]
        missing = self.records.missing_successes(pairs)
        if not missing:
            return
        flagged = {(t["experiment_id"], t["name"]) for exp in {m[0] for m in missing}
                   for t in [{**x, "experiment_id": exp} for x in self.dags.experiment_tasks(exp)] if t["executed"]}
        rows = [(e, t, TaskStatus.DISPATCHED, TaskStatus.SUCCEEDED, 0, "recorded on takeover")
                for e, t in missing if (e, t) in flagged]
        states = {e: s for e, s in self.dags.experiment_states(sorted({m[0] for m in missing})).items()
                  if s in TERMINAL_EXPERIMENT_STATES}
        if states:  # only what MariaDB lacks: a late response must not rewrite a finished experiment's row
            recorded = self.records.experiment_states(list(states))
            states = {e: s for e, s in states.items() if recorded.get(e) != s}
        if rows or states:
            self.records.write_batch(self.epoch, self.node_id, rows, states, time.time())
            log.warning("leader: repaired %d transitions lost by a previous leader", len(rows))

    def sweep(self) -> None:
        """Dispatch retries whose backoff passed and re-dispatch tasks whose response is overdue."""
        self._next_sweep = time.monotonic() + self.cfg.sweep_interval_s
        if not self.acting():
            return
        now = time.time()
        due = self.dags.due_work(self.epoch, now, self.cfg.task_timeout_grace_s, limit=self.cfg.batch_size * 5)
        if not due.dispatches:
            return
        self.records.write_batch(self.epoch, self.node_id, _transitions_for(due), due.experiments, now)
        if self.acting():
            self._publish(due.dispatches)

    def _publish(self, dispatches: list[Dispatch]) -> None:
        if not dispatches:
            return
        now = time.time()
        self.publisher.publish_batch(REQUESTS, (
            TaskRequest.wire_from_static(d.request, d.attempt, self.epoch, now) for d in dispatches))

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
