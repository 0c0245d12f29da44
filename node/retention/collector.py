"""One gc step, and the leader's loop of them on a thread of its own.

A step (:meth:`Collector.step`), under the caller's epoch:

1. the cutoffs: each type's ``retention_days`` (its latest template version) else ``cfg.retention_days``;
2. up to ``gc_batch`` candidates from MariaDB: terminal, finished before their type's cutoff, oldest first;
3. with ``archive_dir`` set: their rows (experiment, transition log, ledger) and their Neo4j subgraph, appended to
   the day's gzip JSON lines file and fsynced;
4. Neo4j: ONE fenced transaction deletes the subgraphs, re-checking each under the Fence lock (still terminal and
   past its cutoff, no write of it missing from MariaDB): one retried meanwhile is kept;
5. MariaDB: ONE fenced transaction deletes the rows (experiment, transitions, ledger) of those deleted in step 4 and
   of those that had no Experiment node any more, re-checking each is still terminal and past its cutoff.

A crash (or a :class:`FencedError`: a deposed leader) at each point: before 3 or during it, nothing is deleted (a
member cut mid-write is truncated by the next writer); after 3, the next step archives the same experiments
again (readers keep the last record); between 4 and 5, the subgraphs are gone and the rows remain: the next step
finds them again as candidates, Neo4j has nothing left of them (``absent``), and step 5 deletes the rows; after 5,
done (only ``haorch gc``'s audit row may be missing). Every step is idempotent, so the leader's loop, a new
leader's and ``haorch gc`` may overlap: each experiment is deleted once, in each store, whoever does it.

    collector = Collector(cfg, records, purge, node_id="node-1")
    result = collector.step(epoch)               # StepResult(found, deleted, kept, archived)
    collector.plan()                             # what would go, per type (``haorch gc --dry-run``)
    with Background(cfg, "node-1", epoch, driver, acting, ready):   # the leader's loop, one per term
        ...
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from neo4j import Driver

from node import failpoints, metrics
from node.config import Config
from node.errors import DependencyError, FencedError
from node.retention.archive import Archive
from node.retention.policy import Cutoffs, Policy
from node.stores.graph_record import GraphRecord
from node.stores.purge import Purge
from node.stores.records import Records

log = logging.getLogger(__name__)

BETWEEN_STORES = "gc.between_stores"  # failpoint: after the Neo4j delete, before the MariaDB delete
MIN_YIELD_S = 0.05  # between full steps the loop sleeps at least this, and as long as the step took
CATCH_UP_INTERVALS = 10.0  # behind by more than this many gc intervals: the loop yields MIN_YIELD_S only
TERMS_EVERY_S = 60.0  # the loop prunes leader_terms this often
TERMS_LIMIT = 1000  # leader_terms rows deleted at most per prune


@dataclass
class StepResult:
    """What one step did: candidates ``found``, experiments ``deleted`` (from MariaDB, i.e. completely), ``kept``
    (changed meanwhile: retried, or a write MariaDB does not have yet) and ``archived`` records."""

    found: int = 0
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    archived: int = 0
    seconds: float = 0.0
    lag_s: float = 0.0  # how long ago the oldest candidate passed its cutoff: how far retention is behind
    phases: dict[str, float] = field(default_factory=dict)  # seconds by phase: candidates, archive, neo4j, mariadb

    def to_dict(self) -> dict[str, Any]:
        return {"found": self.found, "deleted": len(self.deleted), "kept": len(self.kept),
                "archived": self.archived, "seconds": round(self.seconds, 3)}


class Collector:
    """Runs gc steps for ``node_id`` on the given stores (see the module docstring)."""

    def __init__(self, cfg: Config, records: Records, purge: Purge, node_id: str) -> None:
        self.cfg = cfg
        self.records = records
        self.purge = purge
        self.node_id = node_id
        self.archive = Archive(Path(cfg.archive_dir)) if cfg.archive_dir else None

    def cutoffs(self, now: float) -> Cutoffs:
        return Policy.from_definitions(self.cfg.retention_days, self.records.latest_definitions()).cutoffs(now)

    def plan(self, now: float | None = None) -> list[dict[str, Any]]:
        """Per type, what a gc at ``now`` would delete: ``{type, count, oldest_finished_at, retention_days}``."""
        now = time.time() if now is None else now
        policy = Policy.from_definitions(self.cfg.retention_days, self.records.latest_definitions())
        cutoffs = policy.cutoffs(now)
        if not cutoffs.any:
            return []
        return [{**row, "retention_days": policy.days(row["type"])}
                for row in self.records.gc_summary(cutoffs.default, cutoffs.by_type)]

    def step(self, epoch: int, limit: int | None = None, now: float | None = None) -> StepResult:
        """One step of up to ``limit`` (default ``gc_batch``) experiments under ``epoch``; FencedError if a newer
        epoch holds either fence."""
        began = time.monotonic()
        now = time.time() if now is None else now
        cutoffs = self.cutoffs(now)
        if not cutoffs.any:
            return StepResult()
        found = self.records.gc_candidates(cutoffs.default, cutoffs.by_type, limit or self.cfg.gc_batch)
        result = StepResult(found=len(found), lag_s=max((r["cutoff"] - r["finished_at"] for r in found), default=0.0))
        metrics.GC_LAG_SECONDS.set(result.lag_s)
        if not found:
            return result
        mark = began

        def lap(phase: str) -> None:
            nonlocal mark
            lapped = time.monotonic()
            result.phases[phase] = lapped - mark
            mark = lapped

        lap("candidates")
        due = {r["experiment_id"]: r["cutoff"] for r in found}
        if self.archive is not None:
            result.archived = self._archive(list(due), epoch, now)
            lap("archive")
        self.purge.generation = GraphRecord(self.records).generation()
        purged = self.purge.delete(epoch, due, now)
        lap("neo4j")
        failpoints.hit(self.cfg, self.node_id, BETWEEN_STORES)
        result.kept = purged.kept
        result.deleted = self.records.delete_experiments(
            epoch, {i: due[i] for i in purged.deleted + purged.absent})
        lap("mariadb")
        result.seconds = time.monotonic() - began
        metrics.GC_DELETED.inc(len(result.deleted))
        metrics.GC_STEP_SECONDS.observe(result.seconds)
        return result

    def _archive(self, ids: list[str], epoch: int, now: float) -> int:
        """Append the full record of each of ``ids`` to the archive (durable when this returns); how many."""
        assert self.archive is not None, "called only with an archive"
        rows = self.records.archive_rows(ids)
        graphs = self.purge.graphs(ids)
        records = [{"experiment_id": i, "archived_at": now, "epoch": epoch, "node_id": self.node_id, **rows[i],
                    "graph": graphs.get(i)} for i in ids if i in rows]
        if records:
            self.archive.append(records, now)
        return len(records)

    def prune_terms(self) -> int:
        """Delete the oldest ``leader_terms`` rows beyond ``keep_leader_terms`` (at most TERMS_LIMIT)."""
        return self.records.prune_leader_terms(self.cfg.keep_leader_terms, TERMS_LIMIT)


@dataclass
class Run:
    """What :func:`collect` did, summed over its steps."""

    steps: int = 0
    found: int = 0
    deleted: int = 0
    kept: int = 0
    archived: int = 0
    leader_terms_pruned: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "found": self.found, "deleted": self.deleted, "kept": self.kept,
                "archived": self.archived, "leader_terms_pruned": self.leader_terms_pruned,
                "seconds": round(self.seconds, 3)}


FENCE_RETRIES = 3  # a by-hand run whose epoch was raised meanwhile reads it again this many times in a row


def collect(collector: Collector, limit: int | None = None,
            progress: Callable[[Run], None] = lambda _run: None) -> Run:
    """Steps until nothing past retention is left (or ``limit`` experiments are deleted, or a step deletes
    nothing), each under the epoch the fence holds when it starts: what ``haorch gc`` does by hand. A step fenced
    because a leader raised the epoch meanwhile is run again under the new one (FENCE_RETRIES times in a row);
    ``progress`` is called after each step. Then ``leader_terms`` is pruned too."""
    began = time.monotonic()
    run = Run()
    fenced = 0
    while limit is None or run.deleted < limit:
        size = collector.cfg.gc_batch if limit is None else min(collector.cfg.gc_batch, limit - run.deleted)
        try:
            result = collector.step(collector.records.fence_epoch(), limit=size)
        except FencedError:
            fenced += 1
            if fenced > FENCE_RETRIES:
                raise
            continue
        fenced = 0
        run.steps += 1
        run.found += result.found
        run.deleted += len(result.deleted)
        run.kept += len(result.kept)
        run.archived += result.archived
        run.seconds = time.monotonic() - began
        progress(run)
        if result.found < size or not result.deleted:
            break
    run.leader_terms_pruned = collector.prune_terms()
    run.seconds = time.monotonic() - began
    return run


class Background:
    """The leader's gc loop for one term, on a daemon thread with its own MariaDB connection (the Neo4j driver is
    shared; sessions are per call). It waits for ``ready()`` (the term's fences are raised), then runs a step every
    ``gc_interval_s``, or sooner while steps find full batches and delete (:func:`pause`), and prunes
    ``leader_terms`` every TERMS_EVERY_S; it stops when ``acting()`` turns false, the ``with`` block ends, or a step
    is fenced (a newer epoch leads: nothing of that step was deleted in the store that refused it). Any other
    failure is logged and the loop goes on after an interval."""

    def __init__(self, cfg: Config, node_id: str, epoch: int, driver: Driver, acting: Callable[[], bool],
                 ready: Callable[[], bool]) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.epoch = epoch
        self.driver = driver
        self.acting = acting
        self.ready = ready
        self.steps = 0
        self.deleted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"gc-{epoch}", daemon=True)

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _loop(self) -> None:
        records = Records(self.cfg, retry_for_s=10.0)
        collector = Collector(self.cfg, records, Purge(self.driver, self.cfg.neo4j_tx_timeout_s), self.node_id)
        next_terms = 0.0
        delay = self.cfg.gc_interval_s
        try:
            while not self._stop.wait(delay) and self.acting():
                if not self.ready():
                    delay = MIN_YIELD_S * 4
                    continue
                delay = self.cfg.gc_interval_s
                try:
                    if time.monotonic() >= next_terms:
                        next_terms = time.monotonic() + TERMS_EVERY_S
                        pruned = collector.prune_terms()
                        if pruned:
                            log.info("gc: pruned %d leader_terms row(s) (keeping %d)", pruned,
                                     self.cfg.keep_leader_terms)
                    result = collector.step(self.epoch)
                except FencedError as exc:
                    log.warning("gc: epoch=%d fenced (%s): stopping", self.epoch, exc)
                    return
                except DependencyError as exc:
                    log.warning("gc: epoch=%d step failed (%s); again in %.1f s", self.epoch, exc, delay)
                    continue
                except Exception:  # a bug must not end the leader's term; logged with its trace
                    log.exception("gc: epoch=%d step failed unexpectedly; again in %.1f s", self.epoch, delay)
                    continue
                self.steps += 1
                self.deleted += len(result.deleted)
                if result.deleted or result.kept:
                    log.info("gc: epoch=%d deleted=%d kept=%d archived=%d lag_s=%.0f ms=%.0f (%s)", self.epoch,
                             len(result.deleted), len(result.kept), result.archived, result.lag_s,
                             result.seconds * 1000, " ".join(f"{k}={v * 1000:.0f}" for k, v in result.phases.items()))
                delay = pause(result, self.cfg.gc_batch, self.cfg.gc_interval_s)
        finally:
            metrics.GC_LAG_SECONDS.set(0)  # a standby's gauge must not keep its last term's value
            records.close()


def pause(result: StepResult, batch: int, interval_s: float) -> float:
    """Seconds the leader's loop waits after ``result``: ``interval_s`` unless the step found a full ``batch`` and
    deleted; then as long as the step took (at least MIN_YIELD_S), so that retention takes at most about half of a
    serial client's time from the stores; but once it is more than CATCH_UP_INTERVALS intervals behind
    (``lag_s``: experiments finish faster than that pace deletes them), only MIN_YIELD_S, until it has caught up:
    a backlog that only grows would grow the stores without bound."""
    if result.found < batch or not result.deleted:
        return interval_s
    if result.lag_s > CATCH_UP_INTERVALS * interval_s:
        return MIN_YIELD_S
    return max(MIN_YIELD_S, result.seconds)
