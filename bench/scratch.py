"""The experiments of one benchmark or chaos run: ids of their own, removed from both stores when the run ends.

    with Scratch(cfg, "bench-throughput") as scratch:    # scratch.prefix == "bench-throughput-<run id>-"
        exps.submit_many("chain", [f"{scratch.prefix}{i:05d}" for i in range(100)])
        ...                                              # stop the cluster before leaving the block
    # left (also on an exception or Ctrl-C): every row and node of an id starting with the prefix is deleted

What a run creates and this deletes: MariaDB ``experiments``, ``transitions`` and ``ledger`` rows and Neo4j
``Experiment`` and ``Task`` nodes of its ids. Not the cluster-wide history (``leader_terms``, the fence): epochs
only grow. Leave the block with the cluster stopped or the run's experiments finished: a leader or worker still
busy with one of them could write a row after the purge (requests still queued in RabbitMQ are not purged: a
later worker runs them and its ledger row outlives the purge).

Neo4j goes first: a submission writes MariaDB before Neo4j, so a purge interrupted between the stores leaves
MariaDB rows, which the next ``purge`` of the prefix removes (it is idempotent); each store is deleted in bounded
transactions, so a crash mid-purge loses nothing else.
"""

from __future__ import annotations

import uuid
from typing import Any

import pymysql

from node.config import Config
from node.stores.connect import mysql_connect_args, neo4j_driver

TABLES = ("transitions", "ledger", "experiments")
BATCH = 10000


class Scratch:
    """A run's id prefix ``<namespace>-<run id>-`` and its purge on exit."""

    def __init__(self, cfg: Config, namespace: str) -> None:
        self.cfg = cfg
        self.run_id = uuid.uuid4().hex[:6]
        self.prefix = f"{namespace}-{self.run_id}-"

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.purge()

    def purge(self) -> dict[str, int]:
        return purge(self.cfg, self.prefix)


def purge(cfg: Config, prefix: str) -> dict[str, int]:
    """Delete every experiment whose id starts with ``prefix`` from Neo4j and MariaDB; rows/nodes deleted."""
    deleted: dict[str, int] = {}
    with neo4j_driver(cfg) as driver:
        for label in ("Task", "Experiment"):  # one label per query: the experiment_id indexes serve STARTS WITH
            deleted[label] = 0
            while True:
                records, _, _ = driver.execute_query(
                    f"MATCH (x:{label}) WHERE x.experiment_id STARTS WITH $p WITH x LIMIT $batch DETACH DELETE x "
                    "RETURN count(*) AS n", p=prefix, batch=BATCH)
                deleted[label] += records[0]["n"]
                if records[0]["n"] < BATCH:
                    break
    like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    conn = pymysql.connect(**mysql_connect_args(cfg))
    try:
        with conn.cursor() as cur:
            for table in TABLES:
                deleted[table] = 0
                while True:
                    n = cur.execute(f"DELETE FROM {table} WHERE experiment_id LIKE %s LIMIT %s", (like, BATCH))
                    conn.commit()
                    deleted[table] += n
                    if n < BATCH:
                        break
    finally:
        conn.close()
    return deleted
