"""Suspect hosts (node/stores/connect.py): a connection that went silent makes its host suspect, so the process's
other connections to it are left and reconnects try it last — without a server."""

from __future__ import annotations

from collections.abc import Iterator

import pika.exceptions
import pymysql
import pytest

from node.errors import DependencyError
from node.stores import connect


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    connect._suspects.clear()
    connect._peers.clear()
    yield
    connect._suspects.clear()
    connect._peers.clear()


def lost(cause: BaseException) -> DependencyError:
    """A DependencyError raised from ``cause``, as a store boundary raises it."""
    try:
        try:
            raise cause
        except BaseException as exc:
            raise DependencyError("mariadb", "h1:1", type(exc).__name__) from exc
    except DependencyError as wrapped:
        return wrapped


def test_a_silent_connection_makes_its_host_suspect_and_a_refusal_does_not() -> None:
    connect.member_hosts(["h1", "h2", "h3"])
    connect.suspect_if_silent("h1", lost(pymysql.err.OperationalError(2013, "Lost connection ([Errno 111] refused)")))
    assert not connect.suspected("h1")
    connect.suspect_if_silent("h1", lost(pymysql.err.OperationalError(2013, "Lost connection (timed out)")))
    assert connect.suspected("h1") and not connect.suspected("h2")
    connect.suspect_if_silent("h2", pika.exceptions.AMQPHeartbeatTimeout("no heartbeat"))
    assert connect.suspected("h2")
    assert connect.healthy_first(["h1", "h2", "h3"], [0, 1, 2]) == [2, 0, 1]
    assert connect.healthy_first(["h1", "h3", "h2"], [0, 1, 2]) == [1, 0, 2]  # suspects last, in their order
    connect.trusted("h1")
    assert not connect.suspected("h1")


def test_a_host_is_left_only_for_a_member_host_that_is_not_suspect() -> None:
    connect.member_hosts(["127.0.0.1"])  # the single-host stack: nowhere else to go
    connect.suspect_if_silent("127.0.0.1", TimeoutError())
    assert not connect.suspected("127.0.0.1")
    connect.member_hosts(["h1", "h2"])
    connect.suspect_if_silent("h1", TimeoutError())
    connect.suspect_if_silent("h2", TimeoutError())
    assert not connect.suspected("h1") and not connect.suspected("h2")  # both silent: stay where you are
