"""What MariaDB and Neo4j recorded about a set of experiments, read once into plain data for the rules.

    snapshot = read(cfg, Scope(experiment_ids=ids))    # or Scope(since=started_at); Scope() is everything
    snapshot = read(cfg, Scope(experiment_ids=ids, archive_dir=cfg.archive_dir))  # also what retention archived

I/O only, no verdict. MariaDB is read in ONE transaction (``START TRANSACTION WITH CONSISTENT SNAPSHOT``): about
a dozen aggregate statements whatever the number of experiments; Neo4j in one query per ``NEO4J_CHUNK`` experiments;
the per-task work happens in the rules. A crash mid-read leaves nothing behind (the transaction is read only and
rolled back). Neo4j is read after MariaDB, so a run still in progress can look inconsistent; check after a run.

With ``archive_dir``, the experiments of the scope that retention deleted (``node/retention/``) are read from their
archive records (``node/verify/archived.py``); without it, they are simply not in the snapshot (never reported
lost). The archive is read first: its rows count for each epoch's first act, which the fencing rule compares with.

Times are the UNIX seconds the writers stored; every process runs on one machine, so they share a clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from node.config import Config
from node.model.advance import RETRY_WRITER
from node.model.states import REDISPATCHED, TERMINAL_EXPERIMENT_STATES, TaskStatus
from node.retention.archive import read_archive
from node.stores.connect import mysql_connect, neo4j_driver

NEO4J_CHUNK = 5000
LATE_ROWS_PER_EPOCH = 100  # late rows kept per stale epoch; the rest are only counted

Key = tuple[str, str]  # (experiment_id, task)


@dataclass
class Scope:
    """The experiments to read: created at or after ``since`` and/or in ``experiment_ids`` (None: no limit); those
    retention deleted are read from ``archive_dir`` when given (empty or None: not at all)."""

    since: float | None = None
    experiment_ids: list[str] | None = None
    archive_dir: str | None = None

    def __post_init__(self) -> None:
        if self.experiment_ids is not None:
            self.experiment_ids = list(dict.fromkeys(self.experiment_ids))

    def experiments(self) -> tuple[str, list[Any]]:
        """SQL condition and arguments on the ``experiments`` table."""
        return self._where("created_at >= %s")

    def rows(self) -> tuple[str, list[Any]]:
        """SQL condition and arguments on the other tables keyed by experiment_id."""
        return self._where("experiment_id IN (SELECT experiment_id FROM experiments WHERE created_at >= %s)")

    def _where(self, since_condition: str) -> tuple[str, list[Any]]:
        parts: list[str] = []
        args: list[Any] = []
        if self.experiment_ids is not None:
            ids = self.experiment_ids
            parts.append("experiment_id IN (" + ",".join(["%s"] * len(ids)) + ")" if ids else "FALSE")
            args += ids
        if self.since is not None:
            parts.append(since_condition)
            args.append(self.since)
        return (" AND ".join(parts) or "TRUE"), args


@dataclass(frozen=True)
class Task:
    """A Neo4j Task node."""

    executed: bool = True
    flags: int | None = 1
    finished_at: float | None = None
    predecessors: tuple[str, ...] = ()       # names of the tasks it DEPENDS_ON
    attempt: int = 0                         # its latest attempt (0: never dispatched)


@dataclass(frozen=True)
class TaskLog:
    """One task's rows in the MariaDB transition log."""

    succeeded: int = 0                        # SUCCEEDED rows, any attempt
    first_succeeded_at: float | None = None
    first_dispatched_at: float | None = None  # DISPATCHED or REDISPATCHED
    succeeded_by: str = ""                    # "attempt A epoch E by NODE at T; ..." of the SUCCEEDED rows
    dispatched_attempts: frozenset[int] = frozenset()  # attempts with a DISPATCHED row (REDISPATCHED not counted)
    last_ended_at: float | None = None        # the latest SUCCEEDED or FAILED row


@dataclass(frozen=True)
class Start:
    """The earliest ledger row of a task (ties: the lowest id)."""

    at: float
    worker: str
    attempt: int


@dataclass(frozen=True)
class RepeatedDispatch:
    """More than one DISPATCHED row for one (experiment, task, attempt)."""

    experiment_id: str
    task: str
    attempt: int
    count: int
    by: str                                   # "epoch E by NODE at T; ..."


@dataclass(frozen=True)
class RepeatedExecution:
    """More than one ledger row for one (experiment, task, attempt): possible only without the unique key."""

    experiment_id: str
    task: str
    attempt: int
    count: int
    by: str                                   # "WORKER at STARTED_AT; ..."


@dataclass(frozen=True)
class AttemptOrder:
    """When one attempt was first dispatched and first ended (SUCCEEDED or FAILED) in the transition log."""

    experiment_id: str
    task: str
    attempt: int
    dispatched_at: float
    ended_at: float


@dataclass(frozen=True)
class TransitionRow:
    experiment_id: str
    task: str | None
    to_state: str
    attempt: int
    epoch: int
    node_id: str
    at: float


@dataclass
class Snapshot:
    """Everything the rules look at; build one by hand to test a rule."""

    scope: Scope = field(default_factory=Scope)
    experiments: dict[str, str] = field(default_factory=dict)          # MariaDB experiments.state
    graph_states: dict[str, str | None] = field(default_factory=dict)  # Neo4j Experiment.state (None: no node)
    tasks: dict[Key, Task] = field(default_factory=dict)               # Neo4j
    log: dict[Key, TaskLog] = field(default_factory=dict)              # transitions, per task
    repeated_dispatches: list[RepeatedDispatch] = field(default_factory=list)
    terminal_at: dict[str, float] = field(default_factory=dict)        # earliest terminal experiment row
    early_ends: list[AttemptOrder] = field(default_factory=list)      # read: only attempts ended before dispatched
    first_starts: dict[Key, Start] = field(default_factory=dict)       # ledger
    epoch_first_at: dict[int, float] = field(default_factory=dict)     # earliest act of each epoch, whole table
    epoch_nodes: dict[int, tuple[str, ...]] = field(default_factory=dict)  # node ids per epoch, scoped rows
    terms: dict[int, str] = field(default_factory=dict)                # leader_terms: epoch -> node_id
    late_rows: list[TransitionRow] = field(default_factory=list)       # scoped rows written after a newer epoch acted
    late_more: dict[int, int] = field(default_factory=dict)            # late rows beyond LATE_ROWS_PER_EPOCH
    transitions: int = 0
    executions: int = 0                                                # ledger rows
    repeated_executions: list[RepeatedExecution] = field(default_factory=list)
    replays: int = 0                                                   # sum of ledger.replayed_count
    archived: int = 0                                                  # experiments read from the archive

    @property
    def duplicate_keys(self) -> int:
        """Ledger keys (experiment, task, attempt) with more than one row."""
        return len(self.repeated_executions)

    @property
    def duplicate_rows(self) -> int:
        """Rows beyond the first for those keys."""
        return sum(r.count - 1 for r in self.repeated_executions)

    def newer_epoch_acted_at(self) -> dict[int, float]:
        """F(e) = the earliest first act of any epoch above e, for every epoch that has a higher one."""
        fences: dict[int, float] = {}
        best: float | None = None
        for epoch in sorted(self.epoch_first_at, reverse=True):
            if best is not None:
                fences[epoch] = best
            first = self.epoch_first_at[epoch]
            best = first if best is None else min(best, first)
        return fences

    def epoch_owners(self) -> dict[int, set[str]]:
        """Every node seen acting with each epoch of the scoped rows: their writers and the leader_terms row."""
        return {epoch: set(nodes) | ({self.terms[epoch]} if epoch in self.terms else set())
                for epoch, nodes in self.epoch_nodes.items()}


def read(cfg: Config, scope: Scope) -> Snapshot:
    from node.verify.archived import add_archived, epoch_first_acts  # it builds on this module's types

    snapshot = Snapshot(scope=scope)
    archived = read_archive(Path(scope.archive_dir)) if scope.archive_dir else {}
    _read_mariadb(cfg, snapshot, epoch_first_acts(archived.values()))
    _read_neo4j(cfg, snapshot)
    add_archived(snapshot, archived)
    return snapshot


def _read_mariadb(cfg: Config, out: Snapshot, archived_first_at: dict[int, float] | None = None) -> None:
    exp_where, exp_args = out.scope.experiments()
    where, args = out.scope.rows()
    dispatches = (TaskStatus.DISPATCHED, REDISPATCHED)
    ends = (TaskStatus.SUCCEEDED, TaskStatus.FAILED)
    conn = mysql_connect(cfg, read_timeout=300)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            cur.execute(f"SELECT experiment_id, state FROM experiments WHERE {exp_where}", exp_args)
            out.experiments = {r[0]: r[1] for r in cur.fetchall()}
            cur.execute(
                "SELECT experiment_id, task, SUM(to_state = %s), MIN(IF(to_state = %s, at, NULL)), "
                "MIN(IF(to_state IN (%s, %s), at, NULL)), "
                "GROUP_CONCAT(IF(to_state = %s, CONCAT('attempt ', attempt, ' epoch ', epoch, ' by ', "
                "node_id, ' at ', at), NULL) ORDER BY id SEPARATOR '; '), "
                "GROUP_CONCAT(DISTINCT IF(to_state = %s, attempt, NULL)), MAX(IF(to_state IN (%s, %s), at, NULL)) "
                f"FROM transitions WHERE task IS NOT NULL AND {where} GROUP BY experiment_id, task",
                [TaskStatus.SUCCEEDED, TaskStatus.SUCCEEDED, *dispatches, TaskStatus.SUCCEEDED, TaskStatus.DISPATCHED,
                 *ends, *args])
            out.log = {(r[0], r[1]): TaskLog(int(r[2] or 0), r[3], r[4], r[5] or "", _ints(r[6]), r[7])
                       for r in cur.fetchall()}
            cur.execute(
                "SELECT experiment_id, task, attempt, COUNT(*), GROUP_CONCAT(CONCAT('epoch ', epoch, ' by ', node_id, "
                "' at ', at) ORDER BY id SEPARATOR '; ') FROM transitions "
                f"WHERE to_state = %s AND task IS NOT NULL AND {where} "
                "GROUP BY experiment_id, task, attempt HAVING COUNT(*) > 1", [TaskStatus.DISPATCHED, *args])
            out.repeated_dispatches = [RepeatedDispatch(*r) for r in cur.fetchall()]
            _read_order(cur, out, where, args)
            cur.execute(f"SELECT COUNT(*) FROM transitions WHERE {where}", args)
            (count,) = _one(cur)
            out.transitions = int(count)
            cur.execute(
                "SELECT l.experiment_id, l.task, l.started_at, l.worker, l.attempt FROM ledger l JOIN "
                f"(SELECT experiment_id, task, MIN(started_at) AS s FROM ledger WHERE {where} "
                "GROUP BY experiment_id, task) m ON l.experiment_id = m.experiment_id AND l.task = m.task "
                "AND l.started_at = m.s ORDER BY l.id", args)
            for r in cur.fetchall():
                out.first_starts.setdefault((r[0], r[1]), Start(r[2], r[3], r[4]))
            cur.execute(
                "SELECT experiment_id, task, attempt, COUNT(*), GROUP_CONCAT(CONCAT(worker, ' at ', started_at) "
                f"ORDER BY id SEPARATOR '; ') FROM ledger WHERE {where} "
                "GROUP BY experiment_id, task, attempt HAVING COUNT(*) > 1", args)
            out.repeated_executions = [RepeatedExecution(*r) for r in cur.fetchall()]
            cur.execute(f"SELECT COUNT(*), COALESCE(SUM(replayed_count), 0) FROM ledger WHERE {where}", args)
            executions, replays = _one(cur)
            out.executions, out.replays = int(executions), int(replays)
            _read_epochs(cur, out, where, args, archived_first_at or {})
        conn.rollback()
    finally:
        conn.close()


def _one(cur: pymysql.cursors.Cursor) -> tuple[Any, ...]:
    """The row of an aggregate query (COUNT(*) always returns one)."""
    row = cur.fetchone()
    assert row is not None
    return row


def _read_order(cur: pymysql.cursors.Cursor, out: Snapshot, where: str, args: list[Any]) -> None:
    """For the causal order of the log: each experiment's earliest terminal row since its last retry (a user's retry
    reopens it: rows of the ``retry`` writer), and the attempts whose first SUCCEEDED or FAILED row is earlier than
    their first DISPATCHED row (normally none: only those are fetched)."""
    terminal = ",".join(["%s"] * len(TERMINAL_EXPERIMENT_STATES))
    cur.execute(f"SELECT experiment_id, MIN(at) FROM transitions t LEFT JOIN ("
                f"  SELECT experiment_id, MAX(at) AS reopened FROM transitions "
                f"  WHERE task IS NULL AND node_id = %s GROUP BY experiment_id) r USING (experiment_id) "
                f"WHERE task IS NULL AND to_state IN ({terminal}) AND at >= COALESCE(r.reopened, 0) "
                f"AND {where} GROUP BY experiment_id", [RETRY_WRITER, *TERMINAL_EXPERIMENT_STATES, *args])
    out.terminal_at = {r[0]: r[1] for r in cur.fetchall()}
    cur.execute(
        "SELECT experiment_id, task, attempt, MIN(IF(to_state = %s, at, NULL)) AS d, "
        "MIN(IF(to_state IN (%s, %s), at, NULL)) AS f FROM transitions "
        f"WHERE task IS NOT NULL AND to_state IN (%s, %s, %s) AND {where} "
        "GROUP BY experiment_id, task, attempt HAVING f < d",
        [TaskStatus.DISPATCHED, TaskStatus.SUCCEEDED, TaskStatus.FAILED,
         TaskStatus.DISPATCHED, TaskStatus.SUCCEEDED, TaskStatus.FAILED, *args])
    out.early_ends = [AttemptOrder(*r) for r in cur.fetchall()]


def _ints(csv: str | None) -> frozenset[int]:
    """The integers of a GROUP_CONCAT (None: none)."""
    return frozenset(int(x) for x in csv.split(",")) if csv else frozenset()


def _read_epochs(cur: pymysql.cursors.Cursor, out: Snapshot, where: str, args: list[Any],
                 archived_first_at: dict[int, float]) -> None:
    """Leader writes only (epoch 0 rows are the unfenced submit and cancel rows): the first act of every epoch
    over the whole table and the archive (``archived_first_at``), the actors of the scoped rows, leader terms, and
    the scoped rows written after a newer epoch had acted (fetched only for the epochs whose last scoped act is that
    late)."""
    cur.execute("SELECT epoch, MIN(at) FROM transitions WHERE epoch > 0 GROUP BY epoch")
    out.epoch_first_at = dict(archived_first_at)
    for epoch, at in cur.fetchall():
        out.epoch_first_at[int(epoch)] = min(at, out.epoch_first_at.get(int(epoch), at))
    cur.execute("SELECT epoch, MAX(at), GROUP_CONCAT(DISTINCT node_id ORDER BY node_id SEPARATOR ',') "
                f"FROM transitions WHERE epoch > 0 AND {where} GROUP BY epoch", args)
    last_at: dict[int, float] = {}
    for epoch, at, nodes in cur.fetchall():
        last_at[int(epoch)] = at
        out.epoch_nodes[int(epoch)] = tuple(nodes.split(","))
    cur.execute("SELECT epoch, node_id FROM leader_terms")
    out.terms = {int(r[0]): r[1] for r in cur.fetchall()}
    for epoch, fence_at in out.newer_epoch_acted_at().items():
        if epoch not in last_at or last_at[epoch] <= fence_at:
            continue
        cur.execute("SELECT experiment_id, task, to_state, attempt, epoch, node_id, at FROM transitions "
                    f"WHERE epoch = %s AND at > %s AND {where} ORDER BY at, id LIMIT %s",
                    [epoch, fence_at, *args, LATE_ROWS_PER_EPOCH + 1])
        rows = [TransitionRow(*r) for r in cur.fetchall()]
        out.late_rows += rows[:LATE_ROWS_PER_EPOCH]
        if len(rows) > LATE_ROWS_PER_EPOCH:
            cur.execute(f"SELECT COUNT(*) FROM transitions WHERE epoch = %s AND at > %s AND {where}",
                        [epoch, fence_at, *args])
            row = cur.fetchone()
            assert row is not None  # COUNT(*) always returns one row
            out.late_more[epoch] = int(row[0]) - LATE_ROWS_PER_EPOCH


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _read_neo4j(cfg: Config, out: Snapshot) -> None:
    """One query per chunk of experiments: its state, and each task's flags, flag time, predecessors and
    latest attempt."""
    with neo4j_driver(cfg) as driver:
        for chunk in _chunks(list(out.experiments), NEO4J_CHUNK):
            records, _, _ = driver.execute_query(
                "UNWIND $ids AS id OPTIONAL MATCH (e:Experiment {experiment_id: id}) "
                "OPTIONAL MATCH (t:Task {experiment_id: id}) "
                "RETURN id, e.state AS state, collect([t.name, t.flags, t.executed, t.finished_at, "
                "[(t)-[:DEPENDS_ON]->(p:Task) | p.name], t.attempt]) AS tasks", ids=chunk, routing_="r")
            for r in records:
                out.graph_states[r["id"]] = r["state"]
                for name, flags, executed, finished_at, predecessors, attempt in r["tasks"]:
                    if name is not None:
                        out.tasks[(r["id"], name)] = Task(bool(executed), flags, finished_at,
                                                          tuple(predecessors or ()), int(attempt or 0))
