"""node/retry.py on a fake clock: deadlines, waits through ``idle``, the stop event, errors that pass through."""

from __future__ import annotations

import logging
import threading

import pytest

from node.errors import DependencyError, FencedError
from node.retry import RetryPolicy, call

POLICY = RetryPolicy(deadline_s=10.0, first_wait_s=1.0, max_wait_s=4.0)


class FakeClock:
    """``now()`` for the clock, ``sleep(s)`` for ``idle``: sleeping moves the clock on."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def failing(times: int, value: str = "ok", exc: Exception | None = None):
    calls = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc or DependencyError("mariadb", "127.0.0.1:1", "OperationalError 2003")
        return value

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


def test_retries_with_doubling_waits_through_idle_until_success(caplog) -> None:
    clock = FakeClock()
    fn = failing(3)
    with caplog.at_level(logging.INFO, logger="node.retry"):
        assert call(POLICY, fn, what="test: mariadb", idle=clock.sleep, clock=clock.now) == "ok"
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert len(fn.calls) == 4
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # one on the first failure, one on recovery
    assert lines[0].startswith("test: mariadb: mariadb at 127.0.0.1:1 unavailable (OperationalError 2003); retrying")
    assert lines[1] == "test: mariadb: answers again after 3 failed attempt(s)"


def test_deadline_is_respected_and_named_in_the_error() -> None:
    clock = FakeClock()
    fn = failing(1000)
    with pytest.raises(DependencyError) as raised:
        call(POLICY, fn, what="test", idle=clock.sleep, clock=clock.now)
    assert clock.t == pytest.approx(10.0)  # the last wait is cut to end at the deadline
    assert clock.sleeps == [1.0, 2.0, 4.0, 3.0]
    assert str(raised.value) == "mariadb at 127.0.0.1:1 unavailable for 10 s (OperationalError 2003)"


def test_non_retryable_error_passes_through_at_once() -> None:
    clock = FakeClock()
    fn = failing(5, exc=FencedError("mariadb", 3, 4))
    with pytest.raises(FencedError):
        call(POLICY, fn, what="test", idle=clock.sleep, clock=clock.now)
    assert len(fn.calls) == 1
    assert clock.sleeps == []


def test_stop_event_ends_the_retries_with_the_last_error() -> None:
    clock = FakeClock()
    stop = threading.Event()

    def idle(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 2:
            stop.set()

    fn = failing(1000)
    forever = RetryPolicy(deadline_s=None, first_wait_s=0.5, max_wait_s=0.5)
    with pytest.raises(DependencyError) as raised:
        call(forever, fn, what=None, stop=stop, idle=idle, clock=clock.now)
    assert len(fn.calls) == 2  # no attempt after the wait in which stop was set
    assert "for" not in str(raised.value)


def test_stop_event_is_the_default_wait() -> None:
    stop = threading.Event()
    stop.set()  # waits return at once; the first failure then ends the call
    fn = failing(1000)
    with pytest.raises(DependencyError):
        call(RetryPolicy(None, 60.0, 60.0), fn, what=None, stop=stop)
    assert len(fn.calls) == 1


def test_attempts_limit_and_on_failure_for_each_failed_attempt() -> None:
    clock = FakeClock()
    seen: list[BaseException] = []
    fn = failing(5)
    with pytest.raises(DependencyError):
        call(RetryPolicy(None, 0.0, 0.0, attempts=2), fn, what=None, idle=clock.sleep, clock=clock.now,
             on_failure=seen.append)
    assert len(fn.calls) == 2
    assert len(seen) == 2
