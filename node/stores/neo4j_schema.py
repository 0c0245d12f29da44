"""Neo4j constraints and indexes: unique keys for templates, experiments and tasks, and the rescan index.

The takeover rescan looks for task nodes with ``executed = false`` whose predecessors are all executed; each
task keeps ``waiting`` (predecessors not yet executed), so the rescan is one index seek on
``(executed, waiting, key)`` — paged by key — that touches only ready tasks, however long the history.
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
    "CREATE CONSTRAINT outbox_id IF NOT EXISTS FOR (o:Outbox) REQUIRE o.id IS UNIQUE",
    "CREATE INDEX outbox_at IF NOT EXISTS FOR (o:Outbox) ON (o.at)",
    "CREATE CONSTRAINT fence_name IF NOT EXISTS FOR (f:Fence) REQUIRE f.name IS UNIQUE",
    "MERGE (f:Fence {name: 'leader'}) ON CREATE SET f.epoch = 0",
]


def ensure_schema(cfg: Config) -> None:
    """Create every constraint and index (idempotent) and wait for the indexes to come online."""
    with neo4j_driver(cfg) as driver:
        for statement in SCHEMA:
            driver.execute_query(statement)
        driver.execute_query("CALL db.awaitIndexes(60)")
