"""Task and experiment states, the terminal sets and the allowed transitions: declared here once.

Both enums are ``StrEnum``: a member *is* its string, so it is stored in MariaDB and Neo4j as that string, compares
equal to it, and is passed into Cypher and SQL as a parameter (``status IN $open``) rather than spelled in a query.

A task moves ``PENDING → DISPATCHED → SUCCEEDED`` on the happy path; a failed attempt goes to ``RETRY_WAIT`` (and
back to ``DISPATCHED`` with the next attempt) or to ``FAILED``; an open task can be ``CANCELLED``. A dispatched task
can be dispatched again (a takeover or an overdue response re-sends the same attempt). An experiment goes
``QUEUED → RUNNING`` at its first dispatch and ends ``COMPLETED``, ``FAILED`` or ``CANCELLED``; a terminal state is
final, except that a user's *retry* (``haorch retry``) takes a FAILED or CANCELLED experiment back to RUNNING and its
FAILED and CANCELLED tasks back to PENDING (each then runs with a new attempt number).

A ready task (PENDING with no predecessor left, or RETRY_WAIT past its backoff) of a concurrency pool whose slots are
all taken is *held*: it keeps its status until the leader dispatches it into a free slot (``node/stores/dags.py``).
Held is not a status: nothing but the pool's count decides it, and no transition is logged for it.

The transition log (MariaDB ``transitions.to_state``) uses these names, plus :data:`REDISPATCHED` for a re-send of
an attempt that was already dispatched.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """``Task.status`` in Neo4j."""

    PENDING = "PENDING"          # waiting on predecessors (or a root not yet dispatched)
    DISPATCHED = "DISPATCHED"    # request published for ``attempt``
    RETRY_WAIT = "RETRY_WAIT"    # attempt failed; the next is due at ``not_before``
    SUCCEEDED = "SUCCEEDED"      # ``executed = true``
    FAILED = "FAILED"            # last attempt failed
    CANCELLED = "CANCELLED"      # its experiment failed or was cancelled first


class ExperimentState(StrEnum):
    """``experiments.state`` in MariaDB and ``Experiment.state`` in Neo4j."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


#: transition-log name of a re-sent dispatch (takeover or overdue response); not a task status
REDISPATCHED = "REDISPATCHED"

OPEN_TASK_STATUSES: tuple[TaskStatus, ...] = (TaskStatus.PENDING, TaskStatus.DISPATCHED, TaskStatus.RETRY_WAIT)
TERMINAL_TASK_STATUSES: tuple[TaskStatus, ...] = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)
LIVE_EXPERIMENT_STATES: tuple[ExperimentState, ...] = (ExperimentState.QUEUED, ExperimentState.RUNNING)
TERMINAL_EXPERIMENT_STATES: tuple[ExperimentState, ...] = (
    ExperimentState.COMPLETED, ExperimentState.FAILED, ExperimentState.CANCELLED)

TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.DISPATCHED, TaskStatus.CANCELLED}),
    TaskStatus.DISPATCHED: frozenset({TaskStatus.DISPATCHED, TaskStatus.SUCCEEDED, TaskStatus.RETRY_WAIT,
                                      TaskStatus.FAILED, TaskStatus.CANCELLED}),
    TaskStatus.RETRY_WAIT: frozenset({TaskStatus.DISPATCHED, TaskStatus.CANCELLED}),
    TaskStatus.SUCCEEDED: frozenset(),
    TaskStatus.FAILED: frozenset({TaskStatus.PENDING}),      # a retry
    TaskStatus.CANCELLED: frozenset({TaskStatus.PENDING}),   # a retry
}

EXPERIMENT_TRANSITIONS: dict[ExperimentState, frozenset[ExperimentState]] = {
    ExperimentState.QUEUED: frozenset({ExperimentState.RUNNING, ExperimentState.COMPLETED, ExperimentState.FAILED,
                                       ExperimentState.CANCELLED}),
    ExperimentState.RUNNING: frozenset({ExperimentState.COMPLETED, ExperimentState.FAILED,
                                        ExperimentState.CANCELLED}),
    ExperimentState.COMPLETED: frozenset(),
    ExperimentState.FAILED: frozenset({ExperimentState.RUNNING}),      # a retry
    ExperimentState.CANCELLED: frozenset({ExperimentState.RUNNING}),   # a retry
}

#: experiment states a retry starts from
RETRYABLE_EXPERIMENT_STATES: tuple[ExperimentState, ...] = (ExperimentState.FAILED, ExperimentState.CANCELLED)


def task_may_move(current: str, new: str) -> bool:
    """True when a task may go from status ``current`` to ``new`` (unknown names: False)."""
    try:
        return TaskStatus(new) in TASK_TRANSITIONS[TaskStatus(current)]
    except ValueError:
        return False


def experiment_may_move(current: str, new: str) -> bool:
    """True when an experiment may go from state ``current`` to ``new`` (unknown names: False)."""
    try:
        return ExperimentState(new) in EXPERIMENT_TRANSITIONS[ExperimentState(current)]
    except ValueError:
        return False
