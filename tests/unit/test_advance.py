"""The leader's classification of a batch of responses (node.model.advance.classify): every case, no server."""

from __future__ import annotations

from node.model.advance import MAX_LOST_ATTEMPTS, Outcome, classify
from node.model.states import TaskStatus

NOW = 1000.0


def task(key: str, status: str = TaskStatus.DISPATCHED, attempt: int = 1, max_attempts: int = 3) -> dict:
    experiment_id, name = key.split("/")
    return {"key": key, "experiment_id": experiment_id, "name": name, "kind": "job_submission", "status": status,
            "attempt": attempt, "max_attempts": max_attempts, "dispatched_at": 100.0, "timeout_s": 60.0}


def test_a_response_for_no_task_is_unknown() -> None:
    verdict = classify([Outcome("e/ghost", 1, True)], {"e/a": task("e/a")}, NOW)
    assert verdict.unknown == ["e/ghost"]
    assert not (verdict.successes or verdict.retries or verdict.fails or verdict.duplicates)


def test_a_success_of_the_current_attempt_flags_the_task() -> None:
    verdict = classify([Outcome("e/a", 2, True)], {"e/a": task("e/a", attempt=2)}, NOW)
    assert verdict.successes == [{"key": "e/a", "experiment_id": "e", "name": "a", "kind": "job_submission",
                                  "attempt": 2, "dispatched_at": 100.0}]
    assert not (verdict.retries or verdict.fails or verdict.duplicates or verdict.unknown)


def test_the_same_task_twice_in_one_batch_counts_once_and_the_copy_is_a_duplicate() -> None:
    verdict = classify([Outcome("e/a", 1, True), Outcome("e/a", 1, True)], {"e/a": task("e/a")}, NOW)
    assert [s["key"] for s in verdict.successes] == ["e/a"]
    assert verdict.duplicates == ["e/a"]


def test_a_response_for_an_older_attempt_is_a_stale_duplicate() -> None:
    verdict = classify([Outcome("e/a", 1, False, "late")], {"e/a": task("e/a", attempt=2)}, NOW)
    assert verdict.duplicates == ["e/a"] and not (verdict.successes or verdict.retries or verdict.fails)


def test_a_response_for_a_task_no_longer_dispatched_is_a_duplicate() -> None:
    for status in (TaskStatus.SUCCEEDED, TaskStatus.CANCELLED, TaskStatus.RETRY_WAIT, TaskStatus.PENDING):
        verdict = classify([Outcome("e/a", 1, True)], {"e/a": task("e/a", status=status)}, NOW)
        assert verdict.duplicates == ["e/a"] and not verdict.successes, status


def test_a_failure_while_attempts_remain_is_a_retry_with_its_error() -> None:
    verdict = classify([Outcome("e/a", 2, False, "boom")], {"e/a": task("e/a", attempt=2, max_attempts=3)}, NOW)
    assert [(r["key"], r["attempt"], r["error"]) for r in verdict.retries] == [("e/a", 2, "boom")]
    assert not (verdict.fails or verdict.successes)


def test_a_failure_of_the_last_attempt_fails_the_task() -> None:
    verdict = classify([Outcome("e/a", 3, False, "boom")], {"e/a": task("e/a", attempt=3, max_attempts=3)}, NOW)
    assert [(f["key"], f["attempt"], f["error"]) for f in verdict.fails] == [("e/a", 3, "boom")]
    assert not (verdict.retries or verdict.successes)


def test_a_mixed_batch_keeps_the_order_of_the_responses() -> None:
    tasks = {k: task(k, max_attempts=1 if k == "e/c" else 2) for k in ("e/a", "e/b", "e/c", "e/d")}
    verdict = classify([Outcome("e/d", 1, True), Outcome("e/b", 1, False, "x"), Outcome("e/a", 1, True),
                        Outcome("e/c", 1, False, "y"), Outcome("f/z", 1, True)], tasks, NOW)
    assert [s["key"] for s in verdict.successes] == ["e/d", "e/a"]
    assert [r["key"] for r in verdict.retries] == ["e/b"]
    assert [f["key"] for f in verdict.fails] == ["e/c"]
    assert verdict.unknown == ["f/z"] and verdict.duplicates == []


def test_a_lost_attempt_is_retried_without_counting_against_the_task_s_attempts() -> None:
    one_try = {**task("e/a", max_attempts=1), "lost": 0}
    verdict = classify([Outcome("e/a", 1, False, "abandoned: worker died", lost=True)], {"e/a": one_try}, NOW)
    assert [(r["key"], r["lost"]) for r in verdict.retries] == [("e/a", True)] and not verdict.fails
    after_loss = {**one_try, "attempt": 2, "lost": 1}  # attempt 2 is the task's first real try
    verdict = classify([Outcome("e/a", 2, False, "boom")], {"e/a": after_loss}, NOW)
    assert [f["error"] for f in verdict.fails] == ["boom"] and not verdict.retries
    verdict = classify([Outcome("e/a", 2, False, "boom")], {"e/a": {**after_loss, "max_attempts": 2}}, NOW)
    assert [(r["key"], r["lost"]) for r in verdict.retries] == [("e/a", False)]


def test_a_task_that_keeps_losing_its_workers_fails_after_max_lost_attempts() -> None:
    row = {**task("e/a", attempt=MAX_LOST_ATTEMPTS + 1), "lost": MAX_LOST_ATTEMPTS}
    verdict = classify([Outcome("e/a", MAX_LOST_ATTEMPTS + 1, False, "abandoned: x", lost=True)], {"e/a": row}, NOW)
    assert not verdict.retries
    assert [f["error"] for f in verdict.fails] == [
        f"lost {MAX_LOST_ATTEMPTS + 1} attempts to workers that died or froze; last: abandoned: x"]


def test_a_waiting_attempt_is_re_checked_until_its_task_s_timeout_then_fails_like_any_attempt() -> None:
    first = classify([Outcome("e/a", 1, False, recheck_after_s=2.0, waiting_on="job 7 RUNNING")], {"e/a": task("e/a")},
                     NOW)
    assert first.waits == [{"key": "e/a", "recheck_at": NOW + 2.0, "waiting_on": "job 7 RUNNING"}]
    assert not (first.successes or first.retries or first.fails)
    within = {**task("e/a"), "waiting_since": NOW - 60.0}
    assert classify([Outcome("e/a", 1, False, recheck_after_s=2.0, waiting_on="x")], {"e/a": within}, NOW).waits
    late = {**task("e/a", max_attempts=1), "waiting_since": NOW - 61.0}
    verdict = classify([Outcome("e/a", 1, False, recheck_after_s=2.0, waiting_on="job 7 RUNNING")], {"e/a": late},
                       NOW)
    assert not verdict.waits
    assert [f["error"] for f in verdict.fails] == ["still waiting after the task's timeout of 60 s: job 7 RUNNING"]
    stale = classify([Outcome("e/a", 1, False, recheck_after_s=2.0, waiting_on="x")],
                     {"e/a": task("e/a", attempt=2)}, NOW)
    assert stale.duplicates == ["e/a"] and not stale.waits


def test_a_success_for_a_task_cancelled_meanwhile_is_an_orphan_to_undo() -> None:
    cancelled = task("e/a", status=TaskStatus.CANCELLED)
    verdict = classify([Outcome("e/a", 1, True)], {"e/a": cancelled}, NOW)
    assert verdict.duplicates == ["e/a"] and verdict.orphans == ["e/a"]
    assert classify([Outcome("e/a", 1, False, "x")], {"e/a": cancelled}, NOW).orphans == []
    assert classify([Outcome("e/a", 1, True)], {"e/a": task("e/a", attempt=2, status=TaskStatus.CANCELLED)},
                    NOW).orphans == []
