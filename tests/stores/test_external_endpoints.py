"""Every client reaches services named as external (real servers: the session's stack, addressed only through the
settings), fails over past a dead member of a list, and `stack` manages none of them."""

from __future__ import annotations

import pytest

from node.config import Config, with_overrides
from node.stack import manager
from node.stores.connect import neo4j_driver, zookeeper_client
from node.stores.rabbit import connect
from node.stores.records import Records

pytestmark = pytest.mark.stack


@pytest.fixture
def external(stack: Config) -> Config:
    """The stack's services as external ones, under a port base whose derived ports have nothing behind them; each
    list starts with a dead member."""
    nowhere = stack.port_base + 700
    (mq_host, mq_port), (db_host, db_port) = stack.rabbit_endpoints[0], stack.mysql_endpoints[0]
    return with_overrides(stack, port_base=nowhere, zookeeper=stack.zk_hosts, neo4j=stack.neo4j_uri,
                          prometheus=stack.prometheus_url,
                          rabbitmq=f"127.0.0.1:{nowhere + 30},{mq_host}:{mq_port}",
                          mariadb=f"127.0.0.1:{nowhere + 40},{db_host}:{db_port}")


def test_clients_use_the_external_services_past_a_dead_member(external: Config, stack: Config) -> None:
    records = Records(external, retry_for_s=5.0)
    try:
        assert records.fence_epoch() == Records(stack).fence_epoch()
    finally:
        records.close()
    conn = connect(external, "external-test")
    assert conn.is_open
    conn.close()
    zk = zookeeper_client(external, "external-test")
    try:
        assert "zookeeper" in zk.get_children("/")
    finally:
        zk.stop()
        zk.close()
    with neo4j_driver(external) as driver:
        records_, _, _ = driver.execute_query("MATCH (f:Fence {name: 'leader'}) RETURN f.epoch AS e")
        assert len(records_) == 1


def test_the_stack_manages_none_of_them_and_puts_the_schemas_and_queues_on_them(external: Config) -> None:
    assert manager.services(external) == [] and manager.status(external) == []
    lines: list[str] = []
    result = manager.up(external, progress=lines.append)
    assert result.started == [] and result.already_running == []
    assert [line.split(":")[0] for line in lines[:3]] == ["mariadb", "neo4j", "rabbitmq"]
    assert manager.down(external) == []  # the services run on, untouched
