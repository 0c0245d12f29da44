"""The invariants (docs/ARCHITECTURE.md, "Invariants") as pure rules over a :class:`~node.verify.snapshot.Snapshot`.

    for rule in RULES:
        violations += rule(snapshot)      # each rule: Snapshot -> list[Violation]; KINDS names them all

``at`` of a transition is the ``now`` its leader took *before* its fenced transaction, and a batch's rows all
carry the same ``now``.

1. No lost work
   - ``lost_work``: an experiment in MariaDB is QUEUED or RUNNING.
   - ``state_mismatch``: MariaDB ``experiments.state`` differs from Neo4j ``Experiment.state``, or Neo4j has no
     Experiment node for it.
2. No double advancement — each task is advanced exactly once
   - ``double_advancement``: more than one SUCCEEDED transition for one (experiment, task), any attempt (the
     takeover repair writes attempt 0 only when none exists).
   - ``double_flag``: a Neo4j Task with ``flags > 1`` (the flag counter goes up once per flagging).
   - ``double_dispatch``: more than one DISPATCHED transition for one (experiment, task, attempt). A successor
     is dispatched (attempt 1) once per flag of its last predecessor; a retry dispatches attempt n+1 once.
     REDISPATCHED rows (re-sends after a takeover or a timeout) are allowed any number of times.
   - ``success_mismatch``: the two stores disagree on a success: a task executed in Neo4j has no SUCCEEDED
     transition or ``flags`` below 1, or a task Neo4j does not show executed has a SUCCEEDED transition.
   - ``double_execution``: more than one ledger row for one (experiment, task, attempt). A row is a worker's claim
     on the attempt and the ledger's unique key ``attempt_once`` admits one, so this only happens in a store
     without that key (a migration gone wrong); however many copies of a request exist, an attempt runs once.
     The report also counts these keys and their extra rows (``duplicate_executions``, ``duplicate_rows``).
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
     have read the raised fence and been rejected. Strictly later only.
   - ``one_leader_per_epoch``: the transitions rows of one epoch come from more than one node_id, or from a
     node other than the ``leader_terms`` row of that epoch.
5. Log — the transition log is complete and causally ordered
   - ``dispatch_unrecorded``: a task Neo4j shows at attempt n >= 1 has no DISPATCHED transition for some attempt
     k in 1..n. REDISPATCHED rows are re-sends of an attempt already dispatched, not its dispatch; a task
     cancelled before its first dispatch is at attempt 0 and needs none. (A leader that dies between its Neo4j
     and MariaDB commits leaves such a gap unless the next leader writes the lost rows during its takeover.)
   - ``log_order``: an experiment's earliest terminal transition (task NULL, to COMPLETED, FAILED or CANCELLED)
     since its last retry (rows of the ``retry`` writer reopen it) is earlier than a SUCCEEDED or FAILED
     transition of one of its tasks; or a task's first SUCCEEDED or
     FAILED transition of attempt k is earlier than its first DISPATCHED transition of attempt k. Equal times
     are fine: one batch writes all its rows with one ``now``.

Replays (``ledger.replayed_count``: a copy of a request answered from the ledger, not run) are counted by the
report; they are not executions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from node.model.states import LIVE_EXPERIMENT_STATES
from node.verify.snapshot import Snapshot

Found = Iterator[tuple[str, str | None]]  # (detail, experiment_id) of each violation a rule finds


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str
    experiment_id: str | None = None

    def line(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True)
class Rule:
    """One invariant check: ``rule(snapshot)`` is the list of its violations."""

    kind: str
    invariant: str
    find: Callable[[Snapshot], Found]

    def __call__(self, snapshot: Snapshot) -> list[Violation]:
        return [Violation(self.kind, detail, experiment_id) for detail, experiment_id in self.find(snapshot)]


def _lost_work(s: Snapshot) -> Found:
    for experiment_id, state in s.experiments.items():
        if state in LIVE_EXPERIMENT_STATES:
            yield f"experiment {experiment_id} is still {state}", experiment_id


def _state_mismatch(s: Snapshot) -> Found:
    for experiment_id, state in s.experiments.items():
        graph = s.graph_states.get(experiment_id)
        if graph != state:
            what = "has no Experiment node in Neo4j" if graph is None else f"is {graph} in Neo4j"
            yield f"experiment {experiment_id} is {state} in MariaDB but {what}", experiment_id


def _double_advancement(s: Snapshot) -> Found:
    for (experiment_id, task), log in sorted(s.log.items()):
        if log.succeeded > 1:
            yield (f"{experiment_id}/{task} has {log.succeeded} SUCCEEDED transitions ({log.succeeded_by})",
                   experiment_id)


def _double_flag(s: Snapshot) -> Found:
    for (experiment_id, task), t in sorted(s.tasks.items()):
        if t.flags is not None and t.flags > 1:
            yield f"{experiment_id}/{task} was flagged executed {t.flags} times in Neo4j", experiment_id


def _double_dispatch(s: Snapshot) -> Found:
    for d in sorted(s.repeated_dispatches, key=lambda d: (d.experiment_id, d.task, d.attempt)):
        if d.count > 1:
            yield (f"{d.experiment_id}/{d.task} attempt {d.attempt} has {d.count} DISPATCHED transitions ({d.by})",
                   d.experiment_id)


def _success_mismatch(s: Snapshot) -> Found:
    # more than one SUCCEEDED row or flag is double_advancement / double_flag; this is the rest of "exactly once"
    for (experiment_id, task), t in sorted(s.tasks.items()):
        log = s.log.get((experiment_id, task))
        succeeded = log.succeeded if log else 0
        if t.executed and (succeeded == 0 or t.flags is None or t.flags < 1):
            yield (f"{experiment_id}/{task}: executed in Neo4j with {succeeded} SUCCEEDED transitions, "
                   f"flags={t.flags}", experiment_id)
        elif not t.executed and succeeded:
            yield (f"{experiment_id}/{task}: not executed in Neo4j but {succeeded} SUCCEEDED transitions",
                   experiment_id)


def _double_execution(s: Snapshot) -> Found:
    for r in sorted(s.repeated_executions, key=lambda r: (r.experiment_id, r.task, r.attempt)):
        yield (f"{r.experiment_id}/{r.task} attempt {r.attempt} was executed {r.count} times ({r.by})",
               r.experiment_id)


def _success_at(s: Snapshot, experiment_id: str, task: str) -> float | None:
    """When the task's success became durable: its SUCCEEDED transition or its Neo4j flag, the earlier."""
    log = s.log.get((experiment_id, task))
    node = s.tasks.get((experiment_id, task))
    times = [t for t in (log.first_succeeded_at if log else None,
                         node.finished_at if node is not None and node.executed else None) if t is not None]
    return min(times) if times else None


def _edges(s: Snapshot) -> Iterator[tuple[str, str, str]]:
    """(experiment_id, successor, predecessor) of every DEPENDS_ON edge, sorted."""
    return iter(sorted((e, name, p) for (e, name), t in s.tasks.items() for p in t.predecessors))


def _never_or_when(durable: float | None) -> str:
    return "never succeeded" if durable is None else f"succeeded at {durable}"


def _order_dispatch(s: Snapshot) -> Found:
    for experiment_id, successor, predecessor in _edges(s):
        durable = _success_at(s, experiment_id, predecessor)
        log = s.log.get((experiment_id, successor))
        dispatched = log.first_dispatched_at if log else None
        if dispatched is not None and (durable is None or dispatched < durable):
            yield (f"{experiment_id}/{successor} was first dispatched at {dispatched} but its predecessor "
                   f"{predecessor} {_never_or_when(durable)}", experiment_id)


def _order_start(s: Snapshot) -> Found:
    for experiment_id, successor, predecessor in _edges(s):
        durable = _success_at(s, experiment_id, predecessor)
        start = s.first_starts.get((experiment_id, successor))
        if start is not None and (durable is None or start.at < durable):
            yield (f"{experiment_id}/{successor} attempt {start.attempt} started on {start.worker} at {start.at} "
                   f"but its predecessor {predecessor} {_never_or_when(durable)}", experiment_id)


def _fencing(s: Snapshot) -> Found:
    fences = s.newer_epoch_acted_at()
    for row in s.late_rows:
        fence_at = fences.get(row.epoch)
        if fence_at is None or row.at <= fence_at:
            continue
        newer = min((e for e, first in s.epoch_first_at.items() if e > row.epoch and first == fence_at), default="?")
        what = f"{row.experiment_id}/{row.task}" if row.task is not None else f"experiment {row.experiment_id}"
        yield (f"{what} {row.to_state} (attempt {row.attempt}) written by {row.node_id} with epoch {row.epoch} "
               f"at {row.at}, after epoch {newer} had acted at {fence_at}", row.experiment_id)
    for epoch, more in sorted(s.late_more.items()):
        yield f"{more} more rows of epoch {epoch} written after a newer epoch had acted", None


def _one_leader_per_epoch(s: Snapshot) -> Found:
    owners = s.epoch_owners()
    for epoch, nodes in sorted(s.epoch_nodes.items()):
        if len(owners[epoch]) > 1:
            term = s.terms.get(epoch)
            who = ", ".join(nodes) + (f"; leader_terms says {term}" if term else "")
            yield f"epoch {epoch} was acted on by {len(owners[epoch])} nodes (transitions by {who})", None


def _dispatch_unrecorded(s: Snapshot) -> Found:
    for (experiment_id, task), t in sorted(s.tasks.items()):
        if t.attempt < 1:
            continue
        log = s.log.get((experiment_id, task))
        missing = sorted(set(range(1, t.attempt + 1)) - (log.dispatched_attempts if log else frozenset()))
        if missing:
            yield (f"{experiment_id}/{task} is at attempt {t.attempt} in Neo4j but attempt(s) "
                   f"{', '.join(map(str, missing))} have no DISPATCHED transition", experiment_id)


def _log_order(s: Snapshot) -> Found:
    for (experiment_id, task), log in sorted(s.log.items()):
        terminal = s.terminal_at.get(experiment_id)
        if terminal is not None and log.last_ended_at is not None and log.last_ended_at > terminal:
            yield (f"experiment {experiment_id} has its terminal transition at {terminal}, before task {task} "
                   f"ended (SUCCEEDED/FAILED) at {log.last_ended_at}", experiment_id)
    for e in sorted(s.early_ends, key=lambda e: (e.experiment_id, e.task, e.attempt)):
        if e.ended_at < e.dispatched_at:
            yield (f"{e.experiment_id}/{e.task} attempt {e.attempt} ended (SUCCEEDED/FAILED) at {e.ended_at}, "
                   f"before its DISPATCHED transition at {e.dispatched_at}", e.experiment_id)


RULES: tuple[Rule, ...] = (
    Rule("lost_work", "1 no lost work: experiment not terminal", _lost_work),
    Rule("state_mismatch", "1 no lost work: MariaDB and Neo4j disagree on the experiment state", _state_mismatch),
    Rule("double_advancement", "2 no double advancement: more than one SUCCEEDED transition for a task",
         _double_advancement),
    Rule("double_flag", "2 no double advancement: Neo4j task flagged more than once", _double_flag),
    Rule("double_dispatch", "2 no double advancement: more than one DISPATCHED transition for one attempt",
         _double_dispatch),
    Rule("success_mismatch", "2 no double advancement: executed task without one SUCCEEDED transition and flag, "
         "or a SUCCEEDED transition for a task not executed", _success_mismatch),
    Rule("double_execution", "2 no double advancement: an attempt executed more than once", _double_execution),
    Rule("order_dispatch", "3 order: successor dispatched before its predecessor's success was durable",
         _order_dispatch),
    Rule("order_start", "3 order: successor started before its predecessor's success was durable", _order_start),
    Rule("fencing", "4 fencing: write with an epoch lower than one that had already acted", _fencing),
    Rule("one_leader_per_epoch", "4 fencing: more than one node acted in one epoch", _one_leader_per_epoch),
    Rule("dispatch_unrecorded", "5 log: an attempt Neo4j shows dispatched has no DISPATCHED transition",
         _dispatch_unrecorded),
    Rule("log_order", "5 log: a terminal transition before a task's end, or an attempt's end before its dispatch",
         _log_order),
)

#: every violation kind, with the invariant it breaks
KINDS: dict[str, str] = {rule.kind: rule.invariant for rule in RULES}

#: the kinds that say a task was not advanced exactly once (the demo's "double-advanced" count)
EXACTLY_ONCE_KINDS: tuple[str, ...] = ("double_advancement", "double_flag", "success_mismatch")
