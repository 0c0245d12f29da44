"""Neo4j constraints and indexes: unique keys for templates, experiments and tasks, and the rescan index.

The takeover rescan looks for task nodes with ``executed = false`` whose predecessors are all executed; each
task keeps ``waiting`` (predecessors not yet executed), so the rescan is one index seek on
``(executed, waiting, key)`` — paged by key — that touches only ready tasks, however long the history.

Concurrency pools (``node/stores/pools.py``): the leader counts a bounded pool's DISPATCHED tasks and finds its held
ones (PENDING with ``waiting = 0``, RETRY_WAIT) through ``(pool, status, waiting)``. Tasks created before pools have
no ``pool``: :func:`ensure_schema` gives the open ones their kind, in bounded transactions, so that the index holds
every task a limit can concern (finished tasks never count).
"""

from __future__ import annotations

from node.config import Config
from node.stores.connect import neo4j_driver

SCHEMA = [
    "CREATE CONSTRAINT template_key IF NOT EXISTS FOR (t:Template) REQUIRE (t.type, t.version) IS UNIQUE",
    "CREATE CONSTRAINT template_task_key IF NOT EXISTS FOR (t:TemplateTask) REQUIRE t.key IS UNIQUE",
    "CREATE CONSTRAINT experiment_id IF NOT EXISTS FOR (e:Experiment) REQUIRE e.experiment_id IS UNIQUE",
    "CREATE CONSTRAINT task_key IF NOT EXISTS FOR (t:Task) REQUIRE t.key IS UNIQUE",
    "DROP INDEX task_rescan IF EXISTS",  # its first version lacked `key`, so the planner ignored it for paging
    "CREATE INDEX task_ready IF NOT EXISTS FOR (t:Task) ON (t.executed, t.waiting, t.key)",
    "CREATE INDEX task_experiment IF NOT EXISTS FOR (t:Task) ON (t.experiment_id)",
    "CREATE INDEX task_status IF NOT EXISTS FOR (t:Task) ON (t.status)",
    # the sweep's never-dispatched roots: a seek, not a scan of every PENDING successor of a large backlog
    "CREATE INDEX task_status_waiting IF NOT EXISTS FOR (t:Task) ON (t.status, t.waiting)",
    # concurrency pools: a bounded pool's DISPATCHED count and held tasks, one seek each
    "CREATE INDEX task_pool IF NOT EXISTS FOR (t:Task) ON (t.pool, t.status, t.waiting)",
    "CREATE CONSTRAINT outbox_id IF NOT EXISTS FOR (o:Outbox) REQUIRE o.id IS UNIQUE",
    "CREATE INDEX outbox_at IF NOT EXISTS FOR (o:Outbox) ON (o.at)",
    "CREATE CONSTRAINT fence_name IF NOT EXISTS FOR (f:Fence) REQUIRE f.name IS UNIQUE",
    "MERGE (f:Fence {name: 'leader'}) ON CREATE SET f.epoch = 0",
]


#: open tasks given their pool per transaction by :func:`ensure_schema`
POOL_FILL_PAGE = 10_000
POOL_FILL_PAGES = 1_000  # ten million open tasks: far beyond any store's
#: the open tasks of a store older than pools get their kind as their pool (a seek on the ready index's ``executed``)
POOL_FILL = ("MATCH (t:Task) WHERE t.executed = false AND t.pool IS NULL WITH t LIMIT $limit "
             "SET t.pool = t.kind RETURN count(t) AS n")


def ensure_schema(cfg: Config) -> None:
    """Create every constraint and index (idempotent), wait for the indexes to come online, and give open tasks
    without a ``pool`` their kind (a page per transaction: a crash leaves the rest for the next run)."""
    with neo4j_driver(cfg) as driver:
        for statement in SCHEMA:
            driver.execute_query(statement)
        driver.execute_query("CALL db.awaitIndexes(60)")
        for _ in range(POOL_FILL_PAGES):
            records, _, _ = driver.execute_query(POOL_FILL, limit=POOL_FILL_PAGE)
            if records[0]["n"] < POOL_FILL_PAGE:
                break
