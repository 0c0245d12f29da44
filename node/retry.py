"""The one retry policy of node/: named policies with deadlines, and :func:`call` to run a callable under one.

    rows = call(STORE_OPERATION, select, what="ledger: mariadb", on_failure=drop_connection)
    conn = call(RECONNECT, open_connection, what="worker-1: rabbitmq", stop=stop_event)

A failed attempt that raises one of ``retry_on`` (by default the stores' :class:`~node.errors.DependencyError`;
or a predicate on the exception) is retried after an exponential wait, until the policy's deadline or attempts
run out or ``stop`` is set; then the last error is raised (a DependencyError that outlived the deadline says for
how long). Any other exception (:class:`~node.errors.FencedError`, a bug) passes through at once. The waits run
``idle(seconds)``, so that a worker keeps its AMQP heartbeats flowing while it waits for MariaDB. One warning is
logged on the first failure of a call and one line when it succeeds after failures (unless ``what`` is None: the
caller logs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

from node.errors import DependencyError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to retry: waits double from ``first_wait_s`` up to ``max_wait_s``."""

    deadline_s: float | None  # give up this long after the first attempt; None: only ``stop`` ends it
    first_wait_s: float
    max_wait_s: float
    attempts: int | None = None  # give up after this many attempts; None: no limit

    def within(self, deadline_s: float) -> RetryPolicy:
        """The same policy with another deadline (a store built for a caller that waits less)."""
        return RetryPolicy(deadline_s, self.first_wait_s, self.max_wait_s, self.attempts)


#: one store transaction or statement: MariaDB or Neo4j restarting, a dropped connection, a deadlock
STORE_OPERATION = RetryPolicy(deadline_s=60.0, first_wait_s=0.05, max_wait_s=2.0)
#: opening a RabbitMQ connection for a process that cannot work without one
CONNECT = RetryPolicy(deadline_s=60.0, first_wait_s=0.1, max_wait_s=2.0)
#: reopening a lost connection, for as long as the process is not stopped
RECONNECT = RetryPolicy(deadline_s=None, first_wait_s=0.1, max_wait_s=2.0)
#: a worker's or a leader term's serving loop after a dependency failure, while it should still serve
RESUME = RetryPolicy(deadline_s=None, first_wait_s=0.5, max_wait_s=0.5)
#: a best-effort send on a kept connection that may have died meanwhile (broker restart): reconnect once
REOPEN_ONCE = RetryPolicy(deadline_s=None, first_wait_s=0.0, max_wait_s=0.0, attempts=2)

Stop = threading.Event | Callable[[], bool]
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


class _Stopped(Exception):
    """Raised from a wait after which ``stop`` is set: no further attempt."""


def call(policy: RetryPolicy, fn: Callable[[], T], *, what: str | None,
         retry_on: RetryOn = DependencyError,
         stop: Stop | None = None, idle: Callable[[float], object] | None = None,
         on_failure: Callable[[BaseException], None] | None = None,
         clock: Callable[[], float] = time.monotonic) -> T:
    """``fn()`` under ``policy``; see the module docstring. ``on_failure(exc)`` runs after every failed attempt
    that is retried or ends the call (drop a broken connection, set a gauge)."""
    retryable = _predicate(retry_on)
    stopped = stop.is_set if isinstance(stop, threading.Event) else stop or (lambda: False)
    wait = idle or (stop.wait if isinstance(stop, threading.Event) else time.sleep)
    started = clock()
    failures: list[BaseException] = []  # the failed attempts that were retried
    last: list[BaseException | None] = []  # the failed attempt that ended the call
    backoff = wait_exponential(multiplier=policy.first_wait_s, max=policy.max_wait_s)

    def expired() -> bool:
        return policy.deadline_s is not None and clock() - started >= policy.deadline_s

    def give_up(state: RetryCallState) -> bool:
        done = stopped() or expired() or (policy.attempts is not None and state.attempt_number >= policy.attempts)
        if done and state.outcome is not None:
            last.append(state.outcome.exception())
        return done

    def next_wait(state: RetryCallState) -> float:
        seconds = backoff(state)
        if policy.deadline_s is not None:  # the last wait ends at the deadline, not after it
            seconds = min(seconds, max(0.0, policy.deadline_s - (clock() - started)))
        return seconds

    def failed(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        assert exc is not None
        failures.append(exc)
        if on_failure is not None:
            on_failure(exc)
        if len(failures) == 1 and what is not None:
            until = "until stopped" if policy.deadline_s is None else f"for up to {policy.deadline_s:.0f} s"
            log.warning("%s: %s; retrying %s", what, _one_line(exc), until)

    def pause(seconds: float) -> None:
        wait(seconds)
        if stopped():
            raise _Stopped

    retrying = Retrying(stop=give_up, wait=next_wait, retry=retry_if_exception(retryable), before_sleep=failed,
                        sleep=pause, reraise=True)
    try:
        value = retrying(fn)
    except _Stopped:
        raise failures[-1] from failures[-1].__cause__
    except BaseException as exc:
        if not retryable(exc):
            raise
        if on_failure is not None and last and exc is last[0]:  # not an error raised by on_failure itself
            on_failure(exc)
        deadline_s = policy.deadline_s
        if isinstance(exc, DependencyError) and deadline_s is not None and expired() and not stopped():
            raise exc.lasting(deadline_s) from exc.__cause__
        raise
    if failures and what is not None:
        log.info("%s: answers again after %d failed attempt(s)", what, len(failures))
    return value


def _predicate(retry_on: RetryOn) -> Callable[[BaseException], bool]:
    if isinstance(retry_on, (type, tuple)):
        types = retry_on
        return lambda exc: isinstance(exc, types)
    return retry_on


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, DependencyError) else f"{type(exc).__name__}: {text or 'no message'}"
