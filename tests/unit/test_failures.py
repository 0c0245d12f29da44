"""node/stores/failures.py: which driver exceptions become DependencyError at a store's boundary."""

from __future__ import annotations

import neo4j.exceptions
import pika.exceptions
import pymysql
import pytest

from node.config import Config
from node.errors import ConflictError, DependencyError
from node.stores.failures import RABBITMQ_ERRORS, Boundary, mariadb_boundary
from node.stores.failures import _neo4j_failed as neo4j_failed


def test_a_lost_mariadb_becomes_one_dependency_error_naming_the_configured_endpoint(tmp_path) -> None:
    cfg = Config(home=tmp_path, port_base=23000, host="127.0.0.2")
    with pytest.raises(DependencyError) as raised, mariadb_boundary(cfg):
        raise pymysql.err.OperationalError(2003, "Can't connect")
    assert raised.value.service == "mariadb"
    assert str(raised.value) == f"mariadb at {cfg.host}:{cfg.mysql_port} unavailable (OperationalError 2003)"


@pytest.mark.parametrize("exc", [pymysql.err.IntegrityError(1062, "dup"), ConflictError("exists"), ValueError()])
def test_other_errors_pass_through_unchanged(exc: Exception) -> None:
    boundary = Boundary("mariadb", "h:1", (pymysql.err.OperationalError,))
    with pytest.raises(type(exc)), boundary:
        raise exc


def test_rabbitmq_connection_errors_are_translated() -> None:
    with (
        pytest.raises(DependencyError, match=r"^rabbitmq at h:2 unavailable \(StreamLostError\)$"),
        Boundary("rabbitmq", "h:2", RABBITMQ_ERRORS),
    ):
        raise pika.exceptions.StreamLostError("gone")


def test_neo4j_transient_and_driver_errors_are_dependency_failures_client_mistakes_are_not() -> None:
    assert neo4j_failed(neo4j.exceptions.ServiceUnavailable("down"))
    assert neo4j_failed(neo4j.exceptions.TransientError._hydrate_neo4j(
        code="Neo.TransientError.General.DatabaseUnavailable", message="x"))
    assert neo4j_failed(neo4j.exceptions.Neo4jError._hydrate_neo4j(
        code="Neo.ClientError.Transaction.Terminated", message="x"))
    assert not neo4j_failed(neo4j.exceptions.Neo4jError._hydrate_neo4j(
        code="Neo.ClientError.Schema.ConstraintValidationFailed", message="x"))
