"""The execution ledger in MariaDB: one row per execution attempt by a worker, written a batch at a time.

    ledger = Ledger(cfg)
    done = ledger.completed([("exp-1", "stage_in", 1)])      # {key: LedgerRow} of attempts that already ended
    ids = ledger.begin([Start("exp-1", "stage_in", 1, worker="worker-1", epoch=7, started_at=time.time())])
    ledger.finish([Finish(ids[0], ended_at=time.time(), outcome="success", result={}, error=None)])
    ledger.mark_replayed(ids)                                # a redelivered request was answered from the ledger
    ledger.in_progress([("exp-1", "stage_in", 1)])            # {key: started_at} of attempts begun, not ended

Each method is one statement in one transaction whatever the batch size. A lost connection (MariaDB restarted,
a deadlock, a dropped socket) is reopened with exponential backoff and the statement retried for up to
``retry_for_s``, then :class:`~node.errors.DependencyError`. Several rows for one key are allowed on purpose: they
are the duplicate executions (at-least-once delivery) that the chaos checker counts.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import pymysql
from pymysql.cursors import Cursor

from node.config import Config
from node.retry import STORE_OPERATION, Stop, call
from node.stores.connect import Role, mysql_connect_args
from node.stores.failures import mariadb_boundary

Key = tuple[str, str, int]  # (experiment_id, task, attempt)
T = TypeVar("T")


class Start(NamedTuple):
    """A row to insert when an attempt starts."""

    experiment_id: str
    task: str
    attempt: int
    worker: str
    epoch: int
    started_at: float


class Finish(NamedTuple):
    """The end of the attempt in row ``id``; ``result`` is stored as JSON. ``started_at``, when given, replaces
    the start recorded by :meth:`Ledger.begin` with the moment the execution really began."""

    id: int
    ended_at: float
    outcome: str
    result: dict[str, Any] | None
    error: str | None
    started_at: float | None = None


class LedgerRow(NamedTuple):
    """A ledger row as read back, columns in table order: the id, the :class:`Start` columns, the end (``result``
    decoded from JSON) and how often it was replayed."""

    id: int
    experiment_id: str
    task: str
    attempt: int
    worker: str
    epoch: int
    started_at: float
    ended_at: float | None
    outcome: str | None
    result: dict[str, Any] | None
    error: str | None
    replayed_count: int

    @property
    def key(self) -> Key:
        return (self.experiment_id, self.task, self.attempt)


_COLUMNS = ", ".join(LedgerRow._fields)


class Ledger:
    """One pymysql connection to the ledger table; reconnects on its own.

    ``idle(seconds)`` is called to wait between reconnect attempts (default :func:`time.sleep`); a worker passes
    a function that keeps its AMQP heartbeats flowing meanwhile, and its ``stop`` to give up once stopping.
    ``role`` picks the MariaDB user: a worker's may use this table and nothing else.
    """

    def __init__(self, cfg: Config, retry_for_s: float = 60.0, idle: Callable[[float], None] = time.sleep,
                 stop: Stop | None = None, role: Role = "orchestrator") -> None:
        self.cfg = cfg
        self.role: Role = role
        self.retry_for_s = retry_for_s
        self.idle = idle
        self.stop = stop
        self._policy = STORE_OPERATION.within(retry_for_s)
        self._boundary = mariadb_boundary(cfg)
        self._conn: pymysql.connections.Connection | None = None

    # --- the operations ------------------------------------------------------------------
    def completed(self, keys: Iterable[Key]) -> dict[Key, LedgerRow]:
        """The ended attempts among ``keys`` (one SELECT); the earliest row wins when there are several."""
        found: dict[Key, LedgerRow] = {}
        for row in self._rows(keys, "ended_at IS NOT NULL"):
            found.setdefault(row.key, row)
        return found

    def in_progress(self, keys: Iterable[Key]) -> dict[Key, float]:
        """The latest start of each attempt among ``keys`` that a worker began and has not ended (one SELECT)."""
        return {row.key: row.started_at for row in self._rows(keys, "ended_at IS NULL")}

    def _rows(self, keys: Iterable[Key], condition: str) -> list[LedgerRow]:
        """Rows of ``keys`` that meet ``condition``, in id order."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return []
        sql = (f"SELECT {_COLUMNS} FROM ledger WHERE (experiment_id, task, attempt) IN ("
               + ",".join(["(%s,%s,%s)"] * len(wanted)) + f") AND {condition} ORDER BY id")
        args = [value for key in wanted for value in key]

        def select(cur: Cursor) -> list[tuple]:
            cur.execute(sql, args)
            return list(cur.fetchall())

        return [LedgerRow._make((*raw[:9], _load_json(raw[9]), *raw[10:])) for raw in self._transaction(select)]

    def begin(self, rows: list[Start]) -> list[int]:
        """Insert one start row per attempt in one transaction; the new ids, in the order of ``rows``."""
        if not rows:
            return []
        sql = ("INSERT INTO ledger (experiment_id, task, attempt, worker, epoch, started_at) VALUES "
               + ",".join(["(%s,%s,%s,%s,%s,%s)"] * len(rows)) + " RETURNING id")
        args = [value for row in rows for value in row]

        def insert(cur: Cursor) -> list[int]:
            cur.execute(sql, args)
            return [int(r[0]) for r in cur.fetchall()]

        return self._transaction(insert)

    def finish(self, updates: list[Finish]) -> None:
        """Record the end, outcome, result and error (and the real start) of many attempts in one UPDATE."""
        if not updates:
            return
        columns: dict[str, list[object]] = {
            "started_at": [u.started_at for u in updates],
            "ended_at": [u.ended_at for u in updates],
            "outcome": [u.outcome for u in updates],
            "result": [None if u.result is None else json.dumps(u.result, separators=(",", ":")) for u in updates],
            "error": [u.error for u in updates],
        }
        ids = [u.id for u in updates]
        cases = "CASE id " + " ".join(["WHEN %s THEN %s"] * len(ids)) + " END"
        assignments = [f"{col} = {cases}" for col in columns]
        assignments[0] = f"started_at = COALESCE({cases}, started_at)"  # keep begin's start when none is given
        sql = f"UPDATE ledger SET {', '.join(assignments)} WHERE id IN ({','.join(['%s'] * len(ids))})"
        args: list[object] = []
        for values in columns.values():
            for row_id, value in zip(ids, values, strict=True):
                args += [row_id, value]
        args += ids
        self._transaction(lambda cur: cur.execute(sql, args))

    def mark_replayed(self, ids: Iterable[int]) -> None:
        """Add one to ``replayed_count`` of each id, once per occurrence in ``ids`` (one UPDATE)."""
        counts = Counter(ids)
        if not counts:
            return
        cases = " ".join(["WHEN %s THEN %s"] * len(counts))
        sql = (f"UPDATE ledger SET replayed_count = replayed_count + CASE id {cases} END WHERE id IN ("
               + ",".join(["%s"] * len(counts)) + ")")
        args = [v for pair in counts.items() for v in pair] + list(counts)
        self._transaction(lambda cur: cur.execute(sql, args))

    def close(self) -> None:
        self._drop()

    # --- connection handling ------------------------------------------------------------------
    def _transaction(self, work: Callable[[Cursor], T]) -> T:
        """Run ``work`` in a transaction and commit; on a lost connection reconnect and run it again."""
        def once() -> T:
            with self._boundary:
                conn = self._connection()
                with conn.cursor() as cur:
                    value = work(cur)
                conn.commit()
                return value

        try:
            return call(self._policy, once, what="ledger: mariadb", stop=self.stop, idle=self.idle,
                        on_failure=lambda _exc: self._drop())
        except BaseException:  # nothing half-done may stay open on the connection
            self._drop()
            raise

    def _connection(self) -> pymysql.connections.Connection:
        if self._conn is None:
            conn = pymysql.connect(**mysql_connect_args(self.cfg, self.role))
            with conn.cursor() as cur:  # every statement sees what other workers committed before it
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - the connection is already broken; nothing to release
                pass


def _load_json(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

