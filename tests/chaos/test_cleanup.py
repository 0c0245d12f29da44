"""Benchmarks and chaos runs leave nothing behind in the stores: every experiment they create has an id of their
own and is deleted from MariaDB and Neo4j when the run ends, also when it is interrupted. Small sizes, real stack.
"""

from __future__ import annotations

import os

import pika
import pika.exceptions
import pytest

from bench import durations, failover, floor, probes, throughput
from chaos_tests import scenarios
from node import cluster
from node.config import Config
from node.stores.connect import amqp_parameters, neo4j_driver

pytestmark = pytest.mark.stack


def leftovers(cfg: Config, prefix: str) -> dict[str, int]:
    """Rows and nodes of the experiments whose id starts with ``prefix``, per table and label (zeros dropped)."""
    like = prefix + "%"
    counts = {table: probes.query(cfg, f"SELECT COUNT(*) FROM {table} WHERE experiment_id LIKE %s", (like,))[0][0]
              for table in ("experiments", "transitions", "ledger")}
    with neo4j_driver(cfg) as driver:
        for label in ("Experiment", "Task"):
            records, _, _ = driver.execute_query(
                f"MATCH (x:{label}) WHERE x.experiment_id STARTS WITH $p RETURN count(x) AS n", p=prefix)
            counts[label] = records[0]["n"]
    return {k: v for k, v in counts.items() if v}


def test_throughput_run_deletes_its_chains(stack: Config) -> None:
    seen: list[str] = []
    result = throughput.run_config(stack, "tiny", batch_size=2, experiments=4, workers=1, progress=seen.append)
    assert result.advancements == 16                      # 4 chains of 4 steps ran through the real stack
    assert leftovers(stack, "bench-tiny-") == {}
    assert all(r["pid"] is None for r in cluster.status(stack))   # the cluster is stopped before the purge


def test_floor_times_each_durability_point_and_leaves_no_scratch(stack: Config) -> None:
    scratch = f"bench_floor_test_{os.getpid()}"
    result = floor.run(stack, samples=5, scratch=scratch)
    parts = ("neo4j_write", "queue_hop", "mariadb_commit")
    assert all(0 < result[f"{p}_p50_ms"] < 1000 for p in parts), result
    assert result["floor_ms"] == (floor.NEO4J_WRITES * result["neo4j_write_p50_ms"]
                                  + floor.QUEUE_HOPS * result["queue_hop_p50_ms"]
                                  + floor.MARIADB_COMMITS * result["mariadb_commit_p50_ms"])
    assert not probes.query(stack, "SELECT 1 FROM information_schema.tables WHERE table_name = %s", (scratch,))
    with neo4j_driver(stack) as driver:
        assert driver.execute_query("MATCH (n:BenchFloor) RETURN count(n) AS n").records[0]["n"] == 0
    conn = pika.BlockingConnection(amqp_parameters(stack))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
            conn.channel().queue_declare(scratch, passive=True)
    finally:
        conn.close()


class Interrupted(KeyboardInterrupt):
    pass


def test_interrupted_rescan_benchmark_deletes_what_it_submitted(stack: Config) -> None:
    def interrupt(message: str) -> None:
        if "submitted" in message:                        # after the first batch of chains is in both stores
            assert leftovers(stack, "bench-rescan-").get("Experiment") == 1000
            raise Interrupted

    with pytest.raises(Interrupted):
        failover.rescan_time(stack, experiments=2000, progress=interrupt)
    assert leftovers(stack, "bench-rescan-") == {}


def test_chaos_run_deletes_its_experiments(stack: Config) -> None:
    result = scenarios.run(stack, "kill-worker", kills=0, experiments=4, rate=8.0, nodes=1, workers=1,
                           quiesce_s=60.0)
    assert result["ok"], result["check_markdown"]
    assert result["check"]["experiments"] == 4 and result["prefix"].startswith("chaos-kill-worker-")
    assert leftovers(stack, result["prefix"]) == {}


def test_durations_run_executes_each_task_once_and_deletes_its_chains(stack: Config) -> None:
    seen: list[str] = []
    result = durations.run_part(stack, ms=20, chains=6, workers=1, concurrency=2, progress=seen.append)
    assert result.advancements == 24 and result.exactly_once, result      # 6 chains of 4 sleep tasks
    assert result.utilization is not None and 0 < result.utilization <= 1
    assert result.hop_p50_ms > 0
    assert leftovers(stack, "bench-d20-") == {}
    assert all(r["pid"] is None for r in cluster.status(stack))
