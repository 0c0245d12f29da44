"""The idle chain's floor: what its durability points cost on this stack when each is timed alone with haorch's own
clients (a part of ``haorch bench throughput``, run on the idle stack with the cluster stopped).

An idle 4-step chain, measured as :func:`bench.throughput.idle_latency` does (the experiment's ``created_at`` to
the ``now`` of the leader's batch that completes it), waits for these one after the other:

- 5 Neo4j write transactions: the submit's DAG, the root's dispatch, and the dispatch of tasks 2..4 (the batch of
  each response);
- 9 quorum-queue hops, publish to delivery: the submit's notice, 4 requests, 4 responses;
- 9 MariaDB commits: the submit's row, and each task's claim and end in the ledger.

The leader's own MariaDB write is off that path (it publishes a batch's requests first, and writes on a thread of
its own). Each kind is timed ``samples`` times in a row with the smallest unit that has its durability point: a
Neo4j write transaction that locks one node (BEGIN sent with the statement, as the leader does); a persistent
message published with confirms to a quorum queue until a consumer on another connection has it; a one-row INSERT
and its commit in MariaDB. ``floor = 5 N + 9 Q + 9 M`` (each p50): no chain with these durability points is faster,
and what the measured chain takes beyond the floor is the orchestrator's own work and waits. The scratch node,
queue and table (``bench_floor_<id>``) are removed afterwards, also after an error.
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
import uuid
from collections.abc import Callable

import pika

from node.config import Config
from node.stores.connect import amqp_parameters, mysql_connect, neo4j_driver
from node.stores.queues import QUORUM

NEO4J_WRITES, QUEUE_HOPS, MARIADB_COMMITS = 5, 9, 9
DELIVERY_TIMEOUT_S = 10.0

Progress = Callable[[str], None]


def _neo4j_ms(cfg: Config, name: str, samples: int) -> list[float]:
    driver = neo4j_driver(cfg)
    try:
        driver.execute_query("MERGE (n:BenchFloor {name: $name})", name=name)
        times = []
        for i in range(samples):
            started = time.perf_counter()
            driver.execute_query("MATCH (n:BenchFloor {name: $name}) SET n.i = $i", name=name, i=i)
            times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        driver.execute_query("MATCH (n:BenchFloor {name: $name}) DELETE n", name=name)
        driver.close()


def _queue_ms(cfg: Config, name: str, samples: int) -> list[float]:
    """Publish (confirmed) to delivery on a consumer of another connection, one message at a time."""
    publisher = pika.BlockingConnection(amqp_parameters(cfg, name=f"{name}-publisher"))
    channel = publisher.channel()
    arrivals: queue.Queue[float] = queue.Queue()
    consuming = threading.Event()
    consumer = pika.BlockingConnection(amqp_parameters(cfg, name=f"{name}-consumer"))
    inbound = consumer.channel()

    def consume() -> None:
        inbound.basic_consume(name, lambda *_: arrivals.put(time.perf_counter()), auto_ack=True)
        consuming.set()
        inbound.start_consuming()

    thread = threading.Thread(target=consume, name="bench-floor-consumer", daemon=True)
    try:
        channel.queue_declare(queue=name, durable=True, arguments=QUORUM)
        thread.start()
        if not consuming.wait(DELIVERY_TIMEOUT_S):
            raise TimeoutError(f"{name}: the consumer did not start")
        channel.confirm_delivery()
        times = []
        for i in range(samples):
            started = time.perf_counter()
            channel.basic_publish("", name, str(i).encode(), pika.BasicProperties(delivery_mode=2))
            times.append((arrivals.get(timeout=DELIVERY_TIMEOUT_S) - started) * 1000)
        return times
    finally:
        if thread.is_alive():
            consumer.add_callback_threadsafe(inbound.stop_consuming)
            thread.join(DELIVERY_TIMEOUT_S)
        consumer.close()
        channel.queue_delete(name)
        publisher.close()


def _mariadb_ms(cfg: Config, name: str, samples: int) -> list[float]:
    conn = mysql_connect(cfg)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {name} (id BIGINT AUTO_INCREMENT PRIMARY KEY, at DOUBLE NOT NULL)")
            times = []
            for _ in range(samples):
                started = time.perf_counter()
                cur.execute(f"INSERT INTO {name} (at) VALUES (%s)", (time.time(),))
                conn.commit()
                times.append((time.perf_counter() - started) * 1000)
            return times
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {name}")
        conn.close()


def run(cfg: Config, samples: int = 200, progress: Progress = lambda _m: None,
        scratch: str | None = None) -> dict[str, float]:
    """p50 ms of each durability point and the floor they make for an idle 4-step chain (module docstring); the
    scratch node, queue and table are named ``scratch`` (a fresh ``bench_floor_<id>`` when None)."""
    name = scratch or f"bench_floor_{uuid.uuid4().hex[:12]}"
    parts = {"neo4j_write": _neo4j_ms(cfg, name, samples), "queue_hop": _queue_ms(cfg, name, samples),
             "mariadb_commit": _mariadb_ms(cfg, name, samples)}
    result = {f"{part}_p50_ms": statistics.median(times) for part, times in parts.items()}
    result["floor_ms"] = (NEO4J_WRITES * result["neo4j_write_p50_ms"] + QUEUE_HOPS * result["queue_hop_p50_ms"]
                          + MARIADB_COMMITS * result["mariadb_commit_p50_ms"])
    result["samples"] = samples
    progress(f"floor: Neo4j write {result['neo4j_write_p50_ms']:.2f} ms, "
             f"queue hop {result['queue_hop_p50_ms']:.2f} ms, MariaDB commit {result['mariadb_commit_p50_ms']:.2f} ms: "
             f"an idle chain takes at least {result['floor_ms']:.1f} ms")
    return result
