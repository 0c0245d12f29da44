"""The leader's decision on a batch of worker responses, as a pure function of the responses and the task rows.

    verdict = classify(outcomes, {row["key"]: row for row in task_rows})
    verdict.successes / verdict.retries / verdict.fails      # what the DAG store writes
    verdict.duplicates / verdict.unknown                     # keys it ignores (counted) or dead-letters

A response is *unknown* when no task has its key, a *duplicate* when its task is not DISPATCHED, its attempt is not
the task's current attempt (stale: a re-sent attempt answered twice, a takeover's replay) or it is the second
response to the same task in the batch. Otherwise it is a *success*, a *retry* while attempts remain, or a *fail*
on the last attempt; a success for a task cancelled meanwhile is also an *orphan* (what it started outside haorch is
undone). A *waiting* response (the attempt waits on something outside haorch, e.g. a SLURM job) is a
*wait*: the same attempt is dispatched again at its re-check time — unless the task has been waiting longer than its
``timeout_s``, then it is that attempt's failure (a retry or a fail). A *lost* attempt (its worker died or froze
holding it) is retried at once without counting against the task's attempts, up to MAX_LOST_ATTEMPTS lost ones.
No I/O here: :class:`~node.stores.dags.DagStore` and the in-memory fake share this code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.model.limits import MAX_ERROR_CHARS
from node.model.states import REDISPATCHED, TaskStatus

#: attempts of one task that may be lost (worker died or froze holding it) before the task fails: such attempts are
#: retried at once and not counted against the template's ``retries``; the bound stops a task that kills its workers
MAX_LOST_ATTEMPTS = 3

#: the writer (node id) of a user's retry in the transition log and of its Outbox node: whoever writes that node to
#: MariaDB reopens the terminal experiment row (``Records.write_batch(reopen=True)``), then releases the held tasks
RETRY_WRITER = "retry"


@dataclass(frozen=True)
class Dispatch:
    """A task the leader must publish now."""

    key: str
    experiment_id: str
    name: str
    kind: str
    request: bytes
    attempt: int
    redispatch: bool = False
    recheck: bool = False  # a re-check of a waiting attempt: not a transition (a long job would log one per poll)


@dataclass(frozen=True)
class Outcome:
    """A worker's response reduced to what advancing the DAG needs."""

    key: str
    attempt: int
    success: bool
    error: str | None = None
    lost: bool = False  # the attempt's worker died or froze holding it: not the task's failure
    recheck_after_s: float | None = None  # set: the attempt waits; check it again after this long
    waiting_on: str | None = None


@dataclass
class AdvanceResult:
    """What one batch did, for the MySQL transaction, the publisher and the metrics."""

    # {key, experiment_id, name, kind, attempt, dispatched_at}
    flagged: list[dict[str, Any]] = field(default_factory=list)
    retries: list[dict[str, Any]] = field(default_factory=list)       # {key, experiment_id, name, kind, attempt, error}
    failed: list[dict[str, Any]] = field(default_factory=list)        # {key, experiment_id, name, attempt, error}
    cancelled: list[dict[str, Any]] = field(default_factory=list)     # {key, experiment_id, name}
    dispatches: list[Dispatch] = field(default_factory=list)
    experiments: dict[str, str] = field(default_factory=dict)         # experiment_id -> new state
    duplicates: list[str] = field(default_factory=list)               # keys of ignored (duplicate/stale) responses
    unknown: list[str] = field(default_factory=list)                  # keys of responses for no known task
    waits: list[dict[str, Any]] = field(default_factory=list)         # {key, recheck_at, waiting_on}
    undos: list[Dispatch] = field(default_factory=list)  # late successes of cancelled tasks to reverse (their jobs)
    reopened: list[dict[str, Any]] = field(default_factory=list)  # a retry: {experiment_id, name, status, attempt}
    outbox_id: str | None = None  # the Outbox node holding transition_rows(self), committed with these changes


def transition_rows(result: AdvanceResult) -> list[tuple]:
    """The transition-log rows ``(experiment_id, task, from, to, attempt, detail)`` of what ``result`` changed."""
    S = TaskStatus
    rows: list[tuple] = []
    rows += [(f["experiment_id"], f["name"], S.DISPATCHED, S.SUCCEEDED, f["attempt"], None) for f in result.flagged]
    rows += [(r["experiment_id"], r["name"], S.DISPATCHED, S.RETRY_WAIT, r["attempt"], (r["error"] or "")[:255])
             for r in result.retries]
    rows += [(f["experiment_id"], f["name"], S.DISPATCHED, S.FAILED, f["attempt"], (f["error"] or "")[:255])
             for f in result.failed]
    rows += [(c["experiment_id"], c["name"], None, S.CANCELLED, c["attempt"], None) for c in result.cancelled]
    rows += [(d.experiment_id, d.name, None, REDISPATCHED if d.redispatch else S.DISPATCHED, d.attempt, None)
             for d in result.dispatches if not d.recheck]
    rows += [(r["experiment_id"], r["name"], r["status"], S.PENDING, r["attempt"], "retry") for r in result.reopened]
    rows += [(exp, None, None, state, 0, None) for exp, state in result.experiments.items()]
    return rows


@dataclass
class Classification:
    """Each response of a batch, by what it does to its task; infos are ``{key, experiment_id, name, kind,
    attempt, dispatched_at}`` (plus ``error`` for retries and fails), in the order of the responses."""

    successes: list[dict[str, Any]] = field(default_factory=list)
    retries: list[dict[str, Any]] = field(default_factory=list)
    fails: list[dict[str, Any]] = field(default_factory=list)
    waits: list[dict[str, Any]] = field(default_factory=list)  # {key, recheck_at, waiting_on}
    duplicates: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # duplicates that are successes of cancelled tasks' attempts


def classify(outcomes: Iterable[Outcome], tasks: Mapping[str, Mapping[str, Any]], now: float) -> Classification:
    """Classify ``outcomes`` against ``tasks`` (key → row with ``experiment_id, name, kind, status, attempt,
    max_attempts, dispatched_at, timeout_s``, ``lost``, the attempts lost so far, and ``waiting_since``, when the
    current attempt first answered waiting; a missing key is an unknown task). Retries carry ``lost``: whether to
    retry at once and count the attempt as lost."""
    verdict = Classification()
    seen: set[str] = set()
    for o in outcomes:
        task = tasks.get(o.key)
        if task is None:
            verdict.unknown.append(o.key)
            continue
        # DagStore._apply_outcomes flags a key answered once, a success without recheck, under this same rule in
        # its first statement (and rolls back unless the two agree): change both together
        if o.key in seen or task["status"] != TaskStatus.DISPATCHED or task["attempt"] != o.attempt:
            verdict.duplicates.append(o.key)
            if o.success and task["status"] == TaskStatus.CANCELLED and task["attempt"] == o.attempt:
                verdict.orphans.append(o.key)  # it ran to the end after its experiment was cancelled
            continue
        seen.add(o.key)
        info = {"key": o.key, "experiment_id": task["experiment_id"], "name": task["name"], "kind": task["kind"],
                "attempt": o.attempt, "dispatched_at": task["dispatched_at"]}
        lost_before = task.get("lost") or 0
        waited = now - (task.get("waiting_since") or now)
        if o.recheck_after_s is not None and waited <= task["timeout_s"]:
            verdict.waits.append({"key": o.key, "recheck_at": now + o.recheck_after_s, "waiting_on": o.waiting_on})
            continue
        if o.recheck_after_s is not None:
            o = Outcome(o.key, o.attempt, False, f"still waiting after the task's timeout of {task['timeout_s']:g} s: "
                                                 f"{o.waiting_on}"[:MAX_ERROR_CHARS])
        if o.success:
            verdict.successes.append(info)
        elif o.lost and lost_before < MAX_LOST_ATTEMPTS:
            verdict.retries.append({**info, "error": o.error, "lost": True})
        elif o.lost:
            verdict.fails.append({**info, "error": f"lost {lost_before + 1} attempts to workers that died or froze; "
                                                   f"last: {o.error}"})
        elif o.attempt - lost_before < task["max_attempts"]:
            verdict.retries.append({**info, "error": o.error, "lost": False})
        else:
            verdict.fails.append({**info, "error": o.error})
    return verdict
