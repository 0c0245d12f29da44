"""The execution ledger in MariaDB: one row per execution attempt, which is also the attempt's claim.

    ledger = Ledger(cfg)
    won = ledger.claim([Start("exp-1", "stage_in", 1, worker="worker-1", epoch=7, started_at=time.time())])
                                                             # {key: id} of the attempts this call claimed
    rows = ledger.rows([("exp-1", "stage_in", 1)])           # {key: LedgerRow} of claims (ended or not)
    ledger.finish([Finish(won[key], ended_at=time.time(), outcome="success", result={}, error=None)])
    ledger.renew(ids)                                        # the holder is alive: push the deadlines ahead
    ledger.abandon([row.id], "why")                          # end claims whose holder let their deadline pass
    ledger.release([row.id])                                 # give back claims whose execution never started
    ledger.mark_replayed(ids)                                # a redelivered request was answered from the ledger
    ledger.in_progress([("exp-1", "stage_in", 1)])            # {key: started_at} of attempts begun, not ended

**Exactly once per attempt.** The table's unique key (experiment_id, task, attempt) is the claim: a worker runs an
attempt only after its own ``INSERT IGNORE`` created that row, so however many copies of a request exist
(takeover re-sends, overdue re-sends, a deposed leader's late publish, a redelivery) at most one worker ever
executes an attempt. A claim carries a ``deadline`` on MariaDB's clock (no clock skew between workers),
CLAIM_LEASE_S ahead, which its holder renews while it is alive (the task queued in its batch or running). A copy
that finds the claim ended replays its response; one that finds it open before its deadline is dropped (its
holder answers); one that finds it open after its deadline *abandons* it: the attempt is ended as failed with an
error starting ``abandoned:`` (its holder died or froze mid-run), and that is the response, which the leader
treats as a lost attempt (retried, not counted against the task's attempts). A holder that comes back late finds
its row ended and publishes nothing. A worker whose channel is lost releases (deletes) the claims it has not
started: their redelivered copies can be claimed again.

Each method is one transaction whatever the batch size. A lost connection (MariaDB restarted, a deadlock, a
dropped socket) is reopened with exponential backoff and the transaction retried for up to ``retry_for_s``, then
:class:`~node.errors.DependencyError`. A retried ``claim`` whose first commit did go through finds its rows taken
(by itself): they are open before their deadline, so the batch drops them and the overdue sweep re-sends them
once the deadline has passed — a delay, never a second execution.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

import pymysql
from pymysql.constants import CLIENT
from pymysql.cursors import Cursor

from node.config import Config
from node.retry import STORE_OPERATION, Stop, call
from node.stores.connect import Role, mysql_connect, suspect_if_silent, suspected
from node.stores.failures import mariadb_boundary

Key = tuple[str, str, int]  # (experiment_id, task, attempt)
CLAIM_LEASE_S = 30.0  # a claim's deadline is this far ahead; its live holder renews it (Ledger.renew) meanwhile
T = TypeVar("T")


class Start(NamedTuple):
    """A claim to insert: the attempt, its worker, and how long it may hold the claim (``hold_s``, from now)."""

    experiment_id: str
    task: str
    attempt: int
    worker: str
    epoch: int
    started_at: float
    hold_s: float = CLAIM_LEASE_S


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
    """A ledger row as read back: the id, the :class:`Start` columns, the end (``result`` decoded from JSON), how
    often it was replayed and whether its claim's deadline has passed (on MariaDB's clock)."""

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
    expired: bool = False

    @property
    def key(self) -> Key:
        return (self.experiment_id, self.task, self.attempt)


_COLUMNS = ", ".join(LedgerRow._fields[:-1])
_NOW = "UNIX_TIMESTAMP(NOW(6))"  # MariaDB's clock: every worker compares claim deadlines with the same one
_EXPIRED = f"COALESCE(deadline, started_at + 3600) < {_NOW}"  # rows claimed before deadlines: an hour
ABANDONED = "abandoned"  # first word of the error of an attempt ended by abandon()


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
    def claim(self, starts: list[Start]) -> dict[Key, int]:
        """Claim each attempt (one INSERT IGNORE): ``{key: id}`` of those this call claimed; an attempt already
        claimed (ended or not) is not in it. ``started_at`` is the claim time until :meth:`finish` gives the real
        start; the deadline is MariaDB's now plus ``hold_s``."""
        unique: dict[Key, Start] = {}
        for start in starts:
            unique.setdefault((start.experiment_id, start.task, start.attempt), start)
        if not unique:
            return {}
        sql = ("INSERT IGNORE INTO ledger (experiment_id, task, attempt, worker, epoch, started_at, deadline) VALUES "
               + ",".join([f"(%s,%s,%s,%s,%s,%s,{_NOW} + %s)"] * len(unique))
               + " RETURNING id, experiment_id, task, attempt")
        args = [value for start in unique.values() for value in start]

        def insert(cur: Cursor) -> dict[Key, int]:
            return {(r[1], r[2], int(r[3])): int(r[0]) for r in _committed(cur, sql, args)}

        won = self._transaction(insert, commit=False)
        taken = [key for key in unique if key not in won]
        if taken:  # a retry whose first commit went through finds its own rows: same worker, same claim time
            for row in self._rows(taken, "ended_at IS NULL"):
                if (row.worker, row.started_at) == (unique[row.key].worker, unique[row.key].started_at):
                    won[row.key] = row.id
        return won

    def rows(self, keys: Iterable[Key]) -> dict[Key, LedgerRow]:
        """The claim of each of ``keys`` that has one (one SELECT), ended or not, with ``expired`` set."""
        return {row.key: row for row in self._rows(keys, "TRUE")}

    def in_progress(self, keys: Iterable[Key]) -> dict[Key, float]:
        """The start of each attempt among ``keys`` that a worker claimed and has not ended (one SELECT)."""
        return {row.key: row.started_at for row in self._rows(keys, "ended_at IS NULL")}

    def outputs(self, tasks: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """The outputs (result) of the attempt of each ``(experiment_id, task)`` that succeeded, if one did (one
        SELECT): what ``{{ tasks.NAME.outputs.KEY }}`` references resolve against (``node/model/outputs.py``)."""
        wanted = list(dict.fromkeys(tasks))
        if not wanted:
            return {}
        sql = ("SELECT experiment_id, task, result FROM ledger WHERE (experiment_id, task) IN ("
               + ",".join(["(%s,%s)"] * len(wanted)) + ") AND outcome = 'success' ORDER BY attempt")
        args = [value for pair in wanted for value in pair]

        def select(cur: Cursor) -> list[tuple]:
            cur.execute(sql, args)
            return list(cur.fetchall())

        return {(exp, task): _load_json(result) or {} for exp, task, result in self._transaction(select)}

    def _rows(self, keys: Iterable[Key], condition: str) -> list[LedgerRow]:
        """Rows of ``keys`` that meet ``condition``, in id order."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return []
        sql = (f"SELECT {_COLUMNS}, {_EXPIRED} FROM ledger WHERE (experiment_id, task, attempt) IN ("
               + ",".join(["(%s,%s,%s)"] * len(wanted)) + f") AND {condition} ORDER BY id")
        args = [value for key in wanted for value in key]

        def select(cur: Cursor) -> list[tuple]:
            cur.execute(sql, args)
            return list(cur.fetchall())

        return [_row(raw) for raw in self._transaction(select)]

    def finish(self, updates: list[Finish]) -> set[int]:
        """Record the end, outcome, result and error (and the real start) of many attempts in one UPDATE; returns
        the ids it ended. A row already ended (abandoned by another worker while this one was frozen) keeps its
        end: its id is not returned, and its holder must not publish a response."""
        if not updates:
            return set()
        columns: dict[str, list[object]] = {
            "started_at": [u.started_at for u in updates],
            "ended_at": [u.ended_at for u in updates],
            "outcome": [u.outcome for u in updates],
            "result": [None if u.result is None else json.dumps(u.result, separators=(",", ":")) for u in updates],
            "error": [u.error for u in updates],
        }
        ids = [u.id for u in updates]
        marks = ",".join(["%s"] * len(ids))
        cases = "CASE id " + " ".join(["WHEN %s THEN %s"] * len(ids)) + " END"
        assignments = [f"{col} = {cases}" for col in columns]
        assignments[0] = f"started_at = COALESCE({cases}, started_at)"  # keep the claim time when none is given
        sql = f"UPDATE ledger SET {', '.join(assignments)} WHERE id IN ({marks}) AND ended_at IS NULL"
        args: list[object] = []
        for values in columns.values():
            for row_id, value in zip(ids, values, strict=True):
                args += [row_id, value]
        args += ids

        def update(cur: Cursor) -> set[int]:
            lock = f"SELECT id FROM ledger WHERE id IN ({marks}) AND ended_at IS NULL FOR UPDATE"
            return {int(r[0]) for r in _committed(cur, f"{lock}; {sql}", [*ids, *args])}

        return self._transaction(update, commit=False)

    def abandon(self, ids: list[int], reason: str) -> dict[int, LedgerRow]:
        """End, as failed with ``"abandoned: <reason>"``, each claim of ``ids`` still open after its deadline (one
        transaction, rows locked); returns the rows it ended, as they now are."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        marks = ",".join(["%s"] * len(ids))
        error = f"{ABANDONED}: {reason}"[:512]

        def work(cur: Cursor) -> dict[int, LedgerRow]:
            cur.execute(f"SELECT id FROM ledger WHERE id IN ({marks}) AND ended_at IS NULL AND {_EXPIRED} "
                        "FOR UPDATE", ids)
            taken = [int(r[0]) for r in cur.fetchall()]
            if not taken:
                return {}
            tmarks = ",".join(["%s"] * len(taken))
            cur.execute(f"UPDATE ledger SET ended_at = {_NOW}, outcome = 'failure', error = %s "
                        f"WHERE id IN ({tmarks})", [error, *taken])
            cur.execute(f"SELECT {_COLUMNS}, TRUE FROM ledger WHERE id IN ({tmarks})", taken)
            return {int(raw[0]): _row(raw) for raw in cur.fetchall()}

        return self._transaction(work)

    def renew(self, ids: list[int], lease_s: float = CLAIM_LEASE_S, within_s: float = 2.0) -> int:
        """Move the deadline of the open claims of ``ids`` to MariaDB's now plus ``lease_s`` (one UPDATE; retried
        for ``within_s`` only: the holder's loop waits for it); returns how many it moved."""
        if not ids:
            return 0
        sql = (f"UPDATE ledger SET deadline = {_NOW} + %s WHERE id IN ({','.join(['%s'] * len(ids))}) "
               "AND ended_at IS NULL")
        return self._transaction(lambda cur: cur.execute(sql, [lease_s, *ids]), within_s=within_s)

    def release(self, ids: list[int]) -> None:
        """Delete the open claims of ``ids`` (executions that never started): their copies can be claimed again."""
        if not ids:
            return
        sql = f"DELETE FROM ledger WHERE id IN ({','.join(['%s'] * len(ids))}) AND ended_at IS NULL"
        self._transaction(lambda cur: cur.execute(sql, ids))

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
    def _transaction(self, work: Callable[[Cursor], T], within_s: float | None = None, commit: bool = True) -> T:
        """Run ``work`` in a transaction and commit (``commit=False``: ``work`` commits itself, see
        :func:`_committed`); on a lost connection reconnect and run it again (for up to ``within_s``, default
        ``retry_for_s``)."""
        def once() -> T:
            with self._boundary:
                conn = self._connection()
                with conn.cursor() as cur:
                    value = work(cur)
                if commit:
                    conn.commit()
                return value

        try:
            policy = self._policy if within_s is None else STORE_OPERATION.within(within_s)
            return call(policy, once, what="ledger: mariadb", stop=self.stop, idle=self.idle,
                        on_failure=self._failed)
        except BaseException:  # nothing half-done may stay open on the connection
            self._drop()
            raise

    def _failed(self, exc: BaseException) -> None:
        """A failed try: its host becomes suspect if the connection went silent; the connection is dropped."""
        if self._conn is not None:
            suspect_if_silent(self._conn.host, exc)
        self._drop()

    def _connection(self) -> pymysql.connections.Connection:
        if self._conn is not None and suspected(self._conn.host):  # cut off, likely: reconnect to another member
            self._drop()
        if self._conn is None:
            # several statements in one query: a transaction and its COMMIT in one round trip (_committed)
            conn = mysql_connect(self.cfg, self.role, client_flag=CLIENT.MULTI_STATEMENTS)
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


def _committed(cur: Cursor, sql: str, args: Sequence[object]) -> list[tuple]:
    """Run the statements ``sql`` (``;``-separated, arguments bound as usual) followed by COMMIT, in one round trip:
    the rows of the first statement. A failing statement raises and stops the rest; the transaction is then left
    uncommitted, and the caller drops the connection (rollback)."""
    cur.execute(f"{sql}; COMMIT", args)
    rows = list(cur.fetchall())
    while cur.nextset():
        pass
    return rows


def _row(raw: tuple) -> LedgerRow:
    """A LedgerRow from a row of ``SELECT {_COLUMNS}, <expired>`` (``result`` decoded from JSON)."""
    return LedgerRow._make((*raw[:9], _load_json(raw[9]), raw[10], raw[11], bool(raw[12])))


def _load_json(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

