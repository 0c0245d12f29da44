"""Every exception type users can see, with the one-line messages they read.

The CLI turns a :class:`HaorchError` into ``haorch: <message>`` on stderr and its ``exit_code``:
2 for bad input (the caller can fix it), 1 for a failure of the system (a service down, a timeout), 75 for a
submission refused because the cluster is busy (:class:`Busy`: try again later).
"""

from __future__ import annotations


class HaorchError(Exception):
    """Base class: a failure with a message meant for a human, never a traceback."""

    exit_code = 1


class UsageError(HaorchError):
    """Bad input from the caller: arguments, files, ids, templates."""

    exit_code = 2


class TemplateError(UsageError):
    """A template that cannot be registered (cycle, unknown dependency, duplicate name, ...)."""


class UnknownTypeError(UsageError):
    """An experiment type that is not registered."""


class NotFoundError(UsageError):
    """An experiment, template or task id that does not exist."""


class ConflictError(UsageError):
    """A request that contradicts existing state (e.g. resubmitting an id with another type)."""


class AccessDenied(UsageError):
    """An API request whose token's role does not allow what it asks (HTTP 403); exit 2: another token fixes it."""


class NotAuthenticated(AccessDenied):
    """An API request without a token, or with one that is unknown, malformed or revoked (HTTP 401)."""


class ServiceError(HaorchError):
    """A dependency (ZooKeeper, RabbitMQ, MariaDB, Neo4j, Prometheus) is missing, down or misbehaving."""


class SetupError(ServiceError):
    """Something the machine needs is not installed: the message names the setup command."""


class DependencyError(ServiceError):
    """A store (``service``: mariadb, neo4j, rabbitmq) at ``endpoint`` failed to answer: down, restarting, the
    connection dropped. Each store raises it in place of its driver's exception; callers retry or reconnect."""

    def __init__(self, service: str, endpoint: str, cause: str, for_s: float | None = None) -> None:
        lasting = "" if for_s is None else f" for {for_s:.0f} s"
        super().__init__(f"{service} at {endpoint} unavailable{lasting} ({cause})")
        self.service = service
        self.endpoint = endpoint
        self.cause = cause

    def lasting(self, seconds: float) -> DependencyError:
        """The same failure, after it lasted ``seconds`` (a retry gave up)."""
        return DependencyError(self.service, self.endpoint, self.cause, seconds)


class IncompleteSubmit(ServiceError):
    """A submit that a store failure interrupted: it may be recorded without its DAG. Retrying it with the same id
    is safe (submit is idempotent on the id), and the leader completes a recorded one by itself."""


class FencedError(HaorchError):
    """A write carried a leader epoch lower than the fence: the writer is no longer the leader."""

    def __init__(self, store: str, mine: int, fence: int) -> None:
        super().__init__(f"{store} fence is at epoch {fence}, this leader holds epoch {mine}: stepping down")
        self.store = store
        self.mine = mine
        self.fence = fence


class Busy(HaorchError):
    """A submission refused because the cluster has as many experiments in flight as it accepts
    (``max_in_flight``): nothing was stored; submit again after ``retry_after_s`` (HTTP 429 with Retry-After)."""

    exit_code = 75  # EX_TEMPFAIL: try again later

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TimeoutExpired(HaorchError):
    """A wait ran out of time."""


class MalformedMessage(HaorchError):
    """A queue message that cannot be decoded; the leader dead-letters it with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed message: {reason}")
        self.reason = reason
