"""Helpers for the orchestrator core tests: run the CLI, read the stores, talk to the broker, start and stop the
cluster's processes. Everything goes to the real test stack; nothing is mocked."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import pymysql
import yaml

from node import cluster
from node.config import Config
from node.model.states import TERMINAL_EXPERIMENT_STATES as TERMINAL
from node.paths import REPO_ROOT
from node.stores.connect import amqp_parameters, mysql_connect_args, neo4j_driver

#: settings of the cluster processes in these tests (passed as HAORCH_<NAME> environment variables)
CLUSTER_ENV = {"HAORCH_TASK_TIMEOUT_GRACE_S": "0.5", "HAORCH_SWEEP_INTERVAL_S": "0.2"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- the CLI -------------------------------------------------------------------------------------------------
def cli(cfg: Config, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    """``haorch ARGS`` in a subprocess against the test stack."""
    env = {"HAORCH_HOME": str(cfg.home), "HAORCH_PORT_BASE": str(cfg.port_base), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "node.cli", *args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout_s)


def cli_ok(cfg: Config, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    done = cli(cfg, *args, timeout_s=timeout_s)
    assert done.returncode == 0, f"haorch {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}"
    return done


def cli_json(cfg: Config, *args: str, timeout_s: float = 120.0) -> Any:
    return json.loads(cli_ok(cfg, *args, "--json", timeout_s=timeout_s).stdout)


def submit(cfg: Config, type_: str, experiment_id: str | None = None, *params: str) -> str:
    args = ["submit", type_] + (["--id", experiment_id] if experiment_id else [])
    for p in params:
        args += ["--param", p]
    return cli_json(cfg, *args)["experiment_id"]


def register(cfg: Config, directory: Path, template: dict[str, Any]) -> subprocess.CompletedProcess:
    """``haorch template register`` of ``template`` written as YAML into ``directory``."""
    path = directory / f"{template.get('type', 'template')}-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(template, sort_keys=False))
    return cli(cfg, "template", "register", str(path))


def wait_all(cfg: Config, ids: list[str], timeout_s: float = 60.0) -> dict[str, str]:
    """Poll MariaDB until every experiment is terminal; their states. Fails the test on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = experiment_states(cfg, ids)
        if all(states.get(i) in TERMINAL for i in ids):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"not terminal after {timeout_s} s: "
                                 f"{ {i: s for i, s in states.items() if s not in TERMINAL} }")
        time.sleep(0.1)


# --- MariaDB -------------------------------------------------------------------------------------------------
def query(cfg: Config, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
    conn = pymysql.connect(**mysql_connect_args(cfg))
    try:
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def experiment_states(cfg: Config, ids: list[str]) -> dict[str, str]:
    marks = ",".join(["%s"] * len(ids))
    rows = query(cfg, f"SELECT experiment_id, state FROM experiments WHERE experiment_id IN ({marks})", tuple(ids))
    return {r["experiment_id"]: r["state"] for r in rows}


def transitions(cfg: Config, experiment_id: str) -> list[dict[str, Any]]:
    return query(cfg, "SELECT id, task, from_state, to_state, attempt, epoch, at, detail FROM transitions "
                      "WHERE experiment_id = %s ORDER BY id", (experiment_id,))


def task_rows(rows: list[dict[str, Any]], task: str, *to_states: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["task"] == task and (not to_states or r["to_state"] in to_states)]


# --- Neo4j ---------------------------------------------------------------------------------------------------
def cypher(cfg: Config, statement: str, **params: Any) -> list[dict[str, Any]]:
    driver = neo4j_driver(cfg)
    try:
        records, _, _ = driver.execute_query(statement, **params)
        return [dict(r) for r in records]
    finally:
        driver.close()


def dag_tasks(cfg: Config, experiment_id: str) -> dict[str, dict[str, Any]]:
    """name -> {status, attempt, executed, depends_on} of an experiment's task nodes."""
    rows = cypher(cfg, "MATCH (t:Task {experiment_id: $id}) OPTIONAL MATCH (t)-[:DEPENDS_ON]->(p:Task) "
                       "RETURN t.name AS name, t.status AS status, t.attempt AS attempt, t.executed AS executed, "
                       "t.flags AS flags, collect(p.name) AS depends_on", id=experiment_id)
    return {r["name"]: r for r in rows}


# --- RabbitMQ ------------------------------------------------------------------------------------------------
def publish(cfg: Config, queue: str, *bodies: bytes) -> None:
    conn = pika.BlockingConnection(amqp_parameters(cfg, heartbeat_s=0, name="core-tests"))
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
    finally:
        conn.close()


def purge(cfg: Config, *queues: str) -> None:
    conn = pika.BlockingConnection(amqp_parameters(cfg, heartbeat_s=0, name="core-tests"))
    try:
        channel = conn.channel()
        for queue in queues:
            channel.queue_purge(queue)
    finally:
        conn.close()


def take(cfg: Config, queue: str, n: int, timeout_s: float = 10.0) -> list[tuple[Any, bytes]]:
    """Consume (and ack) up to ``n`` messages of ``queue``: (properties, body) pairs."""
    got: list[tuple[Any, bytes]] = []
    conn = pika.BlockingConnection(amqp_parameters(cfg, heartbeat_s=0, name="core-tests"))
    try:
        channel = conn.channel()
        deadline = time.monotonic() + timeout_s
        for method, props, body in channel.consume(queue, inactivity_timeout=0.1):
            if method is not None:
                got.append((props, body))
                channel.basic_ack(method.delivery_tag)
            if len(got) >= n or time.monotonic() > deadline:
                break
        channel.cancel()
    finally:
        conn.close()
    return got


def queue_depth(cfg: Config, queue: str) -> int:
    conn = pika.BlockingConnection(amqp_parameters(cfg, heartbeat_s=0, name="core-tests"))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


# --- cluster processes ---------------------------------------------------------------------------------------
WORKERS: list[int] = []  # the worker numbers of the cluster fixture


def free_worker_numbers(cfg: Config, n: int) -> list[int]:
    """``n`` worker numbers whose /metrics port is free: another stack on this machine (port bases 100 apart)
    may hold ``worker_http_port(1)``, and a worker that cannot bind its port exits at once."""
    from node.stack.service import port_in_use

    found = [i for i in range(1, 100) if cluster.worker_process(cfg, i).alive() or not port_in_use(
        cfg.host, cfg.worker_http_port(i))][:n]
    assert len(found) == n, "no free worker ports"
    return found


def stop_workers(cfg: Config) -> None:
    for i in WORKERS:
        cluster.worker_process(cfg, i).stop(grace_s=10.0)


def start_workers(cfg: Config) -> None:
    for i in WORKERS:
        cluster.start_worker(cfg, i, cfg.worker_concurrency)
    cluster.publish_targets(cfg)


def metric(cfg: Config, name: str, node: int = 1) -> float:
    """Sum of every sample of ``name`` on node ``node``'s /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{cfg.node_http_port(node)}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- checks --------------------------------------------------------------------------------------------------
def assert_completed_in_order(cfg: Config, experiment_id: str) -> list[dict[str, Any]]:
    """The experiment COMPLETED, every task SUCCEEDED exactly once, and no task was dispatched before every one
    of its predecessors' SUCCEEDED row was written (by ``at`` and by row ``id``); returns the transitions."""
    rows = transitions(cfg, experiment_id)
    tasks = dag_tasks(cfg, experiment_id)
    assert tasks, f"no DAG for {experiment_id}"
    assert experiment_states(cfg, [experiment_id]) == {experiment_id: "COMPLETED"}
    assert [r["to_state"] for r in rows if r["task"] is None][-1] == "COMPLETED"
    for name, task in tasks.items():
        assert task["status"] == "SUCCEEDED" and task["executed"] is True, (name, task)
        assert task["flags"] == 1, f"{name} flagged {task['flags']} times"
        assert len(task_rows(rows, name, "SUCCEEDED")) == 1, (name, task_rows(rows, name))
        dispatched = task_rows(rows, name, "DISPATCHED", "REDISPATCHED")
        assert dispatched, f"{name} never dispatched"
        for pred in task["depends_on"]:
            (done,) = task_rows(rows, pred, "SUCCEEDED")
            for d in dispatched:
                assert d["id"] > done["id"] and d["at"] >= done["at"], (
                    f"{experiment_id}: {name} dispatched (row {d['id']}, at {d['at']}) before {pred} "
                    f"succeeded (row {done['id']}, at {done['at']})")
        (success,) = task_rows(rows, name, "SUCCEEDED")
        assert success["id"] > dispatched[0]["id"]
    return rows
