"""An in-memory DAG store with the semantics of :class:`node.stores.dags.DagStore` (fence, advance, sweep,
takeover), sharing its decision logic (:func:`node.model.advance.classify`).

    dags = FakeDagStore(journal)
    dags.add_experiment("exp-1", [TaskSpec("a", "data_staging"), TaskSpec("b", "job_submission", depends_on=("a",))])
    dags.tasks["exp-1/a"]["status"]                # PENDING
"""

from __future__ import annotations

from typing import Any

from fakes.journal import Journal
from node.errors import FencedError
from node.model.advance import AdvanceResult, Dispatch, Outcome, classify, transition_rows
from node.model.messages import static_request_bytes
from node.model.states import (
    LIVE_EXPERIMENT_STATES,
    OPEN_TASK_STATUSES,
    ExperimentState,
    TaskStatus,
    experiment_may_move,
    task_may_move,
)
from node.model.template import TaskSpec
from node.stores.dags import undoable


class FakeDagStore:
    """Implements :class:`node.leader.ports.Dags`; ``tasks`` and ``experiments`` are plain dicts to inspect."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal if journal is not None else Journal()
        self.fence = 0
        self.holder: str | None = None
        self.tasks: dict[str, dict[str, Any]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.successors: dict[str, list[str]] = {}
        self.boxes: dict[str, dict[str, Any]] = {}  # the outbox: id -> {id, at, epoch, rows, states}

    # --- setting up ---------------------------------------------------------------------------
    def add_experiment(self, experiment_id: str, specs: list[TaskSpec], params: dict[str, Any] | None = None) -> None:
        """A QUEUED experiment whose tasks are PENDING, as ``DagStore.create_experiments`` leaves it."""
        self.experiments[experiment_id] = {"state": ExperimentState.QUEUED, "remaining": len(specs)}
        for spec in specs:
            key = f"{experiment_id}/{spec.name}"
            self.tasks[key] = {
                "key": key, "experiment_id": experiment_id, "name": spec.name, "kind": spec.kind,
                "request": static_request_bytes(experiment_id, spec, params or {}), "executed": False,
                "status": TaskStatus.PENDING, "attempt": 0, "waiting": len(spec.depends_on),
                "max_attempts": spec.retry.max_attempts, "retry": spec.retry, "timeout_s": spec.timeout_s,
                "dispatched_at": None, "finished_at": None, "not_before": None, "last_error": None, "flags": 0,
                "lost": 0}
            for dep in spec.depends_on:
                self.successors.setdefault(f"{experiment_id}/{dep}", []).append(key)

    def set_task(self, key: str, **fields: Any) -> None:
        """Set up a task's fields directly (no transition check)."""
        self.tasks[key].update(fields)

    @staticmethod
    def _move(task: dict[str, Any], status: TaskStatus, **fields: Any) -> None:
        """Change a task's status; only along :data:`node.model.states.TASK_TRANSITIONS`."""
        assert task_may_move(task["status"], status), f"{task['key']}: {task['status']} -> {status}"
        task.update(status=status, **fields)

    @staticmethod
    def _set_state(experiment: dict[str, Any], state: ExperimentState, **fields: Any) -> None:
        """Change an experiment's state; only along :data:`node.model.states.EXPERIMENT_TRANSITIONS`."""
        assert experiment_may_move(experiment["state"], state), f"{experiment['state']} -> {state}"
        experiment.update(state=state, **fields)

    # --- fencing ------------------------------------------------------------------------------
    def _check_fence(self, epoch: int) -> None:
        if self.fence > epoch:
            raise FencedError("neo4j", epoch, self.fence)

    def raise_fence(self, epoch: int, node_id: str) -> None:
        self._check_fence(epoch)
        self.fence, self.holder = epoch, node_id
        self.journal.append(f"neo4j.raise_fence {epoch}")

    # --- the leader's batch -------------------------------------------------------------------
    def advance(self, epoch: int, outcomes: list[Outcome], submitted: list[str], now: float) -> AdvanceResult:
        self._check_fence(epoch)
        result = AdvanceResult()
        verdict = classify(outcomes, {o.key: self.tasks[o.key] for o in outcomes if o.key in self.tasks}, now)
        result.unknown += verdict.unknown
        result.duplicates += verdict.duplicates
        result.undos += undoable([self._as_dispatch(self.tasks[key]) for key in verdict.orphans])
        for info in verdict.waits:
            task = self.tasks[info["key"]]
            task.update(recheck_at=info["recheck_at"], waiting_on=info["waiting_on"], epoch=epoch,
                        waiting_since=task.get("waiting_since") or now)
            result.waits.append(info)
        for info in verdict.successes:
            self._flag(epoch, info, now, result)
        for info in verdict.retries:
            task = self.tasks[info["key"]]
            self._move(task, TaskStatus.RETRY_WAIT,
                       not_before=now if info["lost"] else now + task["retry"].delay(info["attempt"]),
                       last_error=info["error"], epoch=epoch, lost=task["lost"] + info["lost"], recheck_at=None,
                       waiting_since=None, waiting_on=None)
            result.retries.append(info)
        for info in verdict.fails:
            self._fail(epoch, info, now, result)
        for experiment_id in submitted:
            for task in self._tasks_of(experiment_id):
                if task["status"] == TaskStatus.PENDING and task["waiting"] == 0:
                    result.dispatches.append(self._dispatch(task, epoch, now, attempt=task["attempt"] + 1))
        self._start_experiments(now, result)
        self.journal.append(f"neo4j.advance {len(outcomes)} {len(submitted)}")
        return self._outbox(epoch, now, result)

    def _outbox(self, epoch: int, now: float, result: AdvanceResult) -> AdvanceResult:
        rows = transition_rows(result)
        if rows or result.experiments:
            result.outbox_id = f"box-{len(self.boxes) + 1}-{now}"
            self.boxes[result.outbox_id] = {"id": result.outbox_id, "at": now, "epoch": epoch, "node": self.holder,
                                            "rows": rows, "states": dict(result.experiments)}
        return result

    def outbox(self, limit: int, before: float | None = None) -> list[dict[str, Any]]:
        boxes = [b for b in self.boxes.values() if before is None or b["at"] < before]
        return sorted(boxes, key=lambda b: (b["at"], b["id"]))[:limit]

    def forget_outbox(self, ids: list[str]) -> None:
        for box_id in ids:
            self.boxes.pop(box_id, None)
        self.journal.append(f"neo4j.forget_outbox {len(ids)}")

    def release_retry(self, ids: list[str], now: float) -> int:
        """Nothing is held here: the fake has no user retries."""
        self.journal.append(f"neo4j.release_retry {len(ids)}")
        return 0

    def _flag(self, epoch: int, info: dict[str, Any], now: float, result: AdvanceResult) -> None:
        task = self.tasks[info["key"]]
        self._move(task, TaskStatus.SUCCEEDED, executed=True, finished_at=now, epoch=epoch, flags=task["flags"] + 1)
        result.flagged.append(info)
        for key in self.successors.get(task["key"], []):
            successor = self.tasks[key]
            successor["waiting"] -= 1
            if successor["waiting"] == 0 and successor["status"] == TaskStatus.PENDING:
                result.dispatches.append(self._dispatch(successor, epoch, now, attempt=successor["attempt"] + 1))
        experiment = self.experiments[task["experiment_id"]]
        experiment["remaining"] -= 1
        if experiment["remaining"] == 0 and experiment["state"] in LIVE_EXPERIMENT_STATES:
            self._set_state(experiment, ExperimentState.COMPLETED, finished_at=now)
            result.experiments[task["experiment_id"]] = ExperimentState.COMPLETED

    def _fail(self, epoch: int, info: dict[str, Any], now: float, result: AdvanceResult) -> None:
        task = self.tasks[info["key"]]
        self._move(task, TaskStatus.FAILED, finished_at=now, last_error=info["error"], epoch=epoch)
        result.failed.append(info)
        experiment = self.experiments[task["experiment_id"]]
        if experiment["state"] in LIVE_EXPERIMENT_STATES:
            self._set_state(experiment, ExperimentState.FAILED, finished_at=now)
            result.experiments[task["experiment_id"]] = ExperimentState.FAILED
        for other in self._tasks_of(task["experiment_id"]):
            if not other["executed"] and other["status"] in OPEN_TASK_STATUSES:
                self._move(other, TaskStatus.CANCELLED, finished_at=now, epoch=epoch)
                result.cancelled.append({"key": other["key"], "experiment_id": other["experiment_id"],
                                         "name": other["name"], "attempt": other["attempt"]})

    def _dispatch(self, task: dict[str, Any], epoch: int, now: float, attempt: int,
                  redispatch: bool = False, recheck: bool = False) -> Dispatch:
        self._move(task, TaskStatus.DISPATCHED, attempt=attempt, dispatched_at=now, epoch=epoch)
        if not recheck:
            task["recheck_at"] = None
        return Dispatch(task["key"], task["experiment_id"], task["name"], task["kind"], task["request"], attempt,
                        redispatch, recheck)

    @staticmethod
    def _as_dispatch(task: dict[str, Any]) -> Dispatch:
        return Dispatch(task["key"], task["experiment_id"], task["name"], task["kind"], task["request"],
                        task["attempt"])

    def _start_experiments(self, now: float, result: AdvanceResult) -> None:
        for experiment_id in sorted({d.experiment_id for d in result.dispatches}):
            experiment = self.experiments[experiment_id]
            if experiment["state"] == ExperimentState.QUEUED:
                self._set_state(experiment, ExperimentState.RUNNING, started_at=now)
                result.experiments.setdefault(experiment_id, ExperimentState.RUNNING)

    def _tasks_of(self, experiment_id: str) -> list[dict[str, Any]]:
        return [t for t in self.tasks.values() if t["experiment_id"] == experiment_id]

    # --- periodic work and takeover -----------------------------------------------------------
    def due_work(self, epoch: int, now: float, grace_s: float, limit: int, overdue: bool = True) -> AdvanceResult:
        self._check_fence(epoch)
        tasks = sorted(self.tasks.values(), key=lambda t: t["key"])
        roots = [t for t in tasks if t["status"] == TaskStatus.PENDING and t["waiting"] == 0][:limit]
        retries = [t for t in tasks if t["status"] == TaskStatus.RETRY_WAIT and t["not_before"] <= now][:limit]
        rechecks = [t for t in tasks if t["status"] == TaskStatus.DISPATCHED
                    and t.get("recheck_at") is not None and t["recheck_at"] <= now][:limit]
        for t in rechecks:
            t["recheck_at"] = None
        overdue = [t for t in tasks if t["status"] == TaskStatus.DISPATCHED and t.get("recheck_at") is None
                   and t not in rechecks
                   and t["dispatched_at"] + t["timeout_s"] + grace_s < now][:limit if overdue else 0]
        result = AdvanceResult(dispatches=[self._dispatch(t, epoch, now, t["attempt"] + 1) for t in roots]
                               + [self._dispatch(t, epoch, now, t["attempt"] + 1) for t in retries]
                               + [self._dispatch(t, epoch, now, t["attempt"], redispatch=True, recheck=True)
                                  for t in rechecks]
                               + [self._dispatch(t, epoch, now, t["attempt"], redispatch=True) for t in overdue])
        self._start_experiments(now, result)
        self.journal.append("neo4j.due_work")
        return self._outbox(epoch, now, result)

    def rescan(self, epoch: int, after: str, limit: int) -> list[dict[str, Any]]:
        self.journal.append(f"neo4j.rescan {after}")
        return [dict(t) for t in sorted(self.tasks.values(), key=lambda t: t["key"])
                if not t["executed"] and t["waiting"] == 0 and t["status"] in OPEN_TASK_STATUSES
                and t["key"] > after and t.get("epoch", 0) != epoch][:limit]

    def mark_dispatched(self, epoch: int, keys: list[str], now: float) -> AdvanceResult:
        self._check_fence(epoch)
        result = AdvanceResult()
        for key in keys:
            task = self.tasks[key]
            if (not task["executed"] and task["status"] in (TaskStatus.PENDING, TaskStatus.DISPATCHED)
                    and task.get("epoch", 0) != epoch):
                again = task["status"] == TaskStatus.DISPATCHED
                result.dispatches.append(self._dispatch(task, epoch, now, task["attempt"] + (0 if again else 1), again))
        self._start_experiments(now, result)
        self.journal.append(f"neo4j.mark_dispatched {len(keys)}")
        return self._outbox(epoch, now, result)
