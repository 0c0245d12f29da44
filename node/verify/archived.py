"""Archived experiments (``node/retention/archive.py``) in a verification: what retention deleted from the stores
is checked from its archive records, so a check over ids that retention deleted meanwhile still covers them.

    add_archived(snapshot, records)        # records: read_archive(dir); adds those in scope MariaDB lacks
    epoch_first_acts(records.values())     # the earliest act of each epoch among archived rows

Pure: the same aggregates :mod:`node.verify.snapshot` reads from MariaDB with SQL, computed over the archived rows
(transition log, ledger) and the archived Neo4j properties. An archived experiment that is still in MariaDB (it was
archived, then kept: retried meanwhile) is read from the stores, not from here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from node.model.advance import RETRY_WRITER
from node.model.states import REDISPATCHED, TERMINAL_EXPERIMENT_STATES, TaskStatus
from node.verify.snapshot import (
    LATE_ROWS_PER_EPOCH,
    AttemptOrder,
    RepeatedDispatch,
    RepeatedExecution,
    Snapshot,
    Start,
    Task,
    TaskLog,
    TransitionRow,
)

Record = dict[str, Any]


def epoch_first_acts(records: Iterable[Record]) -> dict[int, float]:
    """epoch -> the earliest ``at`` of its leader rows (epoch > 0) in the archived transition logs."""
    first: dict[int, float] = {}
    for record in records:
        for row in record["transitions"]:
            epoch = int(row["epoch"])
            if epoch > 0:
                first[epoch] = min(first.get(epoch, row["at"]), row["at"])
    return first


def in_scope(snapshot: Snapshot, record: Record) -> bool:
    scope = snapshot.scope
    if scope.experiment_ids is not None and record["experiment_id"] not in scope.experiment_ids:
        return False
    return scope.since is None or record["experiment"]["created_at"] >= scope.since


def add_archived(out: Snapshot, records: dict[str, Record]) -> int:
    """Add the archived experiments of the snapshot's scope that MariaDB no longer has; returns how many. Their
    rows' epochs were merged into ``epoch_first_at`` before (:func:`epoch_first_acts`)."""
    chosen = [r for i, r in records.items() if i not in out.experiments and in_scope(out, r)]
    for record in chosen:
        _add(out, record)
    _add_late_rows(out, [row | {"experiment_id": r["experiment_id"]} for r in chosen for row in r["transitions"]])
    out.archived += len(chosen)
    return len(chosen)


def _add(out: Snapshot, record: Record) -> None:
    exp = record["experiment_id"]
    out.experiments[exp] = record["experiment"]["state"]
    graph = record.get("graph")
    out.graph_states[exp] = graph["experiment"].get("state") if graph else None
    for t in graph["tasks"] if graph else []:
        out.tasks[(exp, t["name"])] = Task(bool(t.get("executed")), t.get("flags"), t.get("finished_at"),
                                           tuple(t.get("depends_on") or ()), int(t.get("attempt") or 0))
    rows = sorted(record["transitions"], key=lambda r: r["id"])
    out.transitions += len(rows)
    _add_log(out, exp, [r for r in rows if r["task"] is not None])
    reopened = max((r["at"] for r in rows if r["task"] is None and r["node_id"] == RETRY_WRITER), default=0.0)
    ends = [r["at"] for r in rows if r["task"] is None and r["to_state"] in TERMINAL_EXPERIMENT_STATES
            and r["at"] >= reopened]
    if ends:
        out.terminal_at[exp] = min(ends)
    nodes: dict[int, set[str]] = defaultdict(set)
    for r in rows:
        if int(r["epoch"]) > 0:
            nodes[int(r["epoch"])].add(r["node_id"])
    for epoch, names in nodes.items():
        out.epoch_nodes[epoch] = tuple(sorted(set(out.epoch_nodes.get(epoch, ())) | names))
    _add_ledger(out, exp, sorted(record["ledger"], key=lambda r: r["id"]))


def _add_log(out: Snapshot, exp: str, rows: list[Record]) -> None:
    """Per task, the :class:`TaskLog`; repeated dispatches and attempts that ended before their dispatch."""
    by_task: dict[str, list[Record]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    ends = (TaskStatus.SUCCEEDED, TaskStatus.FAILED)
    for task, task_rows in by_task.items():
        succeeded = [r for r in task_rows if r["to_state"] == TaskStatus.SUCCEEDED]
        dispatched = [r for r in task_rows if r["to_state"] in (TaskStatus.DISPATCHED, REDISPATCHED)]
        out.log[(exp, task)] = TaskLog(
            len(succeeded), min((r["at"] for r in succeeded), default=None),
            min((r["at"] for r in dispatched), default=None),
            "; ".join(f"attempt {r['attempt']} epoch {r['epoch']} by {r['node_id']} at {r['at']}" for r in succeeded),
            frozenset(r["attempt"] for r in task_rows if r["to_state"] == TaskStatus.DISPATCHED),
            max((r["at"] for r in task_rows if r["to_state"] in ends), default=None))
        by_attempt: dict[int, list[Record]] = defaultdict(list)
        for r in task_rows:
            by_attempt[r["attempt"]].append(r)
        for attempt, attempt_rows in sorted(by_attempt.items()):
            first = [r for r in attempt_rows if r["to_state"] == TaskStatus.DISPATCHED]
            if len(first) > 1:
                out.repeated_dispatches.append(RepeatedDispatch(exp, task, attempt, len(first), "; ".join(
                    f"epoch {r['epoch']} by {r['node_id']} at {r['at']}" for r in first)))
            started = min((r["at"] for r in first), default=None)
            ended = min((r["at"] for r in attempt_rows if r["to_state"] in ends), default=None)
            if started is not None and ended is not None and ended < started:
                out.early_ends.append(AttemptOrder(exp, task, attempt, started, ended))


def _add_ledger(out: Snapshot, exp: str, rows: list[Record]) -> None:
    """The earliest start of each task, repeated executions, executions and replays."""
    out.executions += len(rows)
    out.replays += sum(int(r.get("replayed_count") or 0) for r in rows)
    by_attempt: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for r in rows:
        by_attempt[(r["task"], r["attempt"])].append(r)
        key = (exp, r["task"])
        first = out.first_starts.get(key)
        if first is None or r["started_at"] < first.at:
            out.first_starts[key] = Start(r["started_at"], r["worker"], r["attempt"])
    for (task, attempt), attempt_rows in sorted(by_attempt.items()):
        if len(attempt_rows) > 1:
            out.repeated_executions.append(RepeatedExecution(exp, task, attempt, len(attempt_rows), "; ".join(
                f"{r['worker']} at {r['started_at']}" for r in attempt_rows)))


def _add_late_rows(out: Snapshot, rows: list[Record]) -> None:
    """The archived leader rows written after a newer epoch had acted (as the SQL of the snapshot finds them)."""
    fences = out.newer_epoch_acted_at()
    late: dict[int, list[Record]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["at"], r["id"])):
        epoch = int(r["epoch"])
        if epoch > 0 and epoch in fences and r["at"] > fences[epoch]:
            late[epoch].append(r)
    for epoch, found in late.items():
        out.late_rows += [TransitionRow(r["experiment_id"], r["task"], r["to_state"], r["attempt"], epoch,
                                        r["node_id"], r["at"]) for r in found[:LATE_ROWS_PER_EPOCH]]
        if len(found) > LATE_ROWS_PER_EPOCH:
            out.late_more[epoch] = out.late_more.get(epoch, 0) + len(found) - LATE_ROWS_PER_EPOCH
