"""What users do with experiments — register types, submit, inspect, cancel, wait — for the CLI and HTTP API.

Submitting checks the params (sizes: ``node/model/api_limits.py``; names: those the template declares), writes
the MariaDB row (QUEUED) and then the concrete DAG in Neo4j, both idempotent on the experiment id, then tells the
leader on ``haorch.submissions``. The notice only saves latency: with no leader running (or RabbitMQ down) the
submission is already durable, and the next leader's sweep dispatches the roots. A submit that dies between the
two writes leaves a QUEUED row without a DAG: the leader builds it from the row after ``submit_grace_s``
(``node/leader/submits.py``), and a retry with the same id builds it at once, from the row too; a store failure
says so in an :class:`~node.errors.IncompleteSubmit` that names the id.

MariaDB is written first because it is the system of record Neo4j is rebuilt from (``haorch recover neo4j``): the
row carries the type, template version and params, and its transaction also records the template's definition. A
template is registered in Neo4j first (Neo4j allocates the version), then recorded in MariaDB; a crash between the
two leaves a version no experiment uses yet, recorded by a retry or with its first experiment. A DAG is created
only in the graph MariaDB names (``DagStore.generation``): while Neo4j is emptied or being rebuilt a submit records
its row and fails with a retryable error, and the rebuild (or the leader) creates the DAG from the row.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import logging
import math
import time
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
from neo4j import Driver

from node.config import Config
from node.errors import (
    Busy,
    ConflictError,
    DependencyError,
    IncompleteSubmit,
    NotFoundError,
    TimeoutExpired,
    UnknownTypeError,
    UsageError,
)
from node.model.advance import RETRY_WRITER, Dispatch, transition_rows
from node.model.api_limits import LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT, check_params_size
from node.model.builtin import builtin_templates
from node.model.executors import KNOWN_EXECUTORS
from node.model.limits import id_problem
from node.model.messages import SubmissionNotice, TaskRequest
from node.model.states import TERMINAL_EXPERIMENT_STATES, ExperimentState
from node.model.template import NAME_RE, Template, load_template_file
from node.retry import REOPEN_ONCE, call
from node.stores.connect import amqp_parameters, neo4j_driver
from node.stores.dags import DagStore, GraphNotReady
from node.stores.failures import rabbitmq_boundary
from node.stores.graph_record import GraphRecord, template_row
from node.stores.queues import REQUESTS, SUBMISSIONS
from node.stores.rabbit import BatchPublisher
from node.stores.records import Records

log = logging.getLogger(__name__)

BUILTIN_TYPES = ("chain", "diamond", "fanout", "retry")
IN_FLIGHT_FRESH_S = 1.0  # a submitter counts the experiments in flight again after this long (one COUNT query)
BUSY_RETRY_AFTER_S = 5  # what a refused submitter is told to wait


def new_experiment_id(type_: str) -> str:
    return f"{type_}-{uuid.uuid4().hex[:12]}"


def parse_params(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``K=V`` strings to a dict; UsageError on a pair without '='."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--param expects K=V, got {pair!r}")
        params[key] = value
    return params


@dataclass(frozen=True)
class Page:
    """One page of a listing; ``next`` is the cursor of the following page, None after the last."""

    rows: list[dict[str, Any]]
    next: str | None


def encode_cursor(created_at: float, experiment_id: str) -> str:
    """An opaque cursor for the position after this row (URL-safe)."""
    return base64.urlsafe_b64encode(json.dumps([created_at, experiment_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The position in a cursor from :func:`encode_cursor`; UsageError if it is not one."""
    try:
        created_at, experiment_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(created_at, (int, float)) and math.isfinite(created_at) and isinstance(experiment_id, str):
            return float(created_at), experiment_id
    except (ValueError, TypeError, binascii.Error):
        pass
    raise UsageError(f"invalid cursor {cursor[:80]!r}: pass the 'next' of a previous page")


@contextmanager
def _safe_to_retry(ids: list[str], type_: str) -> Iterator[None]:
    """A store failure while submitting ``ids`` becomes IncompleteSubmit naming them: the caller may not know
    them (generated ids) and needs them to retry."""
    try:
        yield
    except DependencyError as exc:
        shown = f"experiment {ids[0]!r}" if len(ids) == 1 else f"{len(ids)} experiments ({ids[0]} ... {ids[-1]})"
        raise IncompleteSubmit(f"submit of {type_} {shown} did not finish ({exc}): it is safe to retry with the "
                               f"same id{'s' if len(ids) > 1 else ''}") from exc


def _check_id(experiment_id: object) -> None:
    if not isinstance(experiment_id, str):
        raise UsageError(f"experiment id must be a string, got {type(experiment_id).__name__}")
    problem = id_problem(experiment_id, "experiment id")
    if problem:
        raise UsageError(problem)


def _all_found(ids: list[str], found: Collection[str]) -> None:
    """NotFoundError naming the first of ``ids`` not in ``found`` (it does not exist, or was deleted meanwhile)."""
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFoundError(f"no experiment {missing[0]!r}")


class Experiments:
    """Connections to MariaDB, Neo4j and RabbitMQ, opened lazily; close() when done."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.records = Records(cfg, retry_for_s=10.0)
        self._driver: Driver | None = None
        self._dags: DagStore | None = None
        self._notifier: BatchPublisher | None = None
        self._in_flight: tuple[float, int] | None = None  # (monotonic time of the count, count + what we admitted)

    @property
    def dags(self) -> DagStore:
        if self._dags is None:
            self._driver = neo4j_driver(self.cfg)
            # a cancel or retry frozen while it holds the fence lock blocks the leader: the server ends it
            self._dags = DagStore(self._driver, tx_timeout_s=self.cfg.neo4j_tx_timeout_s)
        return self._dags

    def _create_dags(self, template: Template, version: int, items: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """Create the DAGs in the graph MariaDB names (looked up at the first creation, and at each while none is
        recorded yet); a rebuild since then names a new one, so a GraphNotReady is checked against MariaDB once
        more before it is raised."""
        if self.dags.generation is None:
            self.dags.generation = GraphRecord(self.records).generation()
        try:
            return self.dags.create_experiments(template, version, items)
        except GraphNotReady:
            current = GraphRecord(self.records).generation()
            if current == self.dags.generation:
                raise
            self.dags.generation = current
            return self.dags.create_experiments(template, version, items)

    def _record_template(self, template: Template, version: int) -> None:
        GraphRecord(self.records).save_templates([template_row(template, version, time.time())])

    def close(self) -> None:
        self._close_notifier()
        self.records.close()
        if self._driver is not None:
            self._driver.close()

    def __enter__(self) -> Experiments:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- templates ---------------------------------------------------------------------------------------
    def install_builtins(self) -> list[dict[str, Any]]:
        """Register the four built-in types (idempotent: an unchanged template keeps its version)."""
        out = []
        for template in builtin_templates(KNOWN_EXECUTORS):
            version, created = self.dags.register_template(template)
            self._record_template(template, version)
            out.append({"type": template.type, "version": version, "created": created})
        return out

    def register(self, path: str | Path) -> dict[str, Any]:
        """Register the template in the file ``path`` (YAML or JSON)."""
        return self.register_template(load_template_file(path, KNOWN_EXECUTORS))

    def register_template(self, template: Template) -> dict[str, Any]:
        """A new version of ``template``'s type unless it is unchanged: Neo4j allocates the version, then MariaDB
        records the definition (a crash between the two leaves a version that a retry records)."""
        version, created = self.dags.register_template(template)
        self._record_template(template, version)
        return {"type": template.type, "version": version, "created": created, "tasks": len(template.tasks)}

    def show_template(self, type_: str) -> dict[str, Any]:
        template, version = self.dags.get_template(type_)
        return {"version": version, **template.to_dict()}

    # --- experiments -------------------------------------------------------------------------------------
    def submit(self, type_: str, experiment_id: str | None = None, params: dict[str, str] | None = None,
               notify: bool = True) -> dict[str, Any]:
        """Create (or find, same id) an experiment; returns its id, type, version and whether it is new."""
        if not NAME_RE.match(type_):
            raise UsageError(f"invalid experiment type {type_!r}")
        experiment_id = new_experiment_id(type_) if experiment_id is None else experiment_id
        _check_id(experiment_id)
        template, version = self._latest(type_)
        params = params or {}
        check_params_size(params)
        template.check_overrides(params)
        with _safe_to_retry([experiment_id], type_):
            try:
                self._admit(1)
            except Busy:
                if not self.records.exists(experiment_id):
                    raise
                # a resubmission: idempotent, it adds nothing in flight
            row_new = self.records.insert_experiment(experiment_id, type_, version, params, template)
            if not row_new:  # the row is the record: a retry builds the DAG it describes
                row = self.records.get_experiment(experiment_id)
                if row["params"] is None:
                    raise ConflictError(f"experiment {experiment_id!r} cannot be resubmitted: {row['params_error']}")
                version, params = row["template_version"], row["params"]
                template, _ = self.dags.get_template(type_, version)
            dag_new = bool(self._create_dags(template, version, [(experiment_id, params)]))
        if notify and dag_new:
            self._notify([experiment_id])
        return {"experiment_id": experiment_id, "type": type_, "version": version, "created": row_new or dag_new}

    def submit_many(self, type_: str, ids: list[str], params: dict[str, str] | None = None,
                    notify: bool = True) -> list[str]:
        """Submit experiments of one type with one MariaDB and one Neo4j transaction (load generators,
        benchmarks); returns the ids that were new. Resubmitted ids are left as they are."""
        for experiment_id in ids:
            _check_id(experiment_id)
        params = params or {}
        check_params_size(params)
        template, version = self._latest(type_)
        template.check_overrides(params)
        items = [(experiment_id, params) for experiment_id in ids]
        with _safe_to_retry(ids, type_):
            self._admit(len(ids))
            self.records.insert_experiments(type_, version, items, template)
            created = self._create_dags(template, version, items)
        if notify and created:
            self._notify(created)
        return created

    def _admit(self, new: int) -> None:
        """Busy (nothing stored) when ``new`` more experiments would bring those in flight above ``max_in_flight``.
        The count is this object's, refreshed every IN_FLIGHT_FRESH_S: the bound is approximate, exceeded at most by
        what every submitter admits within that time."""
        limit = self.cfg.max_in_flight
        if not limit:
            return
        now = time.monotonic()
        if self._in_flight is None or now - self._in_flight[0] > IN_FLIGHT_FRESH_S:
            self._in_flight = (now, self.records.in_flight())
        at, count = self._in_flight
        if count + new > limit:
            raise Busy(f"busy: {count} experiments in flight, at most {limit} accepted; nothing was submitted, "
                       f"retry after {BUSY_RETRY_AFTER_S} s", BUSY_RETRY_AFTER_S)
        self._in_flight = (at, count + new)

    def _latest(self, type_: str) -> tuple[Template, int]:
        """The latest version of ``type_``; a built-in type is installed first on a fresh store (the HTTP API may be
        its first caller)."""
        try:
            return self.dags.get_template(type_)
        except UnknownTypeError:
            if type_ not in BUILTIN_TYPES:
                raise
            self.install_builtins()
            return self.dags.get_template(type_)

    def _notify(self, ids: list[str]) -> None:
        """Tell the leader (one confirmed batch on a connection kept for this object's life). Best effort: the
        submission is durable already and the leader's sweep dispatches it without a notice."""
        bodies = [SubmissionNotice(experiment_id).encode() for experiment_id in ids]

        def send() -> None:
            self._publisher().publish_batch(SUBMISSIONS, bodies)

        try:  # a kept connection may have died (broker restart): reconnect once
            call(REOPEN_ONCE, send, what=None, on_failure=lambda _exc: self._close_notifier())
        except DependencyError as exc:
            log.warning("submit: no notice sent (%s); the leader's sweep will dispatch it", exc.cause)

    def _publish_undos(self, undos: builtins.list[Dispatch]) -> None:
        """Ask workers to reverse what the cancelled experiment's tasks started outside haorch (its SLURM jobs). Best
        effort: a task still running when this is sent is undone by the leader when its success comes in."""
        now = time.time()
        bodies = [TaskRequest.from_static(d.request, d.attempt, 0, now, undo=True).encode() for d in undos]
        try:
            call(REOPEN_ONCE, lambda: self._publisher().publish_batch(REQUESTS, bodies), what=None,
                 on_failure=lambda _exc: self._close_notifier())
        except DependencyError as exc:
            log.warning("cancel: could not ask workers to undo %d task(s): %s", len(undos), exc.cause)

    def _publisher(self) -> BatchPublisher:
        """The kept connection for notices and undos (opened on first use)."""
        if self._notifier is None:
            with rabbitmq_boundary(self.cfg):
                conn = pika.BlockingConnection(amqp_parameters(self.cfg, heartbeat_s=0, name="haorch-submit"))
            self._notifier = BatchPublisher(conn)
        return self._notifier

    def _close_notifier(self) -> None:
        if self._notifier is not None:
            try:
                self._notifier.conn.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
            self._notifier = None

    def status(self, experiment_id: str) -> dict[str, Any]:
        """The experiment row, its tasks (state, attempts, timings, what a waiting one waits on) from Neo4j, each with
        its outputs (from the ledger: ``{}`` until it succeeds)."""
        row = self.records.get_experiment(experiment_id)
        template, _ = self.dags.get_template(row["type"], row["template_version"])
        order = {name: i for i, name in enumerate(template.topological_order())}
        outputs = self.records.task_outputs(experiment_id)
        tasks = sorted(self.dags.experiment_tasks(experiment_id), key=lambda t: order.get(t["name"], 1 << 30))
        row["tasks"] = [{**t, "outputs": outputs.get(t["name"], {})} for t in tasks]
        return row

    def list(self, state: str | None = None, limit: int | None = None, after: str | None = None, *,
             type_: str | None = None, since: float | None = None, until: float | None = None,
             prefix: str | None = None) -> Page:
        """One page of experiments, oldest first, ordered by (created_at, experiment_id): ``limit`` rows (default
        LIST_DEFAULT_LIMIT, at most LIST_MAX_LIMIT) after the cursor ``after``; only those of ``state`` and
        ``type_``, created at or after ``since`` and before ``until`` (UNIX seconds), whose id starts with
        ``prefix``."""
        if state is not None and state.upper() not in tuple(ExperimentState):
            raise UsageError(f"unknown state {state!r}; one of {', '.join(ExperimentState)}")
        if type_ is not None and not NAME_RE.match(type_):
            raise UsageError(f"invalid experiment type {type_!r}")
        for name, value in (("since", since), ("until", until)):
            if value is not None and not math.isfinite(value):
                raise UsageError(f"{name} must be a finite number of UNIX seconds, got {value}")
        problem = id_problem(prefix, "id prefix") if prefix else None
        if problem:
            raise UsageError(problem)
        limit = LIST_DEFAULT_LIMIT if limit is None else limit
        if not 1 <= limit <= LIST_MAX_LIMIT:
            raise UsageError(f"limit must be 1-{LIST_MAX_LIMIT}, got {limit}")
        position = None if after is None else decode_cursor(after)
        rows = self.records.experiments_page(state.upper() if state else None, position, limit + 1,
                                             created_before=until, type_=type_, created_since=since,
                                             id_prefix=prefix or None)
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, encode_cursor(rows[-1]["created_at"], rows[-1]["experiment_id"]) if more else None)

    def cancel(self, experiment_id: str) -> dict[str, Any]:
        """Cancel an experiment that is not finished (idempotent: a finished one is reported as it is): Neo4j first,
        with an Outbox node of its transition rows, then MariaDB (unfenced, epoch 0, node ``cancel``). A crash
        between the two leaves the node, and the leader's sweep writes its rows after ``submit_grace_s``. Then,
        for a cancelled experiment, workers are asked to undo what its tasks started outside haorch (scancel its
        SLURM jobs: ``undone_tasks``)."""
        self.records.get_experiment(experiment_id)
        now = time.time()
        state, result = self.dags.cancel(experiment_id, now=now)
        if result.outbox_id is not None:  # a crash before this write leaves it to the leader (the outbox)
            self.records.write_batch(0, "cancel", transition_rows(result), result.experiments, now,
                                     batch_id=result.outbox_id, fenced=False)
            self.dags.forget_outbox([result.outbox_id])
        # every cancel of a cancelled experiment asks again (undos are idempotent): a CLI killed before this publish
        # is repaired by running the cancel again
        undos = self.dags.undo_dispatches(experiment_id) if state == ExperimentState.CANCELLED else []
        if undos:
            self._publish_undos(undos)
        return {"experiment_id": experiment_id, "state": state, "cancelled_tasks": len(result.cancelled),
                "undone_tasks": len(undos)}

    def retry(self, experiment_id: str) -> dict[str, Any]:
        """Resume a FAILED or CANCELLED experiment from its failed step: its tasks that did not succeed (the failed
        ones, and everything downstream, which was cancelled) become PENDING again and run with new attempts, under
        the same id; tasks that succeeded are not run again. Neo4j first (with an Outbox node of the transition
        rows, the ready tasks held), then MariaDB, as :meth:`cancel`, then the held tasks are released; a crash
        before the release leaves the node to the leader's sweep, which writes MariaDB (once) and releases them.
        Then the leader is told (a submission notice; without one its sweep dispatches the released tasks).
        Idempotent: an experiment that is not FAILED or CANCELLED is reported as it is, with ``retried_tasks`` 0."""
        self.records.get_experiment(experiment_id)
        # the leader deletes the Outbox nodes of its batches a sweep after MariaDB has them: those do not count
        recorded = self.records.applied(self.dags.outbox_naming(experiment_id))
        now = time.time()
        state, result = self.dags.retry(experiment_id, now=now, recorded=recorded)
        if result.outbox_id is not None:  # a crash from here on leaves it to the leader's sweep (the outbox)
            self.records.write_batch(0, RETRY_WRITER, transition_rows(result), result.experiments, now,
                                     batch_id=result.outbox_id, fenced=False, reopen=True)
            self.dags.release_retry([experiment_id], time.time())
            self.dags.forget_outbox([result.outbox_id])
            self._notify([experiment_id])
        return {"experiment_id": experiment_id, "state": state, "retried_tasks": len(result.reopened)}

    # builtins.list: in this class body below the method, ``list`` is Experiments.list
    def wait(self, ids: builtins.list[str], timeout_s: float,
             poll_s: float = 0.1) -> builtins.list[dict[str, Any]]:
        """Block until every experiment is terminal; their rows, in the order of ``ids``. NotFoundError names one
        that does not exist (or was deleted meanwhile), TimeoutExpired those not finished. A poll reads the states of
        those not finished yet, the rows are read once at the end: waiting for thousands costs the database little."""
        if not ids:
            return []
        unique = builtins.list(dict.fromkeys(ids))
        pending = unique
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.records.states(pending)
            _all_found(pending, states)
            pending = [i for i in pending if states[i] not in TERMINAL_EXPERIMENT_STATES]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutExpired(f"{len(pending)} of {len(ids)} experiment(s) not finished after {timeout_s:g} s: "
                                     f"{', '.join(pending[:5])}{' ...' if len(pending) > 5 else ''}")
            time.sleep(poll_s)
        rows = {r["experiment_id"]: r for r in self.records.experiments(
            "WHERE experiment_id IN (" + ",".join(["%s"] * len(unique)) + ")", tuple(unique))}
        _all_found(unique, rows)
        return [rows[i] for i in ids]
