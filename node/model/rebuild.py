"""An experiment's Neo4j graph rebuilt from what MariaDB recorded: the template version and params it was submitted
with, its state, and its tasks' rows of the transition log. Pure: ``node/recover.py`` reads and writes.

    graph = rebuild(record, template)        # the Experiment node, its Task nodes and their DEPENDS_ON edges
    graph = unbuilt(record, reason)          # a finished experiment whose DAG cannot be built: the node alone

The Task nodes are what :class:`~node.stores.dags.DagStore` would hold after applying the same changes: the
static part (request, retry policy, timeout) is built as submit builds it, from the template and the params; the
dynamic part replays the task's rows in log order (the log records every change the leader made):

- ``DISPATCHED`` (attempt a): status DISPATCHED, ``attempt = a``, ``dispatched_at``; ``REDISPATCHED``: a re-send of
  the attempt, ``dispatched_at`` moves;
- ``SUCCEEDED``: ``executed``, one more flag, ``finished_at``;
- ``RETRY_WAIT`` (attempt a, the error as detail): the next attempt is due at ``not_before`` = the row's time plus
  the template's backoff for attempt a, or at once for a *lost* attempt (its worker died or froze: the error starts
  with ``abandoned:``, the worker's mark; such attempts are counted in ``lost`` and do not use up ``retries``);
- ``FAILED``, ``CANCELLED``: ``finished_at`` (a task cancelled before its first dispatch stays at attempt 0);
- ``PENDING`` (a user's retry of the experiment): PENDING again, its attempt kept as ``attempt_base`` (the next
  dispatch is attempt + 1, with the template's attempts again); the leader dispatches it when it is ready.

``waiting`` counts the predecessors not executed, ``remaining`` the experiment's tasks not executed, and the
experiment's state is the one its MariaDB row holds. ``epoch`` is the epoch of the task's last row. ``pool`` is the
task's concurrency pool; a task that was held for a slot (ready, not dispatched: no row says so) is rebuilt ready,
without the time it became ready, and the leader dispatches it within its pool's slots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.model.messages import static_request_bytes
from node.model.states import LIVE_EXPERIMENT_STATES, REDISPATCHED, TaskStatus
from node.model.template import TaskSpec, Template

#: the first word of the error of an attempt whose worker died or froze holding it (``node/stores/ledger.py``)
LOST_MARK = "abandoned:"


class Unbuildable(ValueError):
    """The record does not describe a graph of its template (a task name the template lacks)."""


@dataclass(frozen=True)
class Step:
    """One task row of the transition log."""

    task: str
    to_state: str
    attempt: int
    epoch: int
    at: float
    detail: str | None = None


@dataclass(frozen=True)
class ExperimentRecord:
    """What MariaDB holds about one experiment: its row and its tasks' rows of the log, in log order."""

    experiment_id: str
    type: str
    version: int
    state: str
    params: Mapping[str, Any]
    created_at: float
    finished_at: float | None = None
    steps: Sequence[Step] = ()


@dataclass
class ExperimentGraph:
    """The nodes of one experiment as Neo4j holds them: ``experiment`` and each of ``tasks`` are node properties
    (None: the property is absent), ``edges`` the ``(successor key, predecessor key)`` of each DEPENDS_ON."""

    experiment_id: str
    experiment: dict[str, Any]
    tasks: list[dict[str, Any]] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.experiment["state"] in LIVE_EXPERIMENT_STATES


def task_node(experiment_id: str, spec: TaskSpec, request: bytes, steps: Sequence[Step]) -> dict[str, Any]:
    """The Task node of ``spec`` after replaying its ``steps`` (``waiting`` is set by :func:`rebuild`)."""
    node: dict[str, Any] = {
        "key": f"{experiment_id}/{spec.name}", "experiment_id": experiment_id, "name": spec.name, "kind": spec.kind,
        "pool": spec.pool, "request": request, "executed": False, "status": TaskStatus.PENDING.value, "attempt": 0,
        "waiting": 0,
        "max_attempts": spec.retry.max_attempts, "backoff_s": spec.retry.backoff_s,
        "backoff_factor": spec.retry.backoff_factor, "max_backoff_s": spec.retry.max_backoff_s,
        "timeout_s": spec.timeout_s, "epoch": 0, "flags": 0, "dispatched_at": None, "finished_at": None,
        "not_before": None, "lost": None, "last_error": None, "attempt_base": 0,
    }
    for step in steps:
        node["epoch"] = step.epoch
        if step.to_state == TaskStatus.DISPATCHED:
            node.update(status=TaskStatus.DISPATCHED.value, attempt=step.attempt, dispatched_at=step.at)
        elif step.to_state == REDISPATCHED:
            node.update(status=TaskStatus.DISPATCHED.value, attempt=max(node["attempt"], step.attempt),
                        dispatched_at=step.at)
        elif step.to_state == TaskStatus.SUCCEEDED:
            node.update(status=TaskStatus.SUCCEEDED.value, executed=True, finished_at=step.at,
                        flags=node["flags"] + 1)
        elif step.to_state == TaskStatus.RETRY_WAIT:
            lost = (step.detail or "").startswith(LOST_MARK)
            node.update(status=TaskStatus.RETRY_WAIT.value, last_error=step.detail,
                        not_before=step.at + (0.0 if lost else spec.retry.delay(step.attempt - node["attempt_base"])))
            if lost:
                node["lost"] = (node["lost"] or 0) + 1
        elif step.to_state == TaskStatus.FAILED:
            node.update(status=TaskStatus.FAILED.value, finished_at=step.at, last_error=step.detail)
        elif step.to_state == TaskStatus.CANCELLED:
            node.update(status=TaskStatus.CANCELLED.value, finished_at=step.at)
        elif step.to_state == TaskStatus.PENDING:
            node.update(status=TaskStatus.PENDING.value, attempt_base=node["attempt"], lost=0, finished_at=None,
                        last_error=None, not_before=None)
        else:
            raise Unbuildable(f"task {spec.name!r} has a transition to unknown state {step.to_state!r}")
    return node


def rebuild(record: ExperimentRecord, template: Template, now: float) -> ExperimentGraph:
    """The graph of ``record``, built from ``template`` (its type at the recorded version); ``now`` is stored as
    ``rebuilt_at``. Unbuildable if a row names a task the template lacks."""
    names = {spec.name for spec in template.tasks}
    by_task: dict[str, list[Step]] = {name: [] for name in names}
    for step in record.steps:
        if step.task not in names:
            raise Unbuildable(f"the log names task {step.task!r}, which {template.type} version {record.version} "
                              "does not have")
        by_task[step.task].append(step)
    defaults = template.param_defaults()
    params = dict(record.params)
    tasks = {spec.name: task_node(record.experiment_id, spec,
                                  static_request_bytes(record.experiment_id, spec, params, defaults),
                                  by_task[spec.name])
             for spec in template.tasks}
    preds = template.predecessors()
    for name, node in tasks.items():
        node["waiting"] = sum(not tasks[p]["executed"] for p in preds[name])
    dispatches = [s.at for s in record.steps if s.to_state == TaskStatus.DISPATCHED]
    experiment = {
        "experiment_id": record.experiment_id, "type": record.type, "version": record.version,
        "state": record.state, "remaining": sum(not t["executed"] for t in tasks.values()),
        "created_at": record.created_at, "started_at": min(dispatches) if dispatches else None,
        "finished_at": record.finished_at, "rebuilt_at": now,
    }
    key = {name: node["key"] for name, node in tasks.items()}
    edges = [(key[name], key[p]) for name in preds for p in preds[name]]
    return ExperimentGraph(record.experiment_id, experiment, [tasks[spec.name] for spec in template.tasks], edges)


def unbuilt(record: ExperimentRecord, reason: str, now: float) -> ExperimentGraph:
    """A finished experiment whose DAG cannot be built (its template version or params are gone or invalid: the
    leader recorded it FAILED without tasks, or its record is damaged): its Experiment node alone, with ``reason``."""
    return ExperimentGraph(record.experiment_id, {
        "experiment_id": record.experiment_id, "type": record.type, "version": record.version,
        "state": record.state, "remaining": 0, "created_at": record.created_at, "finished_at": record.finished_at,
        "reason": reason[:255], "rebuilt_at": now})
