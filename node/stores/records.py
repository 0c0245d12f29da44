"""MariaDB: experiment rows, the transition log, the fence row and leader terms.

The leader writes each batch in ONE transaction that first writes the fence row on the condition that it still
holds the leader's epoch (``UPDATE fence SET hb = hb + 1 WHERE epoch = mine``: a fence on a Galera cluster too) and
aborts with :class:`FencedError` if it does not. Submitters (CLI, HTTP) insert experiment rows
idempotently on the experiment id.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import pymysql
import pymysql.cursors

from node.config import Config
from node.errors import ConflictError, FencedError, NotFoundError
from node.model.api_limits import encode_params
from node.model.states import (
    LIVE_EXPERIMENT_STATES,
    RETRYABLE_EXPERIMENT_STATES,
    TERMINAL_EXPERIMENT_STATES,
    ExperimentState,
)
from node.model.template import Template
from node.periodic import Periodic
from node.retry import STORE_OPERATION, call
from node.stores.connect import mysql_connect, suspect_if_silent, suspected
from node.stores.failures import MARIADB_ERRORS, mariadb_boundary
from node.stores.graph_record import TEMPLATE_INSERT, decoded_params, template_row

log = logging.getLogger(__name__)
T = TypeVar("T")

BLOCKERS = ("SELECT b.trx_mysql_thread_id FROM information_schema.INNODB_LOCK_WAITS w "
            "JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id "
            "JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id "
            "WHERE r.trx_mysql_thread_id = %s")
APPLIED_BATCHES_KEEP_S = 86400.0  # far longer than any retry of a batch; pruned by the leader's sweep, bounded
CONFLICT = 1213  # ER_LOCK_DEADLOCK: also how Galera reports a transaction that lost certification
CONFLICT_RERUNS = 20  # then the conflict counts as a failure: the store retry policy waits and tries again
EXPERIMENT_COLUMNS = "experiment_id, type, template_version, state, params, created_at, updated_at, finished_at"


class Records:
    """One pymysql connection with reconnect-and-retry; not shared between threads."""

    def __init__(self, cfg: Config, retry_for_s: float = 60.0) -> None:
        self.cfg = cfg
        self.retry_for_s = retry_for_s
        self._policy = STORE_OPERATION.within(retry_for_s)
        self._boundary = mariadb_boundary(cfg)
        self._conn: pymysql.connections.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> pymysql.connections.Connection:
        if self._conn is not None and suspected(self._conn.host):  # cut off, likely: reconnect to another member
            self.close()
        if self._conn is None:
            self._conn = mysql_connect(self.cfg)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._conn = None

    def transaction(self, work: Callable[[pymysql.cursors.Cursor], T]) -> T:
        """Run ``work(cursor)`` in one transaction; reconnect and retry it while MariaDB is unreachable (for up to
        ``retry_for_s``), then :class:`~node.errors.DependencyError`. A conflict (error 1213 at any statement or at
        COMMIT: a deadlock, or on Galera a certification conflict with a write committed on another member) rolled
        the transaction back, and ``work`` runs again at once (up to CONFLICT_RERUNS times, then as a failure): a
        fenced transaction's rerun re-reads the fence with its conditional write, so a leader deposed meanwhile
        gets FencedError and steps down, and a new leader's raise is retried."""
        def rolled_back(conn: pymysql.connections.Connection) -> bool:
            try:
                conn.rollback()
            except MARIADB_ERRORS:
                self.close()
                return False
            return True

        def once() -> T:
            with self._boundary:
                reruns = 0
                while True:
                    conn = self._connection()
                    try:
                        with conn.cursor() as cur:
                            value = work(cur)
                        conn.commit()
                        return value
                    except MARIADB_ERRORS as exc:
                        if reruns < CONFLICT_RERUNS and exc.args[:1] == (CONFLICT,) and rolled_back(conn):
                            reruns += 1
                            log.info("records: transaction conflicted (1213), rerun %d", reruns)
                            continue
                        suspect_if_silent(conn.host, exc)
                        self.close()
                        raise
                    except BaseException:
                        rolled_back(conn)
                        raise

        with self._lock:
            return call(self._policy, once, what="records: mariadb")

    # --- fence -------------------------------------------------------------------------------------------
    @staticmethod
    def _check_fence(cur: pymysql.cursors.Cursor, epoch: int) -> None:
        """The fence of a fenced transaction: a real, conditional write of the fence row (``hb + 1`` where the epoch
        is ``epoch``), FencedError unless it wrote it. A write, not a ``SELECT … FOR UPDATE``: on a Galera cluster
        a locking read on one member does not stop a writer on another, but two writes of one row conflict at
        certification, so a deposed leader's transaction cannot commit after a new leader's raise (a conflict is
        error 1213, and the retried transaction then finds the raised epoch)."""
        if cur.execute("UPDATE fence SET hb = hb + 1 WHERE name = 'leader' AND epoch = %s", (epoch,)) != 1:
            Records._refuse(cur, epoch)

    @staticmethod
    def _refuse(cur: pymysql.cursors.Cursor, epoch: int) -> NoReturn:
        """The FencedError of a conditional fence write that wrote nothing, naming the fence's epoch."""
        cur.execute("SELECT epoch FROM fence WHERE name = 'leader'")
        row = cur.fetchone()
        raise FencedError("mariadb", epoch, row[0] if row else 0)

    def _unblocked_raise(self, epoch: int):
        """While a new leader raises the fence, kill whatever transaction blocks that raise: only an older
        leader's fenced transaction can hold the fence row, and one frozen (SIGSTOP, a stalled host) would hold it
        for as long as it is frozen. Killing its connection rolls its transaction back."""
        return _FenceUnblocker(self.cfg, self._connection().thread_id(), epoch)

    def raise_fence(self, epoch: int, node_id: str, elected_at: float) -> None:
        """A new leader's first write: fence row to ``epoch`` and a leader_terms row, nothing else (the fence row's
        lock is held until this commits: anything slow here delays the takeover and every fenced write). One
        conditional write: FencedError if the fence is above ``epoch``, or at ``epoch`` held by another node (one
        epoch belongs to one node: ZooKeeper hands each out once, so a tie means the fence was raised by hand or
        ZooKeeper's data was replaced; the later claimant steps down and is re-elected with a higher epoch)."""
        def work(cur: pymysql.cursors.Cursor) -> None:
            # the term row first, the fence write last: between that write and the commit, an older leader's
            # write applied from another Galera member aborts the raise (1213, rerun), so that window stays short
            cur.execute("INSERT INTO leader_terms (epoch, node_id, elected_at) VALUES (%s, %s, %s) "
                        "ON DUPLICATE KEY UPDATE node_id = node_id", (epoch, node_id, elected_at))
            with self._unblocked_raise(epoch):
                raised = cur.execute(
                    "UPDATE fence SET epoch = %s, holder = %s, raised_at = %s, hb = hb + 1 WHERE name = 'leader' "
                    "AND (epoch < %s OR (epoch = %s AND (holder IS NULL OR holder = %s)))",
                    (epoch, node_id, time.time(), epoch, epoch, node_id))
            if raised != 1:
                self._refuse(cur, epoch)
        self.transaction(work)

    def applied(self, batch_ids: list[str]) -> set[str]:
        """Those of ``batch_ids`` MariaDB has written (``applied_batches``)."""
        if not batch_ids:
            return set()

        def work(cur: pymysql.cursors.Cursor) -> set[str]:
            cur.execute(f"SELECT batch_id FROM applied_batches WHERE batch_id IN ({','.join(['%s'] * len(batch_ids))})",
                        batch_ids)
            return {r[0] for r in cur.fetchall()}
        return self.transaction(work)

    def prune_applied_batches(self, limit: int) -> int:
        """Delete up to ``limit`` of the oldest ``applied_batches`` rows older than APPLIED_BATCHES_KEEP_S, in a
        transaction of their own (unfenced: housekeeping, whoever does it); returns how many."""
        def work(cur: pymysql.cursors.Cursor) -> int:
            return cur.execute("DELETE FROM applied_batches WHERE at < %s ORDER BY at LIMIT %s",
                               (time.time() - APPLIED_BATCHES_KEEP_S, limit))
        return self.transaction(work)

    def prune_leader_terms(self, keep: int, limit: int) -> int:
        """Delete up to ``limit`` of the oldest ``leader_terms`` rows beyond the newest ``keep``, in a transaction of
        their own (unfenced housekeeping, like :meth:`prune_applied_batches`; the newest row, the current term's, always
        stays); returns how many."""
        def work(cur: pymysql.cursors.Cursor) -> int:
            cur.execute("SELECT epoch FROM leader_terms ORDER BY epoch DESC LIMIT 1 OFFSET %s", (max(keep, 1),))
            row = cur.fetchone()
            if row is None:
                return 0
            return cur.execute("DELETE FROM leader_terms WHERE epoch <= %s ORDER BY epoch LIMIT %s", (row[0], limit))
        return self.transaction(work)

    def record_phases(self, epoch: int, phases: dict[str, float]) -> None:
        def work(cur: pymysql.cursors.Cursor) -> None:
            cur.execute("UPDATE leader_terms SET phases = %s WHERE epoch = %s", (json.dumps(phases), epoch))
        self.transaction(work)

    def fence_epoch(self) -> int:
        def work(cur: pymysql.cursors.Cursor) -> int:
            cur.execute("SELECT epoch FROM fence WHERE name = 'leader'")
            row = cur.fetchone()
            assert row is not None, "the fence row is created with the schema"
            return row[0]
        return self.transaction(work)

    # --- the leader's batch ------------------------------------------------------------------------------
    def write_batch(self, epoch: int, node_id: str, transitions: list[tuple], states: dict[str, str],
                    now: float, batch_id: str | None = None, written_by: tuple[int, str] | None = None,
                    fenced: bool = True, reopen: bool = False) -> bool:
        """One fenced transaction: transition rows ``(experiment_id, task, from, to, attempt, detail)`` and
        experiment state changes, all at time ``now``, under ``epoch`` and ``node_id`` — or under ``written_by``
        (epoch, node) when a takeover writes what an older leader did (the fence is checked with ``epoch``).
        Once-only per ``batch_id`` (the Neo4j outbox id; a fresh one when None): the id is recorded in the same
        transaction, so a retry whose commit went through, or a takeover writing a dead leader's outbox, writes
        nothing twice. ``fenced=False``: a user's cancel or retry (epoch 0), not a leader's write. A terminal state is
        final (a racing cancel) except with ``reopen`` (a retry's batch): then only FAILED and CANCELLED rows change,
        and lose their ``finished_at``. Returns whether it wrote the batch."""
        row_epoch, row_node = written_by or (epoch, node_id)
        batch_id = batch_id or uuid.uuid4().hex

        def work(cur: pymysql.cursors.Cursor) -> bool:
            if fenced:
                self._check_fence(cur, epoch)
            cur.execute("INSERT IGNORE INTO applied_batches (batch_id, at) VALUES (%s, %s)", (batch_id, now))
            if cur.rowcount == 0:
                log.info("records: batch %s was written before", batch_id)
                return False
            if transitions:
                cur.executemany(
                    "INSERT INTO transitions (experiment_id, task, from_state, to_state, attempt, epoch, node_id, "
                    "at, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(e, t, f, to, a, row_epoch, row_node, now, d) for (e, t, f, to, a, d) in transitions])
            by_state: dict[str, list[str]] = {}
            for experiment_id, state in states.items():
                by_state.setdefault(state, []).append(experiment_id)
            for state, ids in by_state.items():  # one statement per state, not per experiment
                marks = ",".join(["%s"] * len(ids))
                if reopen:
                    cur.execute(f"UPDATE experiments SET state = %s, updated_at = %s, finished_at = NULL "
                                f"WHERE experiment_id IN ({marks}) AND state IN (%s, %s)",
                                (state, now, *ids, *RETRYABLE_EXPERIMENT_STATES))
                    continue
                cur.execute(
                    f"UPDATE experiments SET state = %s, updated_at = %s, finished_at = IF(%s, %s, finished_at) "
                    f"WHERE experiment_id IN ({marks}) AND state NOT IN (%s, %s, %s)",  # terminal is final
                    (state, now, state in TERMINAL_EXPERIMENT_STATES, now, *ids, *TERMINAL_EXPERIMENT_STATES))
            return True
        return self.transaction(work)

    # --- experiments -------------------------------------------------------------------------------------
    def insert_experiment(self, experiment_id: str, type_: str, version: int, params: dict[str, str],
                          template: Template | None = None) -> bool:
        """Insert a QUEUED experiment; False if the id exists with the same type (idempotent submit)."""
        return bool(self.insert_experiments(type_, version, [(experiment_id, params)], template))

    def insert_experiments(self, type_: str, version: int, items: list[tuple[str, dict[str, str]]],
                           template: Template | None = None) -> list[str]:
        """Insert QUEUED experiments of one type in ONE transaction; returns the ids that were new. An id that
        exists with another type is a ConflictError (and nothing is inserted). ``template`` (the definition of
        ``version``) is recorded in the same transaction unless it is already: no experiment row exists without
        the definition Neo4j is rebuilt from (``node/stores/graph_record.py``)."""
        now = time.time()
        ids = [experiment_id for experiment_id, _ in items]

        def work(cur: pymysql.cursors.Cursor) -> list[str]:
            marks = ",".join(["%s"] * len(ids))
            cur.execute(f"SELECT experiment_id, type FROM experiments WHERE experiment_id IN ({marks}) FOR UPDATE",
                        ids)
            existing = dict(cur.fetchall())
            for experiment_id, existing_type in existing.items():
                if existing_type != type_:
                    raise ConflictError(f"experiment {experiment_id!r} exists with type {existing_type!r}, "
                                        f"not {type_!r}")
            new = [(i, p) for i, p in items if i not in existing]
            if new and template is not None:
                cur.execute(TEMPLATE_INSERT, template_row(template, version, now))
            if new:
                # never INSERT IGNORE: it turns a value too long for its column into a warning and stores it cut
                # short; the session is strict (connect.py) and check_params_size() keeps params far below TEXT
                cur.executemany("INSERT INTO experiments (experiment_id, type, template_version, state, "
                                "params, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                                "ON DUPLICATE KEY UPDATE experiment_id = experiment_id",
                                [(i, type_, version, ExperimentState.QUEUED, encode_params(p), now, now)
                                 for i, p in new])
                cur.executemany("INSERT INTO transitions (experiment_id, task, from_state, to_state, attempt, "
                                "epoch, node_id, at) VALUES (%s, NULL, NULL, %s, 0, 0, 'submit', %s)",
                                [(i, ExperimentState.QUEUED, now) for i, _ in new])
            return [i for i, _ in new]
        return self.transaction(work)

    def exists(self, experiment_id: str) -> bool:
        def work(cur: pymysql.cursors.Cursor) -> bool:
            cur.execute("SELECT 1 FROM experiments WHERE experiment_id = %s", (experiment_id,))
            return cur.fetchone() is not None
        return self.transaction(work)

    def get_experiment(self, experiment_id: str) -> dict[str, Any]:
        rows = self.experiments("WHERE experiment_id = %s", (experiment_id,))
        if not rows:
            raise NotFoundError(f"no experiment {experiment_id!r}")
        return rows[0]

    def experiments(self, where: str = "", args: tuple = (), limit: int | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {EXPERIMENT_COLUMNS} FROM experiments {where} ORDER BY created_at, experiment_id"
        if limit:
            sql += f" LIMIT {int(limit)}"

        def work(cur: pymysql.cursors.Cursor) -> list[dict[str, Any]]:
            cur.execute(sql, args)
            cols = [c[0] for c in cur.description]
            return [decoded_params(dict(zip(cols, r, strict=True))) for r in cur.fetchall()]
        return self.transaction(work)

    def experiments_page(self, state: str | None, after: tuple[float, str] | None, limit: int,
                         created_before: float | None = None, type_: str | None = None,
                         created_since: float | None = None, id_prefix: str | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` experiments (of ``state`` and ``type_``, created at or after ``created_since`` and
        before ``created_before``, whose id starts with ``id_prefix``) after the position
        ``(created_at, experiment_id)``, in that order: one index range per page, however deep (idx_created,
        idx_state_created or idx_type_created; the prefix is a filter on that range)."""
        where: list[str] = []
        args: list[object] = []
        for clause, value in (("state = %s", state), ("type = %s", type_), ("created_at >= %s", created_since),
                              ("created_at < %s", created_before)):
            if value is not None:
                where.append(clause)
                args.append(value)
        if id_prefix:
            where.append("experiment_id LIKE %s")
            args.append(id_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        if after is not None:
            where.append("(created_at > %s OR (created_at = %s AND experiment_id > %s))")
            args += [after[0], after[0], after[1]]
        return self.experiments(("WHERE " + " AND ".join(where)) if where else "", tuple(args), limit=limit)

    def in_flight(self) -> int:
        """Experiments QUEUED or RUNNING (a range count of idx_state_created)."""
        def work(cur: pymysql.cursors.Cursor) -> int:
            cur.execute("SELECT COUNT(*) FROM experiments WHERE state IN (%s, %s)", tuple(LIVE_EXPERIMENT_STATES))
            (count,) = cur.fetchone() or (0,)
            return int(count)
        return self.transaction(work)

    def state_counts(self) -> dict[str, int]:
        def work(cur: pymysql.cursors.Cursor) -> dict[str, int]:
            cur.execute("SELECT state, COUNT(*) FROM experiments GROUP BY state")
            return {r[0]: r[1] for r in cur.fetchall()}
        return self.transaction(work)

    def transitions(self, experiment_id: str) -> list[dict[str, Any]]:
        def work(cur: pymysql.cursors.Cursor) -> list[dict[str, Any]]:
            cur.execute("SELECT task, from_state, to_state, attempt, epoch, node_id, at, detail FROM transitions "
                        "WHERE experiment_id = %s ORDER BY id", (experiment_id,))
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        return self.transaction(work)

    def task_outputs(self, experiment_id: str) -> dict[str, dict[str, Any]]:
        """Task name -> the outputs (result) of its attempt that succeeded, for the tasks of an experiment that did."""
        def work(cur: pymysql.cursors.Cursor) -> dict[str, dict[str, Any]]:
            cur.execute("SELECT task, result FROM ledger WHERE experiment_id = %s AND outcome = 'success'",
                        (experiment_id,))
            return {task: json.loads(result) if result else {} for task, result in cur.fetchall()}
        return self.transaction(work)

    def states(self, ids: list[str]) -> dict[str, str]:
        """experiment_id -> state of the ids that exist."""
        if not ids:
            return {}

        def work(cur: pymysql.cursors.Cursor) -> dict[str, str]:
            cur.execute("SELECT experiment_id, state FROM experiments WHERE experiment_id IN ("
                        + ",".join(["%s"] * len(ids)) + ")", ids)
            return {r[0]: r[1] for r in cur.fetchall()}
        return self.transaction(work)

    # --- retention (node/retention/) ---------------------------------------------------------------------
    def latest_definitions(self) -> dict[str, str]:
        """type -> the definition (canonical JSON) of its latest template version."""
        def work(cur: pymysql.cursors.Cursor) -> dict[str, str]:
            cur.execute("SELECT t.type, t.definition FROM templates t JOIN (SELECT type, MAX(version) AS v "
                        "FROM templates GROUP BY type) m ON t.type = m.type AND t.version = m.v")
            return {r[0]: r[1] for r in cur.fetchall()}
        return self.transaction(work)

    def gc_candidates(self, default: float | None, by_type: dict[str, float | None],
                      limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` terminal experiments finished before their type's cutoff (``by_type``, else ``default``;
        None: kept forever), oldest first: ``{experiment_id, type, state, finished_at, cutoff}``. One index range of
        ``idx_state_finished`` per terminal state and cutoff, each ``LIMIT``-ed; rows of types kept longer than the
        default are skipped within the default's range (see docs: the cost of long overrides)."""
        def work(cur: pymysql.cursors.Cursor) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            for state in TERMINAL_EXPERIMENT_STATES:
                for where, args, cutoff_of in _gc_groups(default, by_type):
                    cur.execute("SELECT experiment_id, type, state, finished_at FROM experiments "
                                f"WHERE state = %s AND {where} ORDER BY finished_at LIMIT %s", (state, *args, limit))
                    found += [{"experiment_id": r[0], "type": r[1], "state": r[2], "finished_at": r[3],
                               "cutoff": cutoff_of(r[1])} for r in cur.fetchall()]
            found.sort(key=lambda r: (r["finished_at"], r["experiment_id"]))
            return found[:limit]
        return self.transaction(work)

    def gc_summary(self, default: float | None, by_type: dict[str, float | None]) -> list[dict[str, Any]]:
        """Per type, how many terminal experiments are past its cutoff and the oldest ``finished_at`` among them
        (what ``haorch gc --dry-run`` shows): ``{type, count, oldest_finished_at}``, by type."""
        def work(cur: pymysql.cursors.Cursor) -> list[dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            marks = ",".join(["%s"] * len(TERMINAL_EXPERIMENT_STATES))
            for where, args, _ in _gc_groups(default, by_type):
                cur.execute(f"SELECT type, COUNT(*), MIN(finished_at) FROM experiments WHERE state IN ({marks}) "
                            f"AND {where} GROUP BY type", (*TERMINAL_EXPERIMENT_STATES, *args))
                for type_, count, oldest in cur.fetchall():
                    out[type_] = {"type": type_, "count": int(count), "oldest_finished_at": oldest}
            return [out[t] for t in sorted(out)]
        return self.transaction(work)

    def archive_rows(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """experiment_id -> ``{experiment, transitions, ledger}``: its row (params as stored) and every row of its
        transition log and ledger, for the archive; ids without a row are left out."""
        if not ids:
            return {}
        marks = ",".join(["%s"] * len(ids))

        def rows(cur: pymysql.cursors.Cursor, sql: str) -> list[dict[str, Any]]:
            cur.execute(sql, ids)
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

        def work(cur: pymysql.cursors.Cursor) -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {
                r["experiment_id"]: {"experiment": r, "transitions": [], "ledger": []}
                for r in rows(cur, f"SELECT {EXPERIMENT_COLUMNS} FROM experiments WHERE experiment_id IN ({marks})")}
            for table in ("transitions", "ledger"):
                for r in rows(cur, f"SELECT * FROM {table} WHERE experiment_id IN ({marks}) ORDER BY id"):
                    if r["experiment_id"] in out:
                        out[r["experiment_id"]][table].append(r)
            return out
        return self.transaction(work)

    def delete_experiments(self, epoch: int, cutoffs: dict[str, float]) -> list[str]:
        """Delete the experiment rows, transition log and ledger rows of those experiments of ``cutoffs`` (id ->
        cutoff) still terminal and finished before their cutoff, in ONE fenced transaction; returns the ids
        deleted. READ COMMITTED, so the deletes lock the rows they delete and no gap (the leader's inserts of other
        experiments' rows never wait for them), and the fence row is written last, so the lock every leader write
        takes is held only while this commits (a write, as for every fenced transaction: see
        :meth:`_check_fence`). A crash before the commit deletes nothing (the next gc step does it)."""
        if not cutoffs:
            return []
        ids = sorted(cutoffs)
        marks = ",".join(["%s"] * len(ids))
        terminal = ",".join(["%s"] * len(TERMINAL_EXPERIMENT_STATES))

        def work(cur: pymysql.cursors.Cursor) -> list[str]:
            cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cur.execute(f"SELECT experiment_id, finished_at FROM experiments WHERE experiment_id IN ({marks}) "
                        f"AND state IN ({terminal}) FOR UPDATE", (*ids, *TERMINAL_EXPERIMENT_STATES))
            due = sorted(i for i, finished_at in cur.fetchall()
                         if finished_at is not None and finished_at < cutoffs[i])
            if due:
                chosen = ",".join(["%s"] * len(due))
                cur.execute(f"DELETE FROM transitions WHERE experiment_id IN ({chosen})", due)
                cur.execute(f"DELETE FROM ledger WHERE experiment_id IN ({chosen})", due)
                cur.execute(f"DELETE FROM experiments WHERE experiment_id IN ({chosen}) AND state IN ({terminal})",
                            (*due, *TERMINAL_EXPERIMENT_STATES))
            self._check_fence(cur, epoch)
            return due
        return self.transaction(work)

    def first_advance_after(self, epoch: int, since: float) -> tuple[int, str, float] | None:
        """(epoch, node_id, at) of the first transition written with an epoch above ``epoch`` at or after
        ``since``: where a failover ends (a measurement; ``haorch demo`` and the HA tests time failovers with it)."""
        def work(cur: pymysql.cursors.Cursor) -> tuple[int, str, float] | None:
            cur.execute("SELECT epoch, node_id, at FROM transitions WHERE epoch > %s AND at >= %s ORDER BY id LIMIT 1",
                        (epoch, since))
            row = cur.fetchone()
            return None if row is None else (row[0], row[1], row[2])
        return self.transaction(work)


def _gc_groups(default: float | None, by_type: dict[str, float | None]) -> list[tuple[str, tuple, Any]]:
    """``(condition, args, cutoff_of)`` per cutoff: the default's (types without their own), then each type's; a
    cutoff of None (kept forever) has none."""
    groups: list[tuple[str, tuple, Any]] = []
    if default is not None:
        own = sorted(by_type)
        where = "finished_at < %s" + (f" AND type NOT IN ({','.join(['%s'] * len(own))})" if own else "")
        groups.append((where, (default, *own), lambda _type, c=default: c))
    for type_, cutoff in sorted(by_type.items()):
        if cutoff is not None:
            groups.append(("type = %s AND finished_at < %s", (type_, cutoff), lambda _type, c=cutoff: c))
    return groups


class _FenceUnblocker:
    """While the ``with`` block runs, every ``interval_s``: kill the connections blocking thread ``waiter`` (found
    in information_schema, which needs the PROCESS privilege granted by ``stack up``), on a connection of its own."""

    def __init__(self, cfg: Config, waiter: int, epoch: int, interval_s: float = 0.5) -> None:
        self.cfg, self.waiter, self.epoch = cfg, waiter, epoch
        self._conn: pymysql.connections.Connection | None = None
        self._periodic = Periodic(self.sweep, interval_s, "fence-unblocker")

    def __enter__(self) -> _FenceUnblocker:
        self._periodic.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._periodic.__exit__(*exc)
        if self._conn is not None:
            self._conn.close()

    def sweep(self) -> None:
        if self._conn is None:
            self._conn = mysql_connect(self.cfg)
        with self._conn.cursor() as cur:
            cur.execute(BLOCKERS, (self.waiter,))
            for (blocker,) in cur.fetchall():
                log.warning("records: fence raise of epoch %d blocked by connection %s (an older leader frozen "
                            "mid-transaction?): killing it", self.epoch, blocker)
                try:
                    cur.execute("KILL CONNECTION %s", (blocker,))
                except pymysql.err.OperationalError as exc:  # gone already
                    log.info("records: kill %s: %s", blocker, exc.args[-1])
        self._conn.commit()
