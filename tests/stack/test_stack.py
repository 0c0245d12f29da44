"""The service stack, against the real processes: quorum, auth, schema, queues, restart, idempotency."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pika
import pymysql
import pytest
from kazoo.client import KazooClient
from neo4j import GraphDatabase
from neo4j.exceptions import AuthError

from node.config import NEO4J_USER, with_overrides
from node.errors import ServiceError
from node.stack import manager
from node.stack.prometheus import prometheus_query
from node.stack.rabbitmq import RabbitMQ
from node.stack.zookeeper import zk_mode
from node.stores.connect import amqp_parameters, mysql_connect_args, neo4j_driver
from node.stores.mysql_schema import TABLES
from node.stores.queues import QUEUES, REQUESTS

pytestmark = pytest.mark.stack

HAORCH = [sys.executable, "-m", "node.cli"]


def haorch(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(HAORCH + list(args), capture_output=True, text=True, timeout=180,
                          env={**os.environ, **env})


def test_status_lists_seven_healthy_processes(stack):
    out = haorch("stack", "status", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["service"] for r in rows] == ["zookeeper-1", "zookeeper-2", "zookeeper-3", "rabbitmq", "mariadb",
                                           "neo4j", "prometheus"]
    for row in rows:
        assert set(row) >= {"service", "pid", "port", "healthy"}
        assert row["healthy"] is True and row["pid"] > 0, row


def test_zookeeper_has_a_quorum_of_three(stack):
    modes = [zk_mode(stack.host, stack.zk_client_port(m)) for m in (1, 2, 3)]
    assert sorted(modes) == ["follower", "follower", "leader"]
    zk = KazooClient(hosts=stack.zk_hosts, timeout=5)
    zk.start(timeout=10)
    try:
        zk.ensure_path("/haorch-test/quorum")
        zk.set("/haorch-test/quorum", b"ok")
        assert zk.get("/haorch-test/quorum")[0] == b"ok"
    finally:
        zk.stop()
        zk.close()


def test_rabbitmq_publish_consume_on_quorum_queues_with_generated_user(stack):
    conn = pika.BlockingConnection(amqp_parameters(stack, name="test"))
    try:
        ch = conn.channel()
        for queue in QUEUES:  # passive declare: exists, and re-declaring as quorum does not conflict
            ch.queue_declare(queue=queue, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_purge(REQUESTS)
        ch.confirm_delivery()
        ch.basic_publish("", REQUESTS, b"hello", pika.BasicProperties(delivery_mode=2))
        method, _props, body = next(ch.consume(REQUESTS, inactivity_timeout=5))
        assert body == b"hello"
        ch.basic_ack(method.delivery_tag)
        ch.cancel()
    finally:
        conn.close()


def test_rabbitmq_schedulers_are_unbound(stack):
    """Bound Erlang schedulers (RabbitMQ's default) stay on their core while the stack's other programs run there."""
    out = RabbitMQ(stack).cli("rabbitmqctl", "eval", "erlang:system_info(scheduler_bind_type).")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "unbound"


def test_rabbitmq_rejects_guest_and_wrong_password(stack):
    for user, password in (("guest", "guest"), ("haorch", "wrong")):
        [params] = amqp_parameters(stack)  # the managed stack: one broker
        params.credentials = pika.PlainCredentials(user, password)
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(params)


def test_mariadb_has_the_schema(stack):
    conn = pymysql.connect(**mysql_connect_args(stack))
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            assert set(TABLES) <= {row[0] for row in cur.fetchall()}
            cur.execute("SELECT epoch FROM fence WHERE name = 'leader'")
            assert cur.fetchone() is not None
    finally:
        conn.close()


def test_neo4j_answers_with_auth_and_rejects_a_wrong_password(stack):
    with neo4j_driver(stack) as driver:
        records, _, _ = driver.execute_query("SHOW INDEXES YIELD name RETURN collect(name) AS names")
        assert "task_ready" in records[0]["names"]
    with GraphDatabase.driver(stack.neo4j_uri, auth=(NEO4J_USER, "wrong-password")) as bad, pytest.raises(AuthError):
        bad.verify_connectivity()


def test_prometheus_answers_up(stack):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        result = prometheus_query(stack, 'up{job="prometheus"}')
        if result:
            assert result[0]["value"][1] == "1"
            return
        time.sleep(0.5)
    pytest.fail("prometheus never scraped itself")


def test_second_up_is_a_noop(stack):
    result = manager.up(stack)
    assert result.started == []
    assert len(result.already_running) == 7


def test_losing_one_zookeeper_member_keeps_the_ensemble_serving_and_up_restarts_it(stack):
    member = next(s for s in manager.services(stack) if s.name == "zookeeper-3")
    old_pid = member.proc.pid()
    member.proc.signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while member.proc.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not member.proc.alive()
    zk = KazooClient(hosts=f"{stack.host}:{stack.zk_client_port(1)},{stack.host}:{stack.zk_client_port(2)}", timeout=5)
    zk.start(timeout=15)
    try:
        zk.ensure_path("/haorch-test/one-down")
        assert zk.exists("/haorch-test/one-down")
    finally:
        zk.stop()
        zk.close()
    result = manager.up(stack)
    assert result.started == ["zookeeper-3"]
    assert member.proc.pid() not in (None, old_pid)
    assert zk_mode(stack.host, stack.zk_client_port(3)) in ("leader", "follower")


def test_port_in_use_names_service_and_port(stack, tmp_path):
    other = with_overrides(stack, port_base=18600)
    other = other.__class__(**{**other.__dict__, "home": tmp_path / "other"})
    blocker = socket.socket()
    blocker.bind((other.host, other.mysql_port))
    blocker.listen(1)
    try:
        with pytest.raises(ServiceError, match=rf"mariadb: port {other.mysql_port} .* already in use"):
            manager.up(other)
        assert not any(s.proc.alive() for s in manager.services(other)), "nothing may start on a port conflict"
        out = haorch("stack", "up", HAORCH_HOME=str(other.home), HAORCH_PORT_BASE="18600")
        assert out.returncode == 1
        assert out.stderr.strip().count("\n") == 0, out.stderr
        assert f"port {other.mysql_port}" in out.stderr and "mariadb" in out.stderr
    finally:
        blocker.close()


def test_down_leaves_no_process_behind_and_up_restores(stack):
    from node.runtime.process import group_members, pid_alive

    pids = set()
    for service in manager.services(stack):
        pid = service.proc.pid()
        assert pid is not None
        pids |= {pid, *group_members(pid)}
    epmd = manager.RabbitMQ(stack).epmd.pid()
    assert epmd is not None
    pids.add(epmd)
    out = haorch("stack", "down", "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["stopped"]) == 7
    assert not [p for p in pids if pid_alive(p)]
    assert not list(stack.run_dir.glob("*.pid"))
    assert manager.up(stack).started  # the rest of the session needs the stack again
