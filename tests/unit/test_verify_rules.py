"""Each verification rule on hand-built snapshots (no server): it names a planted violation and is silent on a
clean history."""

from __future__ import annotations

import dataclasses

import pytest

from node.verify.check import evaluate
from node.verify.rules import KINDS, RULES, Rule
from node.verify.snapshot import (
    AttemptOrder,
    RepeatedDispatch,
    RepeatedExecution,
    Scope,
    Snapshot,
    Start,
    Task,
    TaskLog,
    TransitionRow,
)

E = "exp-1"
T0 = 1000.0


def clean() -> Snapshot:
    """A chain a -> b, completed by epoch 7 on node-1: a dispatched at T0, succeeded at T0+1 (b dispatched in the
    same batch), b succeeded at T0+2 (the experiment COMPLETED in the same batch); one ledger row each."""
    return Snapshot(
        scope=Scope(experiment_ids=[E]),
        experiments={E: "COMPLETED"}, graph_states={E: "COMPLETED"},
        tasks={(E, "a"): Task(True, 1, T0 + 1, attempt=1), (E, "b"): Task(True, 1, T0 + 2, ("a",), attempt=1)},
        log={(E, "a"): TaskLog(1, T0 + 1, T0, f"attempt 1 epoch 7 by node-1 at {T0 + 1}", frozenset({1}), T0 + 1),
             (E, "b"): TaskLog(1, T0 + 2, T0 + 1, f"attempt 1 epoch 7 by node-1 at {T0 + 2}", frozenset({1}),
                               T0 + 2)},
        terminal_at={E: T0 + 2},
        first_starts={(E, "a"): Start(T0 + 0.1, "worker-1", 1), (E, "b"): Start(T0 + 1.1, "worker-1", 1)},
        epoch_first_at={7: T0}, epoch_nodes={7: ("node-1",)}, terms={7: "node-1"},
        transitions=5, executions=2)


def rule(kind: str) -> Rule:
    return next(r for r in RULES if r.kind == kind)


def fired(snapshot: Snapshot) -> set[str]:
    return {v.kind for r in RULES for v in r(snapshot)}


def test_every_rule_is_silent_on_a_clean_snapshot() -> None:
    assert set(KINDS) == {r.kind for r in RULES}
    for r in RULES:
        assert r(clean()) == [], r.kind
    report = evaluate(clean())
    assert report.ok and report.experiments == 1 and report.tasks == 2 and report.epochs == 1
    assert (report.duplicate_executions, report.duplicate_rows) == (0, 0)
    assert report.experiment_ids == 1 and report.states == {"COMPLETED": 1}


def test_lost_work() -> None:
    s = dataclasses.replace(clean(), experiments={E: "RUNNING"}, graph_states={E: "RUNNING"})
    [v] = rule("lost_work")(s)
    assert v.experiment_id == E and "still RUNNING" in v.detail
    assert fired(s) == {"lost_work"}


@pytest.mark.parametrize(("graph", "words"), [("FAILED", "is FAILED in Neo4j"), (None, "no Experiment node")])
def test_state_mismatch(graph: str | None, words: str) -> None:
    s = dataclasses.replace(clean(), graph_states={E: graph})
    [v] = rule("state_mismatch")(s)
    assert words in v.detail
    assert fired(s) == {"state_mismatch"}


def test_double_advancement() -> None:
    s = clean()
    s.log[(E, "a")] = dataclasses.replace(s.log[(E, "a")], succeeded=2)
    [v] = rule("double_advancement")(s)
    assert f"{E}/a has 2 SUCCEEDED" in v.detail
    assert fired(s) == {"double_advancement"}


def test_double_flag() -> None:
    s = clean()
    s.tasks[(E, "a")] = dataclasses.replace(s.tasks[(E, "a")], flags=2)
    [v] = rule("double_flag")(s)
    assert "flagged executed 2 times" in v.detail
    assert fired(s) == {"double_flag"}


def test_double_dispatch() -> None:
    s = dataclasses.replace(clean(), repeated_dispatches=[RepeatedDispatch(E, "b", 1, 2, "epoch 7 by node-1")])
    [v] = rule("double_dispatch")(s)
    assert f"{E}/b attempt 1 has 2 DISPATCHED" in v.detail
    assert fired(s) == {"double_dispatch"}


@pytest.mark.parametrize("plant", ["no_succeeded_row", "flags_zero", "succeeded_not_executed"])
def test_success_mismatch(plant: str) -> None:
    s = clean()
    if plant == "no_succeeded_row":   # b: executed in Neo4j, no SUCCEEDED row (nothing depends on b)
        s.log[(E, "b")] = dataclasses.replace(s.log[(E, "b")], succeeded=0, first_succeeded_at=None)
    elif plant == "flags_zero":
        s.tasks[(E, "b")] = dataclasses.replace(s.tasks[(E, "b")], flags=0)
    else:
        s.tasks[(E, "b")] = dataclasses.replace(s.tasks[(E, "b")], executed=False, flags=0)
    [v] = rule("success_mismatch")(s)
    assert v.detail.startswith(f"{E}/b: ")
    assert fired(s) == {"success_mismatch"}


def test_order_dispatch() -> None:
    s = clean()
    s.log[(E, "b")] = dataclasses.replace(s.log[(E, "b")], first_dispatched_at=T0 + 0.5)
    [v] = rule("order_dispatch")(s)
    assert f"{E}/b was first dispatched at {T0 + 0.5}" in v.detail
    assert fired(s) == {"order_dispatch"}


def test_order_start() -> None:
    s = clean()
    s.first_starts[(E, "b")] = Start(T0 + 0.5, "worker-7", 1)
    [v] = rule("order_start")(s)
    assert "started on worker-7" in v.detail
    assert fired(s) == {"order_start"}


def test_order_uses_the_earlier_of_the_flag_and_the_succeeded_row() -> None:
    s = clean()   # the leader died before its MariaDB commit: a's SUCCEEDED row was repaired later
    s.log[(E, "a")] = dataclasses.replace(s.log[(E, "a")], first_succeeded_at=T0 + 5)
    assert rule("order_dispatch")(s) == [] and rule("order_start")(s) == []


def test_fencing() -> None:
    s = clean()   # epoch 8 acted at T0+1; epoch 7 wrote b's success at T0+2
    s.epoch_first_at[8] = T0 + 1
    s.epoch_nodes[8] = ("node-2",)
    s.late_rows.append(TransitionRow(E, "b", "SUCCEEDED", 1, 7, "node-1", T0 + 2))
    [v] = rule("fencing")(s)
    assert "epoch 7" in v.detail and "epoch 8 had acted" in v.detail
    assert fired(s) == {"fencing"}
    s.late_rows[0] = dataclasses.replace(s.late_rows[0], at=T0 + 1)   # equal times are fine
    assert rule("fencing")(s) == []


@pytest.mark.parametrize("plant", ["two_writers", "other_than_term"])
def test_one_leader_per_epoch(plant: str) -> None:
    s = clean()
    if plant == "two_writers":
        s.epoch_nodes[7] = ("node-1", "node-2")
    else:
        s.terms[7] = "node-3"
    [v] = rule("one_leader_per_epoch")(s)
    assert "epoch 7 was acted on by 2 nodes" in v.detail
    assert fired(s) == {"one_leader_per_epoch"}


def test_double_execution() -> None:
    s = clean()
    s.repeated_executions.append(RepeatedExecution(E, "b", 1, 3, f"worker-1 at {T0 + 1.1}; worker-2 at {T0 + 1.2}; "
                                                                 f"worker-3 at {T0 + 1.3}"))
    [v] = rule("double_execution")(s)
    assert v.experiment_id == E and v.detail.startswith(f"{E}/b attempt 1 was executed 3 times (worker-1 at")
    assert fired(s) == {"double_execution"}
    report = evaluate(s)   # a violation, and still counted
    assert not report.ok and (report.duplicate_executions, report.duplicate_rows) == (1, 2)
    assert report.to_dict()["violations_by_kind"] == {"double_execution": 1}


def test_replays_are_not_double_execution() -> None:
    s = dataclasses.replace(clean(), replays=3)   # copies of a request answered from the ledger, not run
    assert rule("double_execution")(s) == []
    report = evaluate(s)
    assert report.ok and report.replays == 3 and report.duplicate_executions == 0


@pytest.mark.parametrize("plant", ["attempt_2_missing", "only_redispatched", "no_rows_at_all"])
def test_dispatch_unrecorded(plant: str) -> None:
    s = clean()
    if plant == "attempt_2_missing":   # a retry dispatched in Neo4j whose DISPATCHED row was never written
        s.tasks[(E, "b")] = dataclasses.replace(s.tasks[(E, "b")], attempt=3)
        s.log[(E, "b")] = dataclasses.replace(s.log[(E, "b")], dispatched_attempts=frozenset({1, 3}))
        missing, task = "2", "b"
    elif plant == "only_redispatched":  # a re-send is not the dispatch of the attempt
        s.log[(E, "a")] = dataclasses.replace(s.log[(E, "a")], dispatched_attempts=frozenset())
        missing, task = "1", "a"
    else:                               # a task of the experiment that has no transition row at all
        s.tasks[(E, "c")] = Task(False, 0, None, ("a",), attempt=2)
        missing, task = "1, 2", "c"
    [v] = rule("dispatch_unrecorded")(s)
    assert v.experiment_id == E
    assert v.detail.startswith(f"{E}/{task} is at attempt ") and f"attempt(s) {missing} have no DISPATCHED" in v.detail
    assert fired(s) == {"dispatch_unrecorded"}


@pytest.mark.parametrize("plant", ["cancelled_before_dispatch", "retried"])
def test_dispatch_unrecorded_is_silent_on_a_complete_log(plant: str) -> None:
    s = clean()
    if plant == "cancelled_before_dispatch":   # attempt 0: never dispatched, no row needed
        s.tasks[(E, "c")] = Task(False, 0, T0 + 2, ("b",), attempt=0)
    else:                                      # attempt 2 of b, dispatched (and re-sent) after attempt 1 failed
        s.tasks[(E, "b")] = dataclasses.replace(s.tasks[(E, "b")], attempt=2)
        s.log[(E, "b")] = dataclasses.replace(s.log[(E, "b")], dispatched_attempts=frozenset({1, 2}))
    assert rule("dispatch_unrecorded")(s) == []
    assert fired(s) == set()


def test_log_order_terminal_before_a_task_ended() -> None:
    s = clean()
    s.terminal_at[E] = T0 + 1.5   # COMPLETED before b's SUCCEEDED row at T0+2
    [v] = rule("log_order")(s)
    assert v.experiment_id == E
    assert v.detail == (f"experiment {E} has its terminal transition at {T0 + 1.5}, before task b ended "
                        f"(SUCCEEDED/FAILED) at {T0 + 2}")
    assert fired(s) == {"log_order"}
    s.terminal_at[E] = T0 + 2     # equal times are fine: one batch, one now
    assert rule("log_order")(s) == []


def test_log_order_attempt_ended_before_its_dispatch() -> None:
    s = clean()
    s.early_ends.append(AttemptOrder(E, "b", 1, dispatched_at=T0 + 1, ended_at=T0 + 0.5))
    [v] = rule("log_order")(s)
    assert v.detail == (f"{E}/b attempt 1 ended (SUCCEEDED/FAILED) at {T0 + 0.5}, before its DISPATCHED "
                        f"transition at {T0 + 1}")
    assert fired(s) == {"log_order"}
    s.early_ends[0] = AttemptOrder(E, "b", 1, dispatched_at=T0 + 1, ended_at=T0 + 1)   # equal times are fine
    assert rule("log_order")(s) == []
