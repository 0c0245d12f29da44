"""Neo4j: templates (abstract DAGs) and concrete experiment DAGs, advanced in one fenced transaction per batch.

Graph shape::

    (:Template {type, version, hash, definition})
    (:Experiment {experiment_id, type, version, state, remaining})
    (:Task {key: "<experiment>/<name>", experiment_id, name, kind, request: bytes, executed, status, attempt,
            max_attempts, waiting, epoch, dispatched_at, finished_at, ...})
    (successor:Task)-[:DEPENDS_ON]->(predecessor:Task)
    (:Outbox {id, at, epoch, node, rows})  # a leader write's transition-log rows, until MariaDB has them

``waiting`` counts predecessors not yet executed, so "ready" is ``executed = false AND waiting = 0`` — an index
seek, which makes the takeover rescan cheap. Task ``status`` and experiment ``state`` are the names of
:mod:`node.model.states`; which response does what is :func:`node.model.advance.classify`.

Every transaction that advances a DAG first writes the ``(:Fence {name: 'leader'})`` node (taking its lock) and
aborts with :class:`FencedError` if the fence holds a newer epoch than the writer's. ``cancel()`` takes the same
lock, so DAG mutations are serialized through one node: cheap (one leader, cancels are rare) and free of lost
updates without locking every task.

**The outbox.** Each leader write (``advance``, ``due_work``, ``mark_dispatched``) and each ``cancel`` also
creates, in the same transaction, an ``Outbox`` node holding the transition-log rows and experiment states of what
it changed (:func:`node.model.advance.transition_rows`); its id becomes the MariaDB batch id. So a leader that dies
between its Neo4j and MariaDB commits leaves its rows here, and the next leader writes them during its takeover,
before it advances anything, with their original time (``applied_batches`` makes the write once-only); a node
older than ``submit_grace_s`` (a cancel whose caller died before its MariaDB write) is written by the leader's
sweep. Once MariaDB has a batch, its writer deletes the node (:meth:`DagStore.forget_outbox`; the leader once per
sweep).

**Neo4j first, then MariaDB** (a leader's batch, a cancel): the decision needs the graph, and the Outbox node keeps
the rows until MariaDB has them. Neo4j is not the system of record, MariaDB is (``node/stores/graph_record.py``): if
the graph is lost too before the rows reach MariaDB (a leader killed between its commits, then Neo4j emptied), the
batch's deliveries were never acknowledged and its dispatches never published, so MariaDB and the queues hold a
consistent earlier state; ``haorch recover neo4j`` rebuilds the graph from MariaDB and the redelivered responses
advance it again.

**The generation.** ``DagStore.generation``, when set, is the generation MariaDB records for the graph (the leader
sets it for each term, submitters when they connect): every fenced transaction and every DAG creation checks that
the Fence node carries it, and raises :class:`GraphNotReady` otherwise — an emptied Neo4j (its Fence node is new, or
missing) or one ``haorch recover neo4j`` is rebuilding is never advanced, and no response is taken there for a task
that does not exist yet.

**Concurrency pools.** Each Task node carries its ``pool`` (its template's ``pool``, else its kind;
``coalesce(t.pool, t.kind)`` for a node older than pools). ``DagStore.pools``, when not empty, holds the slots of the
bounded pools (MariaDB ``pools``, :mod:`node.stores.pools`; the leader sets it each term and sweep). Every dispatch
(successors in ``_flag``, submitted roots, due roots and retries) then leaves a ready task of a bounded pool where it
is — PENDING with ``waiting = 0`` (``held_at`` set: the time it became ready) or RETRY_WAIT past its ``not_before``:
*held* — and :func:`_release` dispatches held tasks, oldest first, while the pool's count of DISPATCHED tasks is below
its slots. That count is taken in the same transaction, after the Fence lock that serializes every dispatching
transaction, so it is exact: no two leaders' or batches' counts overlap. A re-send of a DISPATCHED attempt takes no
new slot. Held is not a status of its own: it is what a ready task is while its pool is full, so the transition log,
the rebuild from MariaDB and the verifier know nothing of it; a rebuilt graph has no ``held_at`` (its held tasks go
first, by key). With no bounded pool the queries are those without pools: no extra statement, no extra predicate.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from neo4j import Driver, ManagedTransaction, Record, Session, unit_of_work
from neo4j.exceptions import ConstraintError

from node.errors import ConflictError, DependencyError, FencedError, NotFoundError, UnknownTypeError
from node.model.advance import RETRY_WRITER, AdvanceResult, Dispatch, Outcome, classify, transition_rows
from node.model.executors import KNOWN_EXECUTORS, UNDO_EXECUTORS
from node.model.messages import StaticRequest, static_request_bytes
from node.model.states import (
    LIVE_EXPERIMENT_STATES,
    OPEN_TASK_STATUSES,
    RETRYABLE_EXPERIMENT_STATES,
    TERMINAL_EXPERIMENT_STATES,
    ExperimentState,
    TaskStatus,
)
from node.model.template import Template, parse_template
from node.stores.failures import at_boundary, neo4j_boundary
from node.stores.graph_record import template_definition

log = logging.getLogger(__name__)
T = TypeVar("T")

# States go into Cypher as parameters, never spelled in a query: one query text per statement keeps Neo4j's plan
# cache hit (Neo4j would turn literals into parameters anyway, so the plans are the same).
_OPEN = list(OPEN_TASK_STATUSES)
_LIVE = list(LIVE_EXPERIMENT_STATES)

#: the ``not_before`` of a retried task held until MariaDB records its retry (never due: far beyond any clock)
RETRY_HELD = 1.0e18

# Held tasks of the bounded pools ($pools: [{name, slots}]) dispatched while slots are free, oldest ready first: a
# PENDING task since it became ready (``held_at``; none: a root whose notice was lost, or a rebuilt graph's), a
# RETRY_WAIT task since its backoff passed. Every seek is one on the (pool, status, waiting) index: the hint, because
# the planner otherwise picks the status index (every DISPATCHED task) or a scan for a pool that comes from UNWIND.
_BY_POOL = "MATCH (t:Task) USING INDEX t:Task(pool, status, waiting) WHERE t.pool = p.name AND "
_RELEASE = (
    "UNWIND $pools AS p "
    "CALL (p) { " + _BY_POOL + "t.status = $dispatched AND t.waiting IS NOT NULL RETURN count(t) AS used } "
    "WITH p, p.slots - used AS free WHERE free > 0 "
    "CALL (p, free) { "
    "  CALL (p) { " + _BY_POOL + "t.status = $pending AND t.waiting = 0 "
    "             RETURN t, coalesce(t.held_at, 0.0) AS since "
    "             UNION ALL "
    "             " + _BY_POOL + "t.status = $retry_wait AND t.waiting IS NOT NULL AND t.not_before <= $now "
    "             RETURN t, t.not_before AS since } "
    "  WITH free, t ORDER BY since, t.key "
    "  WITH free, collect(t) AS ready UNWIND ready[..free] AS t RETURN t } "
    "SET t.status = $dispatched, t.attempt = t.attempt + 1, t.dispatched_at = $now, t.epoch = $epoch ")


def _unbounded(task: str, pools: dict[str, int]) -> str:
    """A predicate (`` AND ...``) that keeps tasks of the bounded ``pools`` out of a dispatch; empty with none."""
    return f" AND NOT coalesce({task}.pool, {task}.kind) IN $bounded" if pools else ""


def _hold(task: str, pools: dict[str, int]) -> str:
    """Clauses that mark the ready ``task`` rows of the bounded ``pools`` held (from now) and keep the others."""
    if not pools:
        return ""
    return (f"WITH {task}, coalesce({task}.pool, {task}.kind) IN $bounded AS held "
            f"SET {task}.held_at = CASE WHEN held THEN coalesce({task}.held_at, $now) ELSE {task}.held_at END "
            f"WITH {task} WHERE NOT held ")


#: the clause every leader write starts with: take the Fence node's lock and mark the write (binds ``f``)
_LOCK_FENCE = "MATCH (f:Fence {name: 'leader'}) SET f.last_write_epoch = $epoch, f.last_write_at = $now "


def _dispatch_map(task: str) -> str:
    """The map of a dispatched ``task`` that :func:`_dispatch_rows` reads, for ``collect()``."""
    return (f"{{key: {task}.key, experiment_id: {task}.experiment_id, name: {task}.name, kind: {task}.kind, "
            f"request: {task}.request, attempt: {task}.attempt}}")


def _flag_clauses(pools: dict[str, int]) -> str:
    """Clauses that flag the tasks of ``flagged`` (a list bound before them) executed, dispatch each successor whose
    last waiting predecessor this was (those of the bounded ``pools`` are held instead) and complete the experiments
    with nothing left; they bind ``dispatches`` and ``completed``. A successor loses one waiting predecessor per
    flagged parent, aggregated first so that a fan-in with several parents in the batch counts right; an experiment
    loses one remaining task per flagged task of it."""
    return (
        "CALL (flagged) { UNWIND flagged AS t "
        "  SET t.executed = true, t.status = $succeeded, t.finished_at = $now, t.epoch = $epoch, "
        "      t.flags = t.flags + 1 } "
        "CALL (flagged) { UNWIND flagged AS t MATCH (s:Task)-[:DEPENDS_ON]->(t) "
        "  WITH s, count(*) AS n SET s.waiting = s.waiting - n "
        "  WITH s WHERE s.waiting = 0 AND s.status = $pending " + _hold("s", pools) +
        "  SET s.status = $dispatched, s.attempt = s.attempt + 1, s.dispatched_at = $now, s.epoch = $epoch "
        "  RETURN collect(" + _dispatch_map("s") + ") AS dispatches } "
        "CALL (flagged) { UNWIND flagged AS t WITH t.experiment_id AS id, count(*) AS n "
        "  MATCH (e:Experiment {experiment_id: id}) SET e.remaining = e.remaining - n "
        "  WITH e WHERE e.remaining = 0 AND e.state IN $live "
        "  SET e.state = $completed, e.finished_at = $now RETURN collect(e.experiment_id) AS completed } ")


# Statements that find tasks by key or experiment find them in a subquery of their own (``CALL (x) { MATCH ... }``) and
# filter after it: with the filter in the same MATCH, Neo4j 5.26 may seek ``Task(status)`` (every PENDING or DISPATCHED
# task) or scan ``Task(experiment_id)`` instead, and test each row against the key, so that one batch costs as much
# as the tasks in flight (a planner choice that follows the store's statistics: seen on a small store).
# tests/stores/test_dags_plans.py profiles each of them.

def _roots_statement(pools: dict[str, int]) -> str:
    """Lock the fence, dispatch the ready roots of the submitted experiments ``$ids`` (those of the bounded ``pools``
    are held) and start those of their experiments still QUEUED: one statement, which returns ``fence`` and
    ``generation`` for the caller to check (it raises, and the writes roll back, when they do not pass), ``roots``
    and ``started``."""
    return (_LOCK_FENCE + "WITH f "
            "CALL () { UNWIND $ids AS id CALL (id) { MATCH (t:Task {experiment_id: id}) RETURN t } "
            "  WITH t WHERE t.status = $pending AND t.waiting = 0 " + _hold("t", pools) +
            "  SET t.status = $dispatched, t.attempt = t.attempt + 1, t.dispatched_at = $now, t.epoch = $epoch "
            "  RETURN collect(" + _dispatch_map("t") + ") AS roots } "
            "CALL (roots) { UNWIND roots AS r WITH DISTINCT r.experiment_id AS id "
            "  MATCH (e:Experiment {experiment_id: id}) WHERE e.state = $queued "
            "  SET e.state = $running, e.started_at = $now RETURN collect(id) AS started } "
            "RETURN f.epoch AS fence, f.generation AS generation, roots, started")


#: cancel the open tasks of the experiments ``$ids``
_CANCEL_OPEN = ("UNWIND $ids AS id CALL (id) { MATCH (t:Task {experiment_id: id}) RETURN t } "
                "WITH t WHERE t.executed = false AND t.status IN $open "
                "SET t.status = $cancelled, t.finished_at = $now, t.epoch = $epoch "
                "RETURN t.key AS key, t.experiment_id AS experiment_id, t.name AS name, t.attempt AS attempt")


def _batch_statement(pools: dict[str, int]) -> str:
    """The leader batch's first statement (see :meth:`DagStore._apply_outcomes`): lock the fence, read the tasks of
    ``$keys``, flag the clean successes of ``$clean`` ({key, attempt}) with :func:`_flag_clauses`. (A ``Task(key)``
    hint instead of the clean tasks' subquery made the planner scan that index whole.)"""
    return (_LOCK_FENCE + "WITH f "
            "CALL () { UNWIND $keys AS k OPTIONAL MATCH (t:Task {key: k}) "
            "  RETURN collect({key: k, experiment_id: t.experiment_id, name: t.name, kind: t.kind, "
            "    status: t.status, attempt: t.attempt, "
            "    max_attempts: t.max_attempts + coalesce(t.attempt_base, 0), lost: t.lost, "
            "    dispatched_at: t.dispatched_at, timeout_s: t.timeout_s, waiting_since: t.waiting_since}) AS tasks } "
            "CALL () { UNWIND $clean AS c CALL (c) { MATCH (t:Task {key: c.key}) RETURN t } "
            "  WITH c, t WHERE t.status = $dispatched AND t.attempt = c.attempt "
            "  RETURN collect(t) AS flagged } " + _flag_clauses(pools) +
            "RETURN f.epoch AS fence, f.generation AS generation, tasks, [t IN flagged | t.key] AS flagged, "
            "dispatches, completed")


def _release(tx: ManagedTransaction, epoch: int, now: float, pools: dict[str, int],
             result: AdvanceResult) -> None:
    """Dispatch held tasks of the bounded ``pools`` into their free slots (see :data:`_RELEASE`), into ``result``;
    their experiments still QUEUED start."""
    rows = tx.run(_RELEASE + _RETURN_DISPATCH, pools=[{"name": n, "slots": s} for n, s in sorted(pools.items())],
                  now=now, epoch=epoch, pending=TaskStatus.PENDING, retry_wait=TaskStatus.RETRY_WAIT,
                  dispatched=TaskStatus.DISPATCHED)
    released = AdvanceResult(dispatches=_dispatch_rows(list(rows)))
    if not released.dispatches:
        return
    _start_experiments(tx, now, released)
    result.dispatches += released.dispatches
    for experiment_id, state in released.experiments.items():
        result.experiments.setdefault(experiment_id, state)


class GraphNotReady(DependencyError):
    """Neo4j does not hold the graph of this MariaDB: its Fence node lacks the generation MariaDB records (the store
    was emptied or replaced, or ``haorch recover neo4j`` is rebuilding it). A dependency failure: the leader retries
    its term until the graph is rebuilt; a submit says that a retry is safe."""

    def __init__(self, endpoint: str, expected: str, found: str | None) -> None:
        super().__init__("neo4j", endpoint, f"it holds no graph of generation {expected[:8]} (its generation: "
                                            f"{found[:8] if found else 'none'}); rebuild it with `haorch recover "
                                            "neo4j`, or wait for the rebuild in progress")
        self.expected = expected
        self.found = found


def _pipelined_begin(session: Session) -> AbstractContextManager[Any]:
    """Within it, the session's transactions send BEGIN with their first statement instead of waiting for BEGIN's
    answer first: one round trip less per transaction, as the driver's own ``execute_query`` does (a failed BEGIN
    then fails that statement, which the managed transaction retries). The driver (pinned) has no public switch."""
    return getattr(session, "_pipelined_begin", contextlib.nullcontext())


def create_template_nodes(tx: ManagedTransaction, template: Template, version: int, registered_at: float) -> None:
    """The Template node of ``template`` at ``version``, its TemplateTask nodes and their DEPENDS_ON edges."""
    tx.run("CREATE (t:Template {type: $type, version: $version, hash: $hash, definition: $definition, "
           "description: $description, registered_at: $now}) "
           "WITH t UNWIND $tasks AS task "
           "CREATE (t)-[:HAS]->(:TemplateTask {key: $type + ':' + $version + ':' + task.name, "
           "name: task.name, kind: task.kind, executor: task.executor, depends_on: task.depends_on})",
           type=template.type, version=version, hash=template.content_hash(),
           definition=template_definition(template), description=template.description, now=registered_at,
           tasks=[{"name": s.name, "kind": s.kind, "executor": s.executor, "depends_on": list(s.depends_on)}
                  for s in template.tasks])
    tx.run("MATCH (t:Template {type: $type, version: $version})-[:HAS]->(a:TemplateTask) "
           "UNWIND a.depends_on AS dep "
           "MATCH (t)-[:HAS]->(b:TemplateTask {name: dep}) CREATE (a)-[:DEPENDS_ON]->(b)",
           type=template.type, version=version)


def _start_experiments(tx: ManagedTransaction, now: float, result: AdvanceResult) -> None:
    """Experiments with a first dispatch in ``result`` go from QUEUED to RUNNING."""
    started = sorted({d.experiment_id for d in result.dispatches})
    if not started:
        return
    for r in tx.run("UNWIND $ids AS id MATCH (e:Experiment {experiment_id: id}) WHERE e.state = $queued "
                    "SET e.state = $running, e.started_at = $now RETURN e.experiment_id AS id", ids=started, now=now,
                    queued=ExperimentState.QUEUED, running=ExperimentState.RUNNING):
        result.experiments.setdefault(r["id"], ExperimentState.RUNNING)


def _dispatch_rows(rows: list, redispatch: bool = False, recheck: bool = False) -> list[Dispatch]:
    return [Dispatch(r["key"], r["experiment_id"], r["name"], r["kind"], r["request"], r["attempt"], redispatch,
                     recheck) for r in rows]


def undoable(dispatches: list[Dispatch]) -> list[Dispatch]:
    """Those of ``dispatches`` whose executor has an undo (``UNDO_EXECUTORS``)."""
    return [d for d in dispatches if StaticRequest.decode(d.request).executor in UNDO_EXECUTORS]


def _outbox(tx: ManagedTransaction, epoch: int, now: float, result: AdvanceResult,
            node: str | None = None) -> AdvanceResult:
    """Keep ``result``'s transition rows in an Outbox node of this transaction (none when it changed nothing),
    written by ``node`` (default: the fence's holder, i.e. the leader writing)."""
    rows = transition_rows(result)
    if rows or result.experiments:
        result.outbox_id = uuid.uuid4().hex
        tx.run("MATCH (f:Fence {name: 'leader'}) "
               "CREATE (:Outbox {id: $id, at: $now, epoch: $epoch, node: coalesce($node, f.holder), rows: $rows})",
               id=result.outbox_id, now=now, epoch=epoch, node=node,
               rows=json.dumps({"rows": rows, "states": result.experiments}, separators=(",", ":")))
    return result


_RESCAN_COLUMNS = ("key", "experiment_id", "name", "status", "attempt", "timeout_s")
_RETURN_DISPATCH = ("RETURN t.key AS key, t.experiment_id AS experiment_id, t.name AS name, t.kind AS kind, "
                    "t.request AS request, t.attempt AS attempt")


class DagStore:
    """Templates and experiment DAGs in Neo4j."""

    def __init__(self, driver: Driver, tx_timeout_s: float | None = None) -> None:
        self.driver = driver
        self.tx_timeout_s = tx_timeout_s
        self.boundary = neo4j_boundary(driver)  # every public method: driver failures leave as DependencyError
        self.generation: str | None = None  # the graph's generation in MariaDB; None: not checked
        self.pools: dict[str, int] = {}  # the bounded pools' slots (MariaDB ``pools``), set by the leader

    def _gate(self, found: str | None) -> None:
        """GraphNotReady unless the Fence node carries :attr:`generation` (when one is expected)."""
        if self.generation is not None and found != self.generation:
            raise GraphNotReady(self.boundary.endpoint, self.generation, found)

    def _fenced(self, record: Record | None, epoch: int, empty: dict[str, Any]) -> dict[str, Any]:
        """The record of a statement that began with :data:`_LOCK_FENCE` (returning ``fence`` and ``generation``), as
        a mapping; with no record (no Fence node: an emptied store, so nothing was read or written) ``empty``'s
        values. FencedError if the fence holds a newer epoch than ``epoch``, GraphNotReady if it lacks the
        generation expected: the caller's transaction, writes included, rolls back. Not ``record.data()``: it walks
        every nested value in Python (~20 ms for a batch of 200 here); the driver's values are plain already."""
        batch = dict(record.items()) if record else {"fence": 0, "generation": None, **empty}
        if batch["fence"] > epoch:
            raise FencedError("neo4j", epoch, batch["fence"])
        self._gate(batch["generation"])
        return batch

    def _lock_fence(self, tx: ManagedTransaction, epoch: int) -> None:
        """Lock the fence node and check it (:meth:`_fenced`), as every leader write does first."""
        self._fenced(tx.run(_LOCK_FENCE + "RETURN f.epoch AS fence, f.generation AS generation",
                            epoch=epoch, now=time.time()).single(), epoch, {})

    def _timed(self, work: Callable[..., T]) -> Callable[..., T]:
        """``work`` with the server-side transaction timeout, if any: the server ends a transaction that runs (or
        waits for a lock) longer, so a frozen leader cannot hold the fence lock, nor anyone wait on it, forever."""
        return work if self.tx_timeout_s is None else unit_of_work(timeout=self.tx_timeout_s)(work)

    # --- templates ---------------------------------------------------------------------------------------
    @at_boundary
    def register_template(self, template: Template) -> tuple[int, bool]:
        """Store ``template`` as a new version of its type unless identical to the latest; (version, created)."""
        digest = template.content_hash()

        def work(tx: ManagedTransaction) -> tuple[int, bool]:
            latest = tx.run("MATCH (t:Template {type: $type}) RETURN t.version AS v, t.hash AS h "
                            "ORDER BY t.version DESC LIMIT 1", type=template.type).single()
            if latest and latest["h"] == digest:
                return latest["v"], False
            version = (latest["v"] if latest else 0) + 1
            create_template_nodes(tx, template, version, time.time())
            return version, True

        with self.driver.session() as session:
            return session.execute_write(work)

    @at_boundary
    def get_template(self, type_: str, version: int | None = None) -> tuple[Template, int]:
        """The latest (or given) version of a type; UnknownTypeError if it is not registered."""
        query = ("MATCH (t:Template {type: $type}) WHERE $version IS NULL OR t.version = $version "
                 "RETURN t.definition AS d, t.version AS v ORDER BY t.version DESC LIMIT 1")
        records, _, _ = self.driver.execute_query(query, type=type_, version=version)
        if not records:
            known = ", ".join(t["type"] for t in self.list_templates()) or "none"
            what = f"experiment type {type_!r}" + (f" version {version}" if version else "")
            raise UnknownTypeError(f"unknown {what} (registered: {known})")
        return parse_template(json.loads(records[0]["d"]), KNOWN_EXECUTORS), records[0]["v"]

    @at_boundary
    def list_templates(self) -> list[dict[str, Any]]:
        """Latest version of every type: type, version, description, tasks."""
        records, _, _ = self.driver.execute_query(
            "MATCH (t:Template) WITH t.type AS type, max(t.version) AS v "
            "MATCH (t:Template {type: type, version: v}) "
            "RETURN type, v AS version, t.description AS description, "
            "size([(t)-[:HAS]->(x) | x]) AS tasks ORDER BY type")
        return [dict(r) for r in records]

    # --- experiments -------------------------------------------------------------------------------------
    def create_experiment(self, experiment_id: str, template: Template, version: int,
                          params: dict[str, Any]) -> bool:
        """Create the concrete DAG in one transaction; False if the experiment already exists (idempotent)."""
        return bool(self.create_experiments(template, version, [(experiment_id, params)]))

    @at_boundary
    def create_experiments(self, template: Template, version: int,
                           experiments: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """Create the DAGs of several experiments of one type in ONE transaction (UNWIND); returns the ids
        that were new. An existing id of another type is a ConflictError; of the same type, skipped."""
        preds = template.predecessors()
        specs = [(s, len(preds[s.name])) for s in template.tasks]
        edges = [(name, dep) for name, deps in preds.items() for dep in deps]
        defaults = template.param_defaults()

        def work(tx: ManagedTransaction) -> list[str]:
            ids = [experiment_id for experiment_id, _ in experiments]
            found = tx.run("OPTIONAL MATCH (f:Fence {name: 'leader'}) "
                           "CALL () { UNWIND $ids AS id MATCH (e:Experiment {experiment_id: id}) "
                           "  RETURN collect([id, e.type]) AS existing } "
                           "RETURN f.generation AS g, existing", ids=ids).single(strict=True)
            self._gate(found["g"])
            existing = dict(found["existing"])
            for experiment_id, type_ in existing.items():
                if type_ != template.type:
                    raise ConflictError(f"experiment {experiment_id!r} exists with type {type_!r}, "
                                        f"not {template.type!r}")
            new = [(i, p) for i, p in experiments if i not in existing]
            if not new:
                return []
            rows = [{"id": experiment_id, "tasks": [
                {"key": f"{experiment_id}/{spec.name}", "name": spec.name, "kind": spec.kind, "pool": spec.pool,
                 "request": static_request_bytes(experiment_id, spec, params, defaults), "waiting": waiting,
                 "max_attempts": spec.retry.max_attempts, "backoff_s": spec.retry.backoff_s,
                 "backoff_factor": spec.retry.backoff_factor, "max_backoff_s": spec.retry.max_backoff_s,
                 "timeout_s": spec.timeout_s} for spec, waiting in specs]} for experiment_id, params in new]
            tx.run("UNWIND $rows AS row "
                   "CREATE (e:Experiment {experiment_id: row.id, type: $type, version: $version, state: $queued, "
                   "remaining: $n, created_at: $now}) "
                   "WITH row UNWIND row.tasks AS t "
                   "CREATE (:Task {key: t.key, experiment_id: row.id, name: t.name, kind: t.kind, pool: t.pool, "
                   "request: t.request, "
                   "executed: false, status: $pending, attempt: 0, waiting: t.waiting, "
                   "max_attempts: t.max_attempts, backoff_s: t.backoff_s, backoff_factor: t.backoff_factor, "
                   "max_backoff_s: t.max_backoff_s, timeout_s: t.timeout_s, epoch: 0, flags: 0}) "
                   "WITH count(*) AS created "
                   "CALL () { UNWIND $ids AS id UNWIND $edges AS e "
                   "  MATCH (a:Task {key: id + '/' + e[0]}), (b:Task {key: id + '/' + e[1]}) "
                   "  CREATE (a)-[:DEPENDS_ON]->(b) }",
                   rows=rows, type=template.type, version=version, n=len(specs), now=time.time(),
                   queued=ExperimentState.QUEUED, pending=TaskStatus.PENDING, ids=[i for i, _ in new],
                   edges=edges).consume()
            return [i for i, _ in new]

        with self.driver.session() as session, _pipelined_begin(session):
            try:
                return session.execute_write(work)
            except ConstraintError:
                # a concurrent submit of one of these ids committed first: run again, which now sees it
                # (and skips it, or raises ConflictError if that submit was of another type)
                return session.execute_write(work)

    @at_boundary
    def fail_unbuilt(self, epoch: int, failed: list[tuple[str, str, int, str]], now: float) -> None:
        """Record experiments whose DAG cannot be built, ``(experiment_id, type, version, reason)``, as FAILED
        Experiment nodes without tasks (fenced; an id that has a node already is left as it is)."""

        def work(tx: ManagedTransaction) -> None:
            self._lock_fence(tx, epoch)
            tx.run("UNWIND $rows AS row MERGE (e:Experiment {experiment_id: row[0]}) "
                   "ON CREATE SET e.type = row[1], e.version = row[2], e.state = $failed, e.remaining = 0, "
                   "e.created_at = $now, e.finished_at = $now, e.reason = row[3]",
                   rows=[list(row) for row in failed], failed=ExperimentState.FAILED, now=now)

        with self.driver.session() as session:
            session.execute_write(work)

    @at_boundary
    def undo_dispatches(self, experiment_id: str) -> list[Dispatch]:
        """The tasks of an experiment that were ever dispatched and whose executor has an undo, to reverse."""
        records, _, _ = self.driver.execute_query(
            "MATCH (t:Task {experiment_id: $id}) WHERE coalesce(t.attempt, 0) >= 1 " + _RETURN_DISPATCH,
            id=experiment_id)
        return undoable(_dispatch_rows(list(records)))

    @at_boundary
    def experiment_tasks(self, experiment_id: str) -> list[dict[str, Any]]:
        """Every task of an experiment with its state, attempts and timings, in a stable order; ``max_attempts`` is the
        attempt it may reach (after a retry: the attempts before it plus the template's); ``waiting_on``: what a
        dispatched attempt waits on, or for a ready task held by its full pool, that pool."""
        records, _, _ = self.driver.execute_query(
            "MATCH (t:Task {experiment_id: $id}) OPTIONAL MATCH (t)-[:DEPENDS_ON]->(p:Task) "
            "WITH t, collect(p.name) AS deps "
            "RETURN t.name AS name, t.kind AS kind, t.status AS status, t.executed AS executed, "
            "t.attempt AS attempt, t.max_attempts + coalesce(t.attempt_base, 0) AS max_attempts, "
            "t.dispatched_at AS dispatched_at, "
            "t.finished_at AS finished_at, t.last_error AS last_error, t.epoch AS epoch, deps AS depends_on, "
            "CASE WHEN t.status = $dispatched THEN t.waiting_on "
            "     WHEN t.status = $pending AND t.waiting = 0 AND t.held_at IS NOT NULL "
            "     THEN 'a slot of pool ' + coalesce(t.pool, t.kind) END AS waiting_on "
            "ORDER BY coalesce(t.dispatched_at, 1e18), t.name", id=experiment_id, dispatched=TaskStatus.DISPATCHED,
            pending=TaskStatus.PENDING)
        return [dict(r) for r in records]

    # --- fencing -----------------------------------------------------------------------------------------
    @at_boundary
    def raise_fence(self, epoch: int, node_id: str) -> None:
        """Set the Neo4j fence to ``epoch`` (a new leader's first write); FencedError if it is already higher."""

        def work(tx: ManagedTransaction) -> None:
            record = tx.run("MERGE (f:Fence {name: 'leader'}) ON CREATE SET f.epoch = 0 "
                            "SET f.last_write_epoch = $epoch RETURN f.epoch AS fence, f.generation AS generation",
                            epoch=epoch).single(strict=True)
            if record["fence"] > epoch:
                raise FencedError("neo4j", epoch, record["fence"])
            self._gate(record["generation"])
            tx.run("MATCH (f:Fence {name: 'leader'}) SET f.epoch = $epoch, f.holder = $node, f.raised_at = $now",
                   epoch=epoch, node=node_id, now=time.time())

        with self.driver.session() as session:
            session.execute_write(self._timed(work))

    @at_boundary
    def fence_epoch(self) -> int:
        records, _, _ = self.driver.execute_query("MATCH (f:Fence {name: 'leader'}) RETURN f.epoch AS e")
        return records[0]["e"] if records else 0

    @at_boundary
    def fence_marks(self) -> dict[str, Any] | None:
        """The fence's ``holder`` and its last write (``at``) and raise (``raised``) times; None before any raise."""
        records, _, _ = self.driver.execute_query(
            "MATCH (f:Fence {name: 'leader'}) RETURN f.last_write_at AS at, f.raised_at AS raised, f.holder AS holder")
        return dict(records[0]) if records else None

    # --- the leader's batch ------------------------------------------------------------------------------
    @at_boundary
    def advance(self, epoch: int, outcomes: list[Outcome], submitted: list[str], now: float) -> AdvanceResult:
        """Apply a batch of outcomes and new submissions in ONE fenced transaction; returns what changed."""
        with self.driver.session() as session, _pipelined_begin(session):
            return session.execute_write(self._timed(self._advance), epoch, outcomes, submitted, now)

    def _advance(self, tx: ManagedTransaction, epoch: int, outcomes: list[Outcome], submitted: list[str],
                 now: float) -> AdvanceResult:
        result = AdvanceResult()
        pools = dict(self.pools)  # one view of the limits for the whole transaction
        if outcomes:
            self._apply_outcomes(tx, epoch, outcomes, now, result, pools)
        elif not submitted:
            self._lock_fence(tx, epoch)
        if submitted:
            self._dispatch_roots(tx, epoch, submitted, now, result, pools)
        if pools:  # slots this batch freed, tasks it made ready: one release for every bounded pool
            _release(tx, epoch, now, pools, result)
        return _outbox(tx, epoch, now, result)

    def _apply_outcomes(self, tx: ManagedTransaction, epoch: int, outcomes: list[Outcome], now: float,
                        result: AdvanceResult, pools: dict[str, int]) -> None:
        # One statement locks the fence (which also serializes this transaction with cancel(), since both write the
        # Fence node first), reads the tasks as they were and flags the *clean* successes: a key answered once in the
        # batch, a success that does not wait. classify() then decides every outcome from what was read; a clean
        # success it accepts is exactly one the statement flagged (status DISPATCHED, same attempt), anything else
        # (a repeated key, a wait, a failure) is written by the statements after it. A fenced or ungated batch
        # raises, and the transaction, flags included, rolls back.
        answered = Counter(o.key for o in outcomes)
        clean = [{"key": o.key, "attempt": o.attempt} for o in outcomes
                 if answered[o.key] == 1 and o.success and o.recheck_after_s is None]
        record = tx.run(_batch_statement(pools), keys=sorted(answered), clean=clean,
                        **self._flag_parameters(epoch, now, pools)).single()
        batch = self._fenced(record, epoch, {"tasks": [], "flagged": [], "dispatches": [], "completed": []})
        verdict = classify(outcomes, {r["key"]: r for r in batch["tasks"] if r["status"] is not None}, now)
        clean_keys = {c["key"] for c in clean}
        flagged = [s for s in verdict.successes if s["key"] in clean_keys]
        if set(batch["flagged"]) != {s["key"] for s in flagged}:
            raise AssertionError(f"the batch statement flagged {sorted(batch['flagged'])}, classify() accepted "
                                 f"{sorted(s['key'] for s in flagged)}")  # rolls the transaction back
        self._flagged(batch, flagged, result)
        result.unknown += verdict.unknown
        result.duplicates += verdict.duplicates
        if verdict.orphans:
            found = tx.run("UNWIND $keys AS k MATCH (t:Task {key: k}) " + _RETURN_DISPATCH, keys=verdict.orphans)
            result.undos += undoable(_dispatch_rows(list(found)))
        if verdict.waits:
            tx.run("UNWIND $rows AS r MATCH (t:Task {key: r.key}) SET t.recheck_at = r.recheck_at, "
                   "t.waiting_since = coalesce(t.waiting_since, $now), t.waiting_on = r.waiting_on, t.epoch = $epoch",
                   rows=verdict.waits, now=now, epoch=epoch)
            result.waits += verdict.waits
        rest = [s for s in verdict.successes if s["key"] not in clean_keys]
        if rest:
            self._flag(tx, epoch, rest, now, result, pools)
        if verdict.retries:
            # the template's backoff: backoff_s * backoff_factor ^ (attempt - 1), at most max_backoff_s; a lost
            # attempt is retried at once and counted in t.lost
            tx.run("UNWIND $rows AS r MATCH (t:Task {key: r.key}) SET t.status = $retry_wait, "
                   "t.not_before = $now + CASE WHEN r.lost THEN 0 "
                   "WHEN t.backoff_s * t.backoff_factor ^ (r.attempt - coalesce(t.attempt_base, 0) - 1) "
                   "> t.max_backoff_s THEN t.max_backoff_s "
                   "ELSE t.backoff_s * t.backoff_factor ^ (r.attempt - coalesce(t.attempt_base, 0) - 1) END, "
                   "t.lost = coalesce(t.lost, 0) + CASE WHEN r.lost THEN 1 ELSE 0 END, "
                   "t.last_error = r.error, t.epoch = $epoch, t.recheck_at = null, t.waiting_since = null, "
                   "t.waiting_on = null", rows=verdict.retries, epoch=epoch, now=now,
                   retry_wait=TaskStatus.RETRY_WAIT)
            result.retries += verdict.retries
        if verdict.fails:
            self._fail(tx, epoch, verdict.fails, now, result)

    def _dispatch_roots(self, tx: ManagedTransaction, epoch: int, submitted: list[str], now: float,
                        result: AdvanceResult, pools: dict[str, int]) -> None:
        """Dispatch the roots of the ``submitted`` experiments and start them (:func:`_roots_statement`), into
        ``result``; a fenced or ungated batch raises, and the transaction, dispatches included, rolls back."""
        # each id once: a repeated id in one UNWIND dispatched its roots twice
        record = tx.run(_roots_statement(pools), ids=sorted(set(submitted)), now=now, epoch=epoch,
                        pending=TaskStatus.PENDING, dispatched=TaskStatus.DISPATCHED, bounded=list(pools),
                        queued=ExperimentState.QUEUED, running=ExperimentState.RUNNING).single()
        batch = self._fenced(record, epoch, {"roots": [], "started": []})
        result.dispatches += _dispatch_rows(batch["roots"])
        for experiment_id in sorted(batch["started"]):  # successors' experiments are RUNNING already
            result.experiments.setdefault(experiment_id, ExperimentState.RUNNING)

    @staticmethod
    def _flag_parameters(epoch: int, now: float, pools: dict[str, int]) -> dict[str, Any]:
        """The parameters of :func:`_flag_clauses`."""
        return {"epoch": epoch, "now": now, "succeeded": TaskStatus.SUCCEEDED, "pending": TaskStatus.PENDING,
                "dispatched": TaskStatus.DISPATCHED, "live": _LIVE, "completed": ExperimentState.COMPLETED,
                "bounded": list(pools)}

    @staticmethod
    def _flagged(record: Mapping[str, Any], successes: list[dict], result: AdvanceResult) -> None:
        """Into ``result``: the ``successes`` that a statement with :func:`_flag_clauses` flagged, what it dispatched
        and what it completed."""
        result.flagged += successes
        result.dispatches += _dispatch_rows(record["dispatches"])
        for experiment_id in record["completed"]:
            result.experiments[experiment_id] = ExperimentState.COMPLETED

    def _flag(self, tx: ManagedTransaction, epoch: int, successes: list[dict], now: float,
              result: AdvanceResult, pools: dict[str, int]) -> None:
        """Flag ``successes`` (which classify() accepted) with :func:`_flag_clauses`: one statement."""
        record = tx.run("CALL () { UNWIND $keys AS k MATCH (t:Task {key: k}) RETURN collect(t) AS flagged } "
                        + _flag_clauses(pools) + "RETURN dispatches, completed", keys=[s["key"] for s in successes],
                        **self._flag_parameters(epoch, now, pools)).single(strict=True)
        self._flagged(record, successes, result)

    def _fail(self, tx: ManagedTransaction, epoch: int, fails: list[dict], now: float,
              result: AdvanceResult) -> None:
        tx.run("UNWIND $rows AS r MATCH (t:Task {key: r.key}) SET t.status = $failed, t.finished_at = $now, "
               "t.last_error = r.error, t.epoch = $epoch", rows=fails, now=now, epoch=epoch, failed=TaskStatus.FAILED)
        result.failed += fails
        ids = sorted({f["experiment_id"] for f in fails})
        for r in tx.run("UNWIND $ids AS id MATCH (e:Experiment {experiment_id: id}) "
                        "WHERE e.state IN $live "
                        "SET e.state = $failed, e.finished_at = $now RETURN e.experiment_id AS id", ids=ids, now=now,
                        live=_LIVE, failed=ExperimentState.FAILED):
            result.experiments[r["id"]] = ExperimentState.FAILED
        result.cancelled += self._cancel_open_tasks(tx, ids, now, epoch)

    @staticmethod
    def _cancel_open_tasks(tx: ManagedTransaction, ids: list[str], now: float, epoch: int) -> list[dict]:
        rows = tx.run(_CANCEL_OPEN, ids=ids, open=_OPEN, now=now, epoch=epoch, cancelled=TaskStatus.CANCELLED)
        return [dict(r) for r in rows]

    @at_boundary
    def cancel(self, experiment_id: str, now: float) -> tuple[str, AdvanceResult]:
        """Cancel an experiment and its open tasks (unfenced, epoch 0: a user's request, not a leader's write);
        returns the state after and what changed, with the Outbox node (written by ``cancel``) of its rows."""

        def work(tx: ManagedTransaction) -> tuple[str, AdvanceResult]:
            # Lock the Fence node first, as every leader transaction does: a batch that read a task before this
            # commits cannot then overwrite the cancellation (no lost update), whatever the isolation level.
            tx.run("MATCH (f:Fence {name: 'leader'}) SET f.last_cancel_at = $now", now=now)
            record = tx.run("MATCH (e:Experiment {experiment_id: $id}) SET e.cancel_requested = $now "
                            "RETURN e.state AS state", id=experiment_id, now=now).single()
            if record is None:
                raise NotFoundError(f"no experiment {experiment_id!r}")
            if record["state"] in TERMINAL_EXPERIMENT_STATES:
                return record["state"], AdvanceResult()
            tx.run("MATCH (e:Experiment {experiment_id: $id}) SET e.state = $cancelled, e.finished_at = $now",
                   id=experiment_id, now=now, cancelled=ExperimentState.CANCELLED)
            result = AdvanceResult(cancelled=self._cancel_open_tasks(tx, [experiment_id], now, 0),
                                   experiments={experiment_id: ExperimentState.CANCELLED})
            return ExperimentState.CANCELLED, _outbox(tx, 0, now, result, node="cancel")

        with self.driver.session() as session:
            return session.execute_write(self._timed(work))

    @at_boundary
    def outbox_naming(self, experiment_id: str) -> list[str]:
        """The ids of the Outbox nodes whose rows name ``experiment_id`` (a write MariaDB may not have yet)."""
        records, _, _ = self.driver.execute_query(
            "MATCH (o:Outbox) WHERE o.rows CONTAINS $quoted RETURN o.id AS id", quoted=json.dumps(experiment_id))
        return [r["id"] for r in records]

    @at_boundary
    def retry(self, experiment_id: str, now: float, recorded: Collection[str] = ()) -> tuple[str, AdvanceResult]:
        """Reopen a FAILED or CANCELLED experiment (unfenced, epoch 0, like :meth:`cancel`, and serialized with the
        leader's writes through the same Fence lock): every task not executed goes back to PENDING with its attempt
        kept as ``attempt_base`` (its next dispatch is attempt + 1, and it has its template's attempts again); those
        whose predecessors all succeeded are *held* (RETRY_WAIT until RETRY_HELD) until :meth:`release_retry`, so
        that no leader dispatches them before MariaDB records the reopening. Returns the state after and what
        changed, with the Outbox node (written by ``retry``) of its rows. An experiment in another state is left as
        it is (idempotent); one whose last change is not in MariaDB yet (an Outbox node names it whose id is not in
        ``recorded``, the batches MariaDB has) is a ConflictError (the reopening would be undone by that write), as
        is one without tasks to run again."""

        def work(tx: ManagedTransaction) -> tuple[str, AdvanceResult]:
            tx.run("MATCH (f:Fence {name: 'leader'}) SET f.last_retry_at = $now", now=now)
            record = tx.run("MATCH (e:Experiment {experiment_id: $id}) RETURN e.state AS state",
                            id=experiment_id).single()
            if record is None:
                raise NotFoundError(f"no experiment {experiment_id!r}")
            if record["state"] not in RETRYABLE_EXPERIMENT_STATES:
                return record["state"], AdvanceResult()
            # the write that ended it, if MariaDB does not have it yet: the reopening would be undone by it
            pending = tx.run("MATCH (o:Outbox) WHERE o.rows CONTAINS $quoted AND NOT o.id IN $recorded "
                             "RETURN count(o) AS n", quoted=json.dumps(experiment_id),
                             recorded=list(recorded)).single(strict=True)
            if pending["n"]:
                raise ConflictError(f"experiment {experiment_id!r} ended a moment ago and MariaDB does not record "
                                    "it yet: retry again in a few seconds")
            rows = tx.run(
                "MATCH (t:Task {experiment_id: $id}) WHERE t.executed = false "
                "OPTIONAL MATCH (t)-[:DEPENDS_ON]->(p:Task) WHERE p.executed = false "
                "WITH t, t.status AS was, count(p) AS waiting "
                "SET t.status = CASE WHEN waiting = 0 THEN $retry_wait ELSE $pending END, "
                "t.not_before = CASE WHEN waiting = 0 THEN $held END, t.waiting = waiting, "
                "t.attempt_base = t.attempt, t.lost = 0, t.finished_at = null, t.last_error = null, "
                "t.recheck_at = null, t.waiting_since = null, t.waiting_on = null, t.held_at = null, t.epoch = 0 "
                "RETURN t.experiment_id AS experiment_id, t.name AS name, was AS status, t.attempt AS attempt "
                "ORDER BY t.name", id=experiment_id, retry_wait=TaskStatus.RETRY_WAIT, pending=TaskStatus.PENDING,
                held=RETRY_HELD)
            reopened = [dict(r) for r in rows]
            if not reopened:  # its DAG could not be built (the leader recorded it FAILED without tasks)
                raise ConflictError(f"experiment {experiment_id!r} has no tasks to run again: its DAG could not be "
                                    "built (see `haorch status`)")
            tx.run("MATCH (e:Experiment {experiment_id: $id}) SET e.state = $running, e.remaining = $n, "
                   "e.finished_at = null, e.started_at = coalesce(e.started_at, $now), e.retried_at = $now, "
                   "e.retries = coalesce(e.retries, 0) + 1", id=experiment_id, running=ExperimentState.RUNNING,
                   n=len(reopened), now=now)
            result = AdvanceResult(reopened=reopened, experiments={experiment_id: ExperimentState.RUNNING})
            return ExperimentState.RUNNING, _outbox(tx, 0, now, result, node=RETRY_WRITER)

        with self.driver.session() as session:
            return session.execute_write(self._timed(work))

    @at_boundary
    def release_retry(self, ids: list[str], now: float) -> int:
        """Let the leader dispatch the held tasks of these reopened experiments (MariaDB records their retry now):
        their next attempt is due at once. Idempotent; returns how many it released."""
        records, _, _ = self.driver.execute_query(
            "UNWIND $ids AS id MATCH (t:Task {experiment_id: id}) "
            "WHERE t.status = $retry_wait AND t.not_before = $held SET t.not_before = $now RETURN count(t) AS n",
            ids=ids, retry_wait=TaskStatus.RETRY_WAIT, held=RETRY_HELD, now=now)
        return records[0]["n"] if records else 0

    # --- periodic work and takeover ----------------------------------------------------------------------
    @at_boundary
    def due_work(self, epoch: int, now: float, grace_s: float, limit: int, overdue: bool = True) -> AdvanceResult:
        """Roots never dispatched (a submission whose notice was lost), retries whose backoff has passed, waiting
        attempts whose re-check is due and, if ``overdue``, dispatched tasks whose response is overdue (not those
        waiting for their re-check), as dispatches; with bounded pools, the roots and retries of those pools only
        as their free slots allow (held tasks of a pool whose slots were raised or freed by a cancel go here)."""

        def work(tx: ManagedTransaction) -> AdvanceResult:
            self._lock_fence(tx, epoch)
            pools = dict(self.pools)
            roots = tx.run("MATCH (t:Task {status: $pending}) WHERE t.waiting = 0" + _unbounded("t", pools) +
                           " WITH t LIMIT $limit "
                           "SET t.status = $dispatched, t.attempt = t.attempt + 1, t.dispatched_at = $now, "
                           "t.epoch = $epoch " + _RETURN_DISPATCH, now=now, limit=limit, epoch=epoch,
                           pending=TaskStatus.PENDING, dispatched=TaskStatus.DISPATCHED, bounded=list(pools))
            found = _dispatch_rows(list(roots))
            retries = tx.run("MATCH (t:Task {status: $retry_wait}) WHERE t.not_before <= $now" +
                             _unbounded("t", pools) + " WITH t LIMIT $limit "
                             "SET t.status = $dispatched, t.attempt = t.attempt + 1, t.dispatched_at = $now, "
                             "t.epoch = $epoch " + _RETURN_DISPATCH, now=now, limit=limit, epoch=epoch,
                             retry_wait=TaskStatus.RETRY_WAIT, dispatched=TaskStatus.DISPATCHED, bounded=list(pools))
            found += _dispatch_rows(list(retries))
            rechecks = tx.run("MATCH (t:Task {status: $dispatched}) WHERE t.recheck_at <= $now WITH t LIMIT $limit "
                              "SET t.recheck_at = null, t.dispatched_at = $now, t.epoch = $epoch " + _RETURN_DISPATCH,
                              now=now, limit=limit, epoch=epoch, dispatched=TaskStatus.DISPATCHED)
            found += _dispatch_rows(list(rechecks), redispatch=True, recheck=True)
            late = tx.run("MATCH (t:Task {status: $dispatched}) "
                          "WHERE t.recheck_at IS NULL AND t.dispatched_at + t.timeout_s + $grace < $now "
                          "WITH t LIMIT $limit "
                          "SET t.dispatched_at = $now, t.epoch = $epoch " + _RETURN_DISPATCH,
                          now=now, grace=grace_s, limit=limit if overdue else 0, epoch=epoch,
                          dispatched=TaskStatus.DISPATCHED)
            result = AdvanceResult(dispatches=found + _dispatch_rows(list(late), redispatch=True))
            _start_experiments(tx, now, result)
            if pools:
                _release(tx, epoch, now, pools, result)
            return _outbox(tx, epoch, now, result)

        with self.driver.session() as session:
            return session.execute_write(self._timed(work))

    @at_boundary
    def pool_usage(self, names: list[str], now: float) -> dict[str, dict[str, int]]:
        """Per pool of ``names``: ``in_use``, its DISPATCHED tasks, and ``waiting``, its ready tasks not dispatched
        (PENDING with no predecessor left, RETRY_WAIT past its backoff): held while the pool is full. Index seeks on
        (pool, status, waiting); read only."""
        records, _, _ = self.driver.execute_query(
            "UNWIND $names AS name WITH {name: name} AS p "
            "CALL (p) { " + _BY_POOL + "t.status = $dispatched AND t.waiting IS NOT NULL RETURN count(t) AS in_use } "
            "CALL (p) { " + _BY_POOL + "t.status = $pending AND t.waiting = 0 RETURN count(t) AS ready } "
            "CALL (p) { " + _BY_POOL + "t.status = $retry_wait AND t.waiting IS NOT NULL AND t.not_before <= $now "
            "           RETURN count(t) AS due } "
            "RETURN p.name AS name, in_use, ready + due AS waiting", names=names, now=now,
            dispatched=TaskStatus.DISPATCHED, pending=TaskStatus.PENDING, retry_wait=TaskStatus.RETRY_WAIT,
            routing_="r")
        return {r["name"]: {"in_use": r["in_use"], "waiting": r["waiting"]} for r in records}

    @at_boundary
    def rescan(self, epoch: int, after: str, limit: int) -> list[dict[str, Any]]:
        """Takeover, one page: up to ``limit`` unflagged tasks whose predecessors are all executed, with keys
        after ``after``, in key order (one index seek), except those this ``epoch`` has (re)dispatched already:
        ``{key, experiment_id, name, status, attempt, timeout_s}`` (only what the takeover reads).

        Ordered by the ready index's three properties, not by ``key`` alone: then the planner reads the index in
        order and stops after ``limit`` (by ``key`` alone it sorted every ready task after ``after`` for each page).
        One record per page (a list of lists): the driver decodes it at once instead of record by record. Both
        made a full rescan of 100,000 ready tasks ~6x faster (docs/BENCHMARKS.md, "Scale points")."""
        def page(tx: ManagedTransaction) -> list[list[Any]]:
            record = tx.run(
                "MATCH (t:Task) USING INDEX t:Task(executed, waiting, key) "
                "WHERE t.executed = false AND t.waiting = 0 AND t.key > $after AND t.status IN $open "
                "AND coalesce(t.epoch, 0) <> $epoch "
                "WITH t ORDER BY t.executed, t.waiting, t.key LIMIT $limit "
                "RETURN collect([t.key, t.experiment_id, t.name, t.status, t.attempt, t.timeout_s]) AS page",
                after=after, open=_OPEN, epoch=epoch, limit=limit).single(strict=True)
            return list(record["page"])

        with self.driver.session() as session:
            rows = session.execute_read(self._timed(page))
        return [dict(zip(_RESCAN_COLUMNS, row, strict=True)) for row in sorted(rows)]

    @at_boundary
    def mark_dispatched(self, epoch: int, keys: list[str], now: float) -> AdvanceResult:
        """Takeover re-dispatch of one page: (re)mark tasks as dispatched now; PENDING roots get attempt 1 (a first
        dispatch, not a re-send). A task this epoch has dispatched since the page was read (a batch or the sweep
        did) is left alone, and so is a PENDING task of a bounded pool: a held task is the sweep's to dispatch,
        within its pool's slots (a re-send takes no new slot)."""

        def work(tx: ManagedTransaction) -> AdvanceResult:
            self._lock_fence(tx, epoch)
            pools = dict(self.pools)
            held = "AND (t.status = $dispatched OR NOT coalesce(t.pool, t.kind) IN $bounded) " if pools else ""
            rows = tx.run("UNWIND $keys AS k MATCH (t:Task {key: k}) "
                          "WHERE t.executed = false AND t.status IN [$pending, $dispatched] "
                          "AND coalesce(t.epoch, 0) <> $epoch " + held +
                          "WITH t, t.status = $dispatched AS again "
                          "SET t.attempt = CASE WHEN again THEN t.attempt ELSE t.attempt + 1 END, "
                          "t.status = $dispatched, t.dispatched_at = $now, t.epoch = $epoch, t.recheck_at = null "
                          + _RETURN_DISPATCH + ", again", keys=keys, now=now, epoch=epoch,
                          pending=TaskStatus.PENDING, dispatched=TaskStatus.DISPATCHED, bounded=list(pools))
            result = AdvanceResult(dispatches=[
                Dispatch(r["key"], r["experiment_id"], r["name"], r["kind"], r["request"], r["attempt"], r["again"])
                for r in rows])
            _start_experiments(tx, now, result)
            return _outbox(tx, epoch, now, result)

        with self.driver.session() as session:
            return session.execute_write(self._timed(work))

    @at_boundary
    def outbox(self, limit: int, before: float | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` Outbox nodes (written before ``before``, if given), oldest first: ``{id, at, epoch, node,
        rows, states}`` (``node``: who wrote it: the leader holding the fence then, or ``cancel``)."""
        records, _, _ = self.driver.execute_query(
            "MATCH (o:Outbox) WHERE o.at < coalesce($before, o.at + 1) "
            "RETURN o.id AS id, o.at AS at, o.epoch AS epoch, o.node AS node, o.rows AS rows "
            "ORDER BY o.at, o.id LIMIT $limit", limit=limit, before=before)
        out = []
        for r in records:
            body = json.loads(r["rows"])
            out.append({"id": r["id"], "at": r["at"], "epoch": r["epoch"], "node": r["node"] or "unknown",
                        "rows": [tuple(row) for row in body["rows"]], "states": body["states"]})
        return out

    @at_boundary
    def forget_outbox(self, ids: list[str]) -> None:
        """Delete the Outbox nodes of ``ids`` (MariaDB has their rows). Locks the Fence node first, as every other
        write of a leader does: a writer frozen in here (SIGSTOP, a stalled host) then blocks the next leader's
        fence raise, whose guard ends its transaction. Without that lock it held the nodes' locks unseen, and the
        next leader, deleting the same nodes in its takeover, waited for it until it woke (a takeover stalled 30 s
        behind a SIGSTOPped leader; a CI run failed on it)."""
        if not ids:
            return

        def work(tx: ManagedTransaction) -> None:
            tx.run("MATCH (f:Fence {name: 'leader'}) SET f.last_forget_at = $now WITH count(f) AS locked "
                   "UNWIND $ids AS id MATCH (o:Outbox {id: id}) DELETE o", ids=ids, now=time.time()).consume()

        with self.driver.session() as session:
            session.execute_write(self._timed(work))

    @at_boundary
    def experiment_states(self, ids: list[str]) -> dict[str, str]:
        records, _, _ = self.driver.execute_query(
            "UNWIND $ids AS id MATCH (e:Experiment {experiment_id: id}) RETURN id, e.state AS state", ids=ids)
        return {r["id"]: r["state"] for r in records}
