"""The invariant checker: reads MariaDB and Neo4j after a run and names every broken invariant.

    report = check(cfg, since=started_at)            # experiments created at or after ``since``
    report = check(cfg, experiment_ids=["exp-1"])    # just these (tests plant rows under unique ids)
    if not report.ok:
        print(report.to_markdown())

A handful of aggregate queries (about ten SQL statements in one consistent snapshot and one Cypher query
per 5,000 experiments) whatever the number of experiments; the per-task work happens in Python.

The rules (ARCHITECTURE.md, "Invariants"). Times are the UNIX seconds the writers stored; every process runs on
one machine, so they share a clock. ``at`` of a transition is the ``now`` its leader took *before* its fenced
transaction, and a batch's rows all carry the same ``now``.

1. No lost work
   - ``lost_work``: an experiment in MariaDB is QUEUED or RUNNING.
   - ``state_mismatch``: MariaDB ``experiments.state`` differs from Neo4j ``Experiment.state``, or Neo4j has no
     Experiment node for it.
2. No double advancement
   - ``double_advancement``: more than one SUCCEEDED transition for one (experiment, task), any attempt (the
     takeover repair writes attempt 0 only when none exists).
   - ``double_flag``: a Neo4j Task with ``flags > 1`` (the flag counter goes up once per flagging).
   - ``double_dispatch``: more than one DISPATCHED transition for one (experiment, task, attempt). A successor
     is dispatched (attempt 1) once per flag of its last predecessor; a retry dispatches attempt n+1 once.
     REDISPATCHED rows (re-sends after a takeover or a timeout) are allowed any number of times.
3. Order — for every edge ``(successor)-[:DEPENDS_ON]->(predecessor)``, let P be the time the predecessor's success
   became durable: the earlier of its SUCCEEDED transition ``at`` and, when the Neo4j task is executed, its
   ``finished_at`` (the flag and the successor's dispatch commit in one Neo4j transaction; a leader that dies
   before its MariaDB commit leaves the SUCCEEDED row to be repaired later, with a later ``at``).
   - ``order_dispatch``: the successor's first DISPATCHED/REDISPATCHED ``at`` < P, or the successor was
     dispatched and the predecessor never succeeded.
   - ``order_start``: a ledger row of the successor (any attempt, any worker) has ``started_at`` < P, or the
     successor started and the predecessor never succeeded.
   Equal times are fine: a batch flags the predecessor and dispatches the successor with one ``now``.
4. Fencing — only leader writes count: transitions with ``epoch > 0`` (epoch 0 rows are the unfenced submit and
   cancel rows, node ids ``submit``/``cancel``).
   - ``fencing``: a row (epoch e, at t) such that some epoch e' > e had already acted before t, i.e.
     ``t > F(e) = min{first_at(e') : e' > e}`` where ``first_at(e')`` is the earliest ``at`` of any
     transitions row of epoch e' (over the whole table, not just the checked experiments). Why that proof and
     not ``leader_terms.elected_at`` or ``fence.raised_at``: both are taken before the fence transaction
     commits, so an old leader may still legitimately commit after them; but a new leader's first batch takes
     its ``now`` after its fence raise committed, so an old leader whose ``now`` is later than that would
     have read the raised fence and been rejected. Strictly later only (``tolerance_s`` adds slack).
   - ``one_leader_per_epoch``: the transitions rows of one epoch come from more than one node_id, or from a
     node other than the ``leader_terms`` row of that epoch.
5. Duplicate executions (not violations): ``duplicate_executions`` counts ledger keys (experiment, task,
   attempt) with more than one row, ``duplicate_rows`` the extra rows, ``replays`` the sum of
   ``replayed_count`` (redeliveries answered from the ledger).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import pymysql

from node.config import Config
from node.stack.mariadb import mysql_connect_args
from node.stack.neo4j import neo4j_driver

#: every violation kind, with the invariant it breaks
KINDS: dict[str, str] = {
    "lost_work": "1 no lost work: experiment not terminal",
    "state_mismatch": "1 no lost work: MariaDB and Neo4j disagree on the experiment state",
    "double_advancement": "2 no double advancement: more than one SUCCEEDED transition for a task",
    "double_flag": "2 no double advancement: Neo4j task flagged more than once",
    "double_dispatch": "2 no double advancement: more than one DISPATCHED transition for one attempt",
    "order_dispatch": "3 order: successor dispatched before its predecessor's success was durable",
    "order_start": "3 order: successor started before its predecessor's success was durable",
    "fencing": "4 fencing: write with an epoch lower than one that had already acted",
    "one_leader_per_epoch": "4 fencing: more than one node acted in one epoch",
}
LIVE_STATES = ("QUEUED", "RUNNING")
NEO4J_CHUNK = 5000
FENCING_ROWS_PER_EPOCH = 100  # offending rows named per stale epoch; the rest are summed up in one more line


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str
    experiment_id: str | None = None

    def line(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass
class Report:
    """What :func:`check` found: violations and counters."""

    violations: list[Violation] = field(default_factory=list)
    experiments: int = 0
    tasks: int = 0
    duplicate_executions: int = 0   # ledger keys (experiment, task, attempt) with more than one row
    duplicate_rows: int = 0         # rows beyond the first for those keys
    replays: int = 0                # sum of ledger.replayed_count
    epochs: int = 0                 # leader epochs that wrote transitions of the checked experiments
    executions: int = 0             # ledger rows
    transitions: int = 0            # transitions rows
    states: dict[str, int] = field(default_factory=dict)
    since: float | None = None
    experiment_ids: int | None = None  # how many ids the check was restricted to, if any
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for v in self.violations:
            counts[v.kind] += 1
        return dict(counts)

    def counters(self) -> dict[str, Any]:
        return {"experiments": self.experiments, "tasks": self.tasks, "transitions": self.transitions,
                "executions": self.executions, "duplicate_executions": self.duplicate_executions,
                "duplicate_rows": self.duplicate_rows, "replays": self.replays, "epochs": self.epochs}

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.counters(), "states": dict(self.states),
                "violations_by_kind": self.by_kind(), "violations": [asdict(v) for v in self.violations],
                "since": self.since, "experiment_ids": self.experiment_ids, "elapsed_s": round(self.elapsed_s, 3)}

    def to_markdown(self, max_per_kind: int = 50) -> str:
        scope = "all experiments"
        if self.experiment_ids is not None:
            scope = f"{self.experiment_ids} given experiment id(s)"
        if self.since is not None:
            scope += f" created at or after {self.since:.3f}"
        lines = [f"## Invariant check: {'OK' if self.ok else f'{len(self.violations)} violation(s)'}", "",
                 f"Scope: {scope}; checked in {self.elapsed_s:.2f} s.", "",
                 "| counter | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in self.counters().items()]
        if self.states:
            lines.append("| states | " + ", ".join(f"{s} {n}" for s, n in sorted(self.states.items())) + " |")
        lines.append("")
        if self.ok:
            lines.append("Every invariant holds (duplicate executions are counted, not violations).")
            return "\n".join(lines) + "\n"
        lines += ["| invariant | kind | violations |", "| --- | --- | --- |"]
        lines += [f"| {KINDS.get(k, '?')} | `{k}` | {n} |" for k, n in sorted(self.by_kind().items())]
        lines.append("")
        shown: dict[str, int] = defaultdict(int)
        for v in self.violations:
            shown[v.kind] += 1
            if shown[v.kind] <= max_per_kind:
                lines.append(f"- `{v.kind}` {v.detail}")
        for kind, n in sorted(shown.items()):
            if n > max_per_kind:
                lines.append(f"- `{kind}`: {n - max_per_kind} more not shown")
        return "\n".join(lines) + "\n"


class _Scope:
    """The SQL condition that restricts rows of transitions/ledger/experiments to the checked experiments."""

    def __init__(self, since: float | None, experiment_ids: list[str] | None) -> None:
        self.since = since
        self.ids = None if experiment_ids is None else list(dict.fromkeys(experiment_ids))

    def experiments(self) -> tuple[str, list[Any]]:
        return self._where("created_at >= %s")

    def rows(self) -> tuple[str, list[Any]]:
        """For tables keyed by experiment_id other than ``experiments``."""
        return self._where("experiment_id IN (SELECT experiment_id FROM experiments WHERE created_at >= %s)")

    def _where(self, since_condition: str) -> tuple[str, list[Any]]:
        parts, args = [], []
        if self.ids is not None:
            parts.append("experiment_id IN (" + ",".join(["%s"] * len(self.ids)) + ")" if self.ids else "FALSE")
            args += self.ids
        if self.since is not None:
            parts.append(since_condition)
            args.append(self.since)
        return (" AND ".join(parts) or "TRUE"), args


def check(cfg: Config, since: float | None = None, experiment_ids: list[str] | None = None,
          tolerance_s: float = 0.0) -> Report:
    """Verify Invariants 1-5 over the experiments created at or after ``since`` and/or in ``experiment_ids``
    (all experiments when both are None)."""
    started = time.perf_counter()
    scope = _Scope(since, experiment_ids)
    report = Report(since=since, experiment_ids=None if scope.ids is None else len(scope.ids))
    sql = _read_mariadb(cfg, scope, tolerance_s)
    graph = _read_neo4j(cfg, [e for e, _ in sql.experiments])
    out = report.violations
    _check_terminal(sql, graph, report)
    _check_advancement(sql, graph, out)
    _check_order(sql, graph, out)
    _check_fencing(sql, out)
    report.tasks = graph.tasks
    report.transitions, report.executions = sql.transitions, sql.executions
    report.duplicate_executions, report.duplicate_rows, report.replays = (sql.duplicate_keys, sql.duplicate_rows,
                                                                           sql.replays)
    report.epochs = len(sql.epochs_scoped)
    report.elapsed_s = time.perf_counter() - started
    return report


# --- reading the stores ----------------------------------------------------------------------------------
@dataclass
class _Sql:
    experiments: list[tuple[str, str]] = field(default_factory=list)          # (experiment_id, state)
    # (exp, task) -> (SUCCEEDED rows, first SUCCEEDED at, first DISPATCHED/REDISPATCHED at, who succeeded it)
    tasks: dict[tuple[str, str], tuple] = field(default_factory=dict)
    double_dispatch: list[tuple] = field(default_factory=list)                # (exp, task, attempt, n, who)
    # (exp, task) -> (earliest started_at, its worker, its attempt)
    first_start: dict[tuple[str, str], tuple] = field(default_factory=dict)
    epochs_all: dict[int, float] = field(default_factory=dict)                # epoch -> first at, whole table
    epochs_scoped: dict[int, tuple] = field(default_factory=dict)             # epoch -> (max at, [node ids])
    terms: dict[int, str] = field(default_factory=dict)                       # epoch -> leader_terms.node_id
    stale: list[tuple] = field(default_factory=list)                          # offending fencing rows
    stale_more: dict[int, int] = field(default_factory=dict)
    duplicate_keys: int = 0
    duplicate_rows: int = 0
    replays: int = 0
    executions: int = 0
    transitions: int = 0


def _read_mariadb(cfg: Config, scope: _Scope, tolerance_s: float) -> _Sql:
    out = _Sql()
    exp_where, exp_args = scope.experiments()
    where, args = scope.rows()
    conn = pymysql.connect(**{**mysql_connect_args(cfg), "read_timeout": 300})  # type: ignore[arg-type]
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            cur.execute(f"SELECT experiment_id, state FROM experiments WHERE {exp_where}", exp_args)
            out.experiments = [(r[0], r[1]) for r in cur.fetchall()]
            cur.execute(
                "SELECT experiment_id, task, SUM(to_state = 'SUCCEEDED'), MIN(IF(to_state = 'SUCCEEDED', at, NULL)), "
                "MIN(IF(to_state IN ('DISPATCHED', 'REDISPATCHED'), at, NULL)), "
                "GROUP_CONCAT(IF(to_state = 'SUCCEEDED', CONCAT('attempt ', attempt, ' epoch ', epoch, ' by ', "
                "node_id, ' at ', at), NULL) ORDER BY id SEPARATOR '; ') "
                f"FROM transitions WHERE task IS NOT NULL AND {where} GROUP BY experiment_id, task", args)
            out.tasks = {(r[0], r[1]): (int(r[2] or 0), r[3], r[4], r[5]) for r in cur.fetchall()}
            cur.execute(
                "SELECT experiment_id, task, attempt, COUNT(*), GROUP_CONCAT(CONCAT('epoch ', epoch, ' by ', node_id, "
                "' at ', at) ORDER BY id SEPARATOR '; ') FROM transitions "
                f"WHERE to_state = 'DISPATCHED' AND task IS NOT NULL AND {where} "
                "GROUP BY experiment_id, task, attempt HAVING COUNT(*) > 1", args)
            out.double_dispatch = list(cur.fetchall())
            cur.execute(f"SELECT COUNT(*) FROM transitions WHERE {where}", args)
            out.transitions = int(cur.fetchone()[0])
            # earliest start per task, with the row that made it (ties: the lowest id)
            cur.execute(
                "SELECT l.experiment_id, l.task, l.started_at, l.worker, l.attempt FROM ledger l JOIN "
                f"(SELECT experiment_id, task, MIN(started_at) AS s FROM ledger WHERE {where} "
                "GROUP BY experiment_id, task) m ON l.experiment_id = m.experiment_id AND l.task = m.task "
                "AND l.started_at = m.s ORDER BY l.id", args)
            for r in cur.fetchall():
                out.first_start.setdefault((r[0], r[1]), (r[2], r[3], r[4]))
            cur.execute(
                "SELECT COUNT(*), COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM ledger "
                f"WHERE {where} GROUP BY experiment_id, task, attempt HAVING COUNT(*) > 1) d", args)
            row = cur.fetchone()
            out.duplicate_keys, out.duplicate_rows = int(row[0]), int(row[1])
            cur.execute(f"SELECT COUNT(*), COALESCE(SUM(replayed_count), 0) FROM ledger WHERE {where}", args)
            row = cur.fetchone()
            out.executions, out.replays = int(row[0]), int(row[1])
            # fencing: the first act of every epoch (whole table), and the last act + actors of the checked rows
            cur.execute("SELECT epoch, MIN(at) FROM transitions WHERE epoch > 0 GROUP BY epoch")
            out.epochs_all = {int(r[0]): r[1] for r in cur.fetchall()}
            cur.execute("SELECT epoch, MAX(at), GROUP_CONCAT(DISTINCT node_id ORDER BY node_id SEPARATOR ',') "
                        f"FROM transitions WHERE epoch > 0 AND {where} GROUP BY epoch", args)
            out.epochs_scoped = {int(r[0]): (r[1], r[2].split(",")) for r in cur.fetchall()}
            cur.execute("SELECT epoch, node_id FROM leader_terms")
            out.terms = {int(r[0]): r[1] for r in cur.fetchall()}
            for epoch, fence_at in _fence_times(out.epochs_all).items():
                last = out.epochs_scoped.get(epoch)
                if last is None or last[0] <= fence_at + tolerance_s:
                    continue
                cur.execute("SELECT experiment_id, task, to_state, attempt, epoch, node_id, at FROM transitions "
                            f"WHERE epoch = %s AND at > %s AND {where} ORDER BY at, id LIMIT %s",
                            [epoch, fence_at + tolerance_s, *args, FENCING_ROWS_PER_EPOCH + 1])
                rows = list(cur.fetchall())
                out.stale += [(*r, fence_at) for r in rows[:FENCING_ROWS_PER_EPOCH]]
                if len(rows) > FENCING_ROWS_PER_EPOCH:
                    cur.execute(f"SELECT COUNT(*) FROM transitions WHERE epoch = %s AND at > %s AND {where}",
                                [epoch, fence_at + tolerance_s, *args])
                    out.stale_more[epoch] = int(cur.fetchone()[0]) - FENCING_ROWS_PER_EPOCH
        conn.rollback()
    finally:
        conn.close()
    return out


def _fence_times(first_at: dict[int, float]) -> dict[int, float]:
    """F(e) = the earliest first act of any higher epoch, for every epoch that has a higher one."""
    fences: dict[int, float] = {}
    best: float | None = None
    for epoch in sorted(first_at, reverse=True):
        if best is not None:
            fences[epoch] = best
        best = first_at[epoch] if best is None else min(best, first_at[epoch])
    return fences


@dataclass
class _Graph:
    states: dict[str, str | None] = field(default_factory=dict)               # experiment -> state (None: no node)
    tasks: int = 0
    over_flagged: list[tuple[str, str, int]] = field(default_factory=list)    # (exp, task, flags)
    edges: list[tuple[str, str, str]] = field(default_factory=list)           # (exp, successor, predecessor)
    flagged_at: dict[tuple[str, str], float] = field(default_factory=dict)    # executed tasks' finished_at


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _read_neo4j(cfg: Config, ids: list[str]) -> _Graph:
    """One query per chunk of experiments: its state, and each task's flags, flag time and predecessors."""
    out = _Graph()
    with neo4j_driver(cfg) as driver:
        for chunk in _chunks(ids, NEO4J_CHUNK):
            records, _, _ = driver.execute_query(
                "UNWIND $ids AS id OPTIONAL MATCH (e:Experiment {experiment_id: id}) "
                "OPTIONAL MATCH (t:Task {experiment_id: id}) "
                "RETURN id, e.state AS state, collect([t.name, t.flags, t.executed, t.finished_at, "
                "[(t)-[:DEPENDS_ON]->(p:Task) | p.name]]) AS tasks", ids=chunk, routing_="r")
            for r in records:
                experiment_id = r["id"]
                out.states[experiment_id] = r["state"]
                for name, flags, executed, finished_at, predecessors in r["tasks"]:
                    out.tasks += 1
                    if flags is not None and flags > 1:
                        out.over_flagged.append((experiment_id, name, flags))
                    if executed and finished_at is not None:
                        out.flagged_at[(experiment_id, name)] = finished_at
                    out.edges += [(experiment_id, name, p) for p in predecessors]
    return out


# --- the rules -------------------------------------------------------------------------------------------
def _check_terminal(sql: _Sql, graph: _Graph, report: Report) -> None:
    report.experiments = len(sql.experiments)
    states: dict[str, int] = defaultdict(int)
    for experiment_id, state in sql.experiments:
        states[state] += 1
        if state in LIVE_STATES:
            report.violations.append(Violation("lost_work", f"experiment {experiment_id} is still {state}",
                                               experiment_id))
        neo = graph.states.get(experiment_id)
        if neo != state:
            what = "has no Experiment node in Neo4j" if neo is None else f"is {neo} in Neo4j"
            report.violations.append(Violation("state_mismatch", f"experiment {experiment_id} is {state} in MariaDB "
                                               f"but {what}", experiment_id))
    report.states = dict(states)


def _check_advancement(sql: _Sql, graph: _Graph, out: list[Violation]) -> None:
    for (experiment_id, task), (succeeded, _, _, who) in sorted(sql.tasks.items()):
        if succeeded > 1:
            out.append(Violation("double_advancement", f"{experiment_id}/{task} has {succeeded} SUCCEEDED "
                                 f"transitions ({who})", experiment_id))
    for experiment_id, task, flags in sorted(graph.over_flagged):
        out.append(Violation("double_flag", f"{experiment_id}/{task} was flagged executed {flags} times in Neo4j",
                             experiment_id))
    for experiment_id, task, attempt, n, who in sorted(sql.double_dispatch):
        out.append(Violation("double_dispatch", f"{experiment_id}/{task} attempt {attempt} has {n} DISPATCHED "
                             f"transitions ({who})", experiment_id))


def _success_at(sql: _Sql, graph: _Graph, experiment_id: str, task: str) -> float | None:
    """When the task's success became durable: its SUCCEEDED transition or its Neo4j flag, the earlier."""
    times = [t for t in (sql.tasks.get((experiment_id, task), (0, None))[1],
                         graph.flagged_at.get((experiment_id, task))) if t is not None]
    return min(times) if times else None


def _check_order(sql: _Sql, graph: _Graph, out: list[Violation]) -> None:
    for experiment_id, successor, predecessor in sorted(graph.edges):
        durable = _success_at(sql, graph, experiment_id, predecessor)
        when = "never succeeded" if durable is None else f"succeeded at {durable}"
        first = sql.tasks.get((experiment_id, successor))
        dispatched = first[2] if first else None
        if dispatched is not None and (durable is None or dispatched < durable):
            out.append(Violation("order_dispatch", f"{experiment_id}/{successor} was first dispatched at "
                                 f"{dispatched} but its predecessor {predecessor} {when}", experiment_id))
        start = sql.first_start.get((experiment_id, successor))
        if start is not None and (durable is None or start[0] < durable):
            out.append(Violation("order_start", f"{experiment_id}/{successor} attempt {start[2]} started on "
                                 f"{start[1]} at {start[0]} but its predecessor {predecessor} {when}",
                                 experiment_id))


def _check_fencing(sql: _Sql, out: list[Violation]) -> None:
    for experiment_id, task, to_state, attempt, epoch, node_id, at, fence_at in sql.stale:
        newer = min((e for e, first in sql.epochs_all.items() if e > epoch and first == fence_at), default="?")
        what = f"{experiment_id}/{task}" if task is not None else f"experiment {experiment_id}"
        out.append(Violation("fencing", f"{what} {to_state} (attempt {attempt}) written by {node_id} with epoch "
                             f"{epoch} at {at}, after epoch {newer} had acted at {fence_at}", experiment_id))
    for epoch, more in sorted(sql.stale_more.items()):
        out.append(Violation("fencing", f"{more} more rows of epoch {epoch} written after a newer epoch had acted"))
    for epoch, (_, nodes) in sorted(sql.epochs_scoped.items()):
        term = sql.terms.get(epoch)
        actors = sorted(set(nodes) | ({term} if term else set()))
        if len(actors) > 1:
            who = ", ".join(nodes) + (f"; leader_terms says {term}" if term else "")
            out.append(Violation("one_leader_per_epoch", f"epoch {epoch} was acted on by {len(actors)} nodes "
                                 f"(transitions by {who})"))
