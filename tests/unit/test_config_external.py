"""Services haorch uses but does not manage: the settings, their validation and what they change (no server)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.config import Config, load_config, with_overrides
from node.errors import UsageError
from node.stack import manager


@pytest.fixture(autouse=True)
def no_haorch_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from these tests only (a stack fixture of the same session exports HAORCH_* variables)."""
    for name in [n for n in os.environ if n.startswith("HAORCH_")]:
        monkeypatch.delenv(name)


def test_unset_means_the_managed_loopback_stack(tmp_path: Path) -> None:
    cfg = load_config(tmp_path)
    assert cfg.zk_hosts == "127.0.0.1:17101,127.0.0.1:17102,127.0.0.1:17103"
    assert cfg.rabbit_endpoints == [("127.0.0.1", 17130)] and cfg.mysql_endpoints == [("127.0.0.1", 17140)]
    assert (cfg.neo4j_uri, cfg.prometheus_url) == ("bolt://127.0.0.1:17150", "http://127.0.0.1:17160")
    assert [s.name for s in manager.services(cfg)] == [
        "zookeeper-1", "zookeeper-2", "zookeeper-3", "rabbitmq", "mariadb", "neo4j", "prometheus"]


def test_external_services_are_used_by_clients_and_left_alone_by_the_stack(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "haorch.toml").write_text('zookeeper = "zk-a:2181,zk-b:2181,zk-c:2181"\n'
                                          'mariadb = "db-1:3306, db-2:3306,db-3:3306"\n')
    monkeypatch.setenv("HAORCH_RABBITMQ", "mq-1:5672,mq-2:5672")
    monkeypatch.setenv("HAORCH_NEO4J", "bolt://graph:7687")
    cfg = load_config(tmp_path)
    assert cfg.zk_hosts == "zk-a:2181,zk-b:2181,zk-c:2181"
    assert cfg.mysql_endpoints == [("db-1", 3306), ("db-2", 3306), ("db-3", 3306)]
    assert cfg.rabbit_endpoints == [("mq-1", 5672), ("mq-2", 5672)]
    assert cfg.neo4j_uri == "bolt://graph:7687" and cfg.prometheus_url == "http://127.0.0.1:17160"
    assert [s.name for s in manager.services(cfg)] == ["prometheus"]
    assert cfg.external("zookeeper-2") and not cfg.external("prometheus")


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("mariadb", "db-1", "config value mariadb: 'db-1' is not host:port"),
    ("rabbitmq", "mq-1:5672,mq-2:http", "config value rabbitmq: 'mq-2:http' is not host:port"),
    ("zookeeper", "zk:99999", "config value zookeeper: 'zk:99999' is not host:port"),
    ("neo4j", "graph:7687", "config value neo4j='graph:7687' must start with bolt:// or neo4j://"),
    ("prometheus", "prom:9090", "config value prometheus='prom:9090' must start with http:// or https://"),
])
def test_a_malformed_endpoint_is_a_one_line_error(tmp_path: Path, setting: str, value: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        with_overrides(Config(home=tmp_path), **{setting: value})
    assert str(caught.value).startswith(message)
