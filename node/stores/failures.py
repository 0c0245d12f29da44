"""Each store's boundary: its driver's "the service did not answer" exceptions become one DependencyError.

    boundary = mariadb_boundary(cfg)
    with boundary:                     # a pymysql OperationalError leaves as DependencyError("mariadb", ...)
        run_transaction()

A boundary is entered once per transaction or batch, never per message (it costs one ``with``). Exceptions that
are not a dependency failure — :class:`~node.errors.FencedError`, ``ConflictError``, ``NotFoundError``, a
constraint violation, a bug — leave unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar, cast

import neo4j
import neo4j.exceptions
import pika.exceptions
import pymysql
from pika.adapters.blocking_connection import BlockingConnection

from node.config import Config
from node.errors import DependencyError
from node.stores.connect import suspect_if_silent

T = TypeVar("T")

#: MariaDB gone, restarting, connection dropped or killed, deadlock, lock wait timeout
MARIADB_ERRORS = (pymysql.err.OperationalError, pymysql.err.InterfaceError, pymysql.err.InternalError)
#: the broker or the connection went away
RABBITMQ_ERRORS = (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError,
                   pika.exceptions.StreamLostError, ConnectionError, OSError)
NEO4J_ERRORS = (neo4j.exceptions.DriverError, neo4j.exceptions.Neo4jError)
#: client errors that still mean "try again": our transaction was terminated (a newer leader's fence guard) or
#: outlived its timeout (``DagStore(tx_timeout_s=...)``: it ran, or waited on a lock, too long)
NEO4J_RETRYABLE_CODES = (".Transaction.Terminated", ".Transaction.LockClientStopped",
                         ".Transaction.TransactionTimedOut", ".Transaction.TransactionTimedOutClientConfiguration",
                         # a server refusing haorch's credentials is not ready yet: a new store gets its password
                         # from the launcher after Bolt listens (a Neo4j started on an emptied store)
                         ".Security.Unauthorized", ".Security.AuthenticationRateLimit")


def _always(_exc: BaseException) -> bool:
    return True


@dataclass(frozen=True)
class Boundary:
    """A context manager that turns ``errors`` (those ``failed`` accepts) into :class:`DependencyError`; the
    connection's ``host``, when known, becomes suspect if the error says it went silent."""

    service: str
    endpoint: str
    errors: tuple[type[BaseException], ...]
    failed: Callable[[BaseException], bool] = _always
    host: str | None = None

    def __enter__(self) -> Boundary:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and isinstance(exc, self.errors) and self.failed(exc):
            if self.host is not None:
                suspect_if_silent(self.host, exc)
            raise DependencyError(self.service, self.endpoint, describe(exc)) from exc


def mariadb_boundary(cfg: Config) -> Boundary:
    return Boundary("mariadb", ",".join(f"{h}:{p}" for h, p in cfg.mysql_endpoints), MARIADB_ERRORS)


def neo4j_boundary(driver: neo4j.Driver) -> Boundary:
    """For the stack's driver (a bolt:// URI from the config, so ``address`` is that server's)."""
    address = cast(neo4j.BoltDriver, driver).address  # only a direct (bolt://) driver has one address
    return Boundary("neo4j", str(address), NEO4J_ERRORS, _neo4j_failed)


def rabbitmq_boundary(source: Config | BlockingConnection, extra: tuple[type[BaseException], ...] = ()) -> Boundary:
    """For the config's broker, or a connection opened from it (pika has no public accessor for its address)."""
    if isinstance(source, Config):
        return Boundary("rabbitmq", ",".join(f"{h}:{p}" for h, p in source.rabbit_endpoints), RABBITMQ_ERRORS + extra)
    params = source._impl.params  # noqa: SLF001
    return Boundary("rabbitmq", f"{params.host}:{params.port}", RABBITMQ_ERRORS + extra, host=params.host)


def _neo4j_failed(exc: BaseException) -> bool:
    """Driver errors (unreachable, session expired) and server errors other than the caller's own mistakes
    (a bad query, a constraint violation) — a terminated transaction and refused credentials included."""
    if not isinstance(exc, neo4j.exceptions.ClientError):
        return True
    return (exc.code or "").endswith(NEO4J_RETRYABLE_CODES)


def describe(exc: BaseException) -> str:
    """``OperationalError 2003``, ``ServiceUnavailable``: the exception's type and its error code if any."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else getattr(exc, "code", None)
    return f"{type(exc).__name__} {code}" if code else type(exc).__name__


def at_boundary(method: Callable[..., T]) -> Callable[..., T]:
    """Method decorator for a store whose ``boundary`` attribute is its :class:`Boundary`."""
    @functools.wraps(method)
    def translated(self, *args, **kwargs):
        with self.boundary:
            return method(self, *args, **kwargs)
    return translated
