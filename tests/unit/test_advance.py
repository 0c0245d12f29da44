"""The leader's classification of a batch of responses (node.model.advance.classify): every case, no server."""

from __future__ import annotations

from node.model.advance import Outcome, classify
from node.model.states import TaskStatus


def task(key: str, status: str = TaskStatus.DISPATCHED, attempt: int = 1, max_attempts: int = 3) -> dict:
    experiment_id, name = key.split("/")
    return {"key": key, "experiment_id": experiment_id, "name": name, "kind": "job_submission", "status": status,
            "attempt": attempt, "max_attempts": max_attempts, "dispatched_at": 100.0}


def test_a_response_for_no_task_is_unknown() -> None:
    verdict = classify([Outcome("e/ghost", 1, True)], {"e/a": task("e/a")})
    assert verdict.unknown == ["e/ghost"]
    assert not (verdict.successes or verdict.retries or verdict.fails or verdict.duplicates)


def test_a_success_of_the_current_attempt_flags_the_task() -> None:
    verdict = classify([Outcome("e/a", 2, True)], {"e/a": task("e/a", attempt=2)})
    assert verdict.successes == [{"key": "e/a", "experiment_id": "e", "name": "a", "kind": "job_submission",
                                  "attempt": 2, "dispatched_at": 100.0}]
    assert not (verdict.retries or verdict.fails or verdict.duplicates or verdict.unknown)


def test_the_same_task_twice_in_one_batch_counts_once_and_the_copy_is_a_duplicate() -> None:
    verdict = classify([Outcome("e/a", 1, True), Outcome("e/a", 1, True)], {"e/a": task("e/a")})
    assert [s["key"] for s in verdict.successes] == ["e/a"]
    assert verdict.duplicates == ["e/a"]


def test_a_response_for_an_older_attempt_is_a_stale_duplicate() -> None:
    verdict = classify([Outcome("e/a", 1, False, "late")], {"e/a": task("e/a", attempt=2)})
    assert verdict.duplicates == ["e/a"] and not (verdict.successes or verdict.retries or verdict.fails)


def test_a_response_for_a_task_no_longer_dispatched_is_a_duplicate() -> None:
    for status in (TaskStatus.SUCCEEDED, TaskStatus.CANCELLED, TaskStatus.RETRY_WAIT, TaskStatus.PENDING):
        verdict = classify([Outcome("e/a", 1, True)], {"e/a": task("e/a", status=status)})
        assert verdict.duplicates == ["e/a"] and not verdict.successes, status


def test_a_failure_while_attempts_remain_is_a_retry_with_its_error() -> None:
    verdict = classify([Outcome("e/a", 2, False, "boom")], {"e/a": task("e/a", attempt=2, max_attempts=3)})
    assert [(r["key"], r["attempt"], r["error"]) for r in verdict.retries] == [("e/a", 2, "boom")]
    assert not (verdict.fails or verdict.successes)


def test_a_failure_of_the_last_attempt_fails_the_task() -> None:
    verdict = classify([Outcome("e/a", 3, False, "boom")], {"e/a": task("e/a", attempt=3, max_attempts=3)})
    assert [(f["key"], f["attempt"], f["error"]) for f in verdict.fails] == [("e/a", 3, "boom")]
    assert not (verdict.retries or verdict.successes)


def test_a_mixed_batch_keeps_the_order_of_the_responses() -> None:
    tasks = {k: task(k, max_attempts=1 if k == "e/c" else 2) for k in ("e/a", "e/b", "e/c", "e/d")}
    verdict = classify([Outcome("e/d", 1, True), Outcome("e/b", 1, False, "x"), Outcome("e/a", 1, True),
                        Outcome("e/c", 1, False, "y"), Outcome("f/z", 1, True)], tasks)
    assert [s["key"] for s in verdict.successes] == ["e/d", "e/a"]
    assert [r["key"] for r in verdict.retries] == ["e/b"]
    assert [f["key"] for f in verdict.fails] == ["e/c"]
    assert verdict.unknown == ["f/z"] and verdict.duplicates == []
