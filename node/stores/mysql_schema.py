"""MariaDB schema: experiments, the transition log, the execution ledger, the fence row and leader terms.

Created idempotently by ``haorch stack up``. Times are UNIX seconds (DOUBLE) so that every process compares
them the same way.
"""

from __future__ import annotations

from node.config import Config
from node.stores.connect import mysql_connect

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS experiments (
        experiment_id VARCHAR(64) NOT NULL PRIMARY KEY,
        type VARCHAR(64) NOT NULL,
        template_version INT NOT NULL,
        state VARCHAR(16) NOT NULL,
        params TEXT NOT NULL,
        created_at DOUBLE NOT NULL,
        updated_at DOUBLE NOT NULL,
        finished_at DOUBLE NULL,
        KEY idx_state_created (state, created_at)
    ) ENGINE=InnoDB""",
    # the listing's order: a page of any depth is one index range (with a state, idx_state_created serves, as
    # InnoDB appends the primary key to it); a separate statement so that existing tables get it too
    "CREATE INDEX IF NOT EXISTS idx_created ON experiments (created_at, experiment_id)",
    # one row per task (or experiment, task IS NULL) state change, with the epoch of the leader that made it
    """CREATE TABLE IF NOT EXISTS transitions (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        experiment_id VARCHAR(64) NOT NULL,
        task VARCHAR(64) NULL,
        from_state VARCHAR(16) NULL,
        to_state VARCHAR(16) NOT NULL,
        attempt INT NOT NULL DEFAULT 0,
        epoch BIGINT NOT NULL,
        node_id VARCHAR(64) NOT NULL,
        at DOUBLE NOT NULL,
        detail VARCHAR(255) NULL,
        KEY idx_exp_task (experiment_id, task),
        KEY idx_epoch (epoch)
    ) ENGINE=InnoDB""",
    # one row per execution attempt: the worker's claim on it (unique: at most one execution per attempt)
    """CREATE TABLE IF NOT EXISTS ledger (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        experiment_id VARCHAR(64) NOT NULL,
        task VARCHAR(64) NOT NULL,
        attempt INT NOT NULL,
        worker VARCHAR(64) NOT NULL,
        epoch BIGINT NOT NULL,
        started_at DOUBLE NOT NULL,
        ended_at DOUBLE NULL,
        outcome VARCHAR(16) NULL,
        result TEXT NULL,
        error VARCHAR(512) NULL,
        replayed_count INT NOT NULL DEFAULT 0,
        deadline DOUBLE NULL,
        UNIQUE KEY attempt_once (experiment_id, task, attempt)
    ) ENGINE=InnoDB""",
    # ledgers made before claims: the deadline column, and the unique key once the duplicate executions of the
    # at-least-once era are gone (the earliest row of an attempt is the one its replays always answered from)
    "ALTER TABLE ledger ADD COLUMN IF NOT EXISTS deadline DOUBLE NULL",
    """DELETE later FROM ledger later JOIN ledger first ON later.experiment_id = first.experiment_id
        AND later.task = first.task AND later.attempt = first.attempt AND later.id > first.id
        WHERE NOT EXISTS (SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE()
                          AND table_name = 'ledger' AND index_name = 'attempt_once')""",
    "CREATE UNIQUE INDEX IF NOT EXISTS attempt_once ON ledger (experiment_id, task, attempt)",
    "DROP INDEX IF EXISTS idx_task_attempt ON ledger",
    # the leader fence: a DAG-advancing transaction locks this row and rejects itself if epoch > its own
    """CREATE TABLE IF NOT EXISTS fence (
        name VARCHAR(32) NOT NULL PRIMARY KEY,
        epoch BIGINT NOT NULL,
        holder VARCHAR(64) NULL,
        raised_at DOUBLE NOT NULL
    ) ENGINE=InnoDB""",
    "INSERT IGNORE INTO fence (name, epoch, holder, raised_at) VALUES ('leader', 0, NULL, 0)",
    # every fenced transaction writes the row (hb + 1): a real write is a fence on Galera too (see Records)
    "ALTER TABLE fence ADD COLUMN IF NOT EXISTS hb BIGINT NOT NULL DEFAULT 0",
    # one row per committed leader batch: a retried transaction whose commit did go through (only its
    # acknowledgement was lost) finds its id here and writes nothing twice
    """CREATE TABLE IF NOT EXISTS applied_batches (
        batch_id CHAR(32) NOT NULL PRIMARY KEY,
        at DOUBLE NOT NULL,
        KEY idx_at (at)
    ) ENGINE=InnoDB""",
    # one row per leader term: who led which epoch, and the timestamps of each takeover phase
    """CREATE TABLE IF NOT EXISTS leader_terms (
        epoch BIGINT NOT NULL PRIMARY KEY,
        node_id VARCHAR(64) NOT NULL,
        elected_at DOUBLE NOT NULL,
        phases TEXT NULL
    ) ENGINE=InnoDB""",
]

TABLES = ("experiments", "transitions", "ledger", "fence", "applied_batches", "leader_terms")


def ensure_schema(cfg: Config) -> None:
    """Create every table (idempotent)."""
    conn = mysql_connect(cfg)
    try:
        with conn.cursor() as cur:
            for statement in SCHEMA:
                cur.execute(statement)
        conn.commit()
    finally:
        conn.close()
