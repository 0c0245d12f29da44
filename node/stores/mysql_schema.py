"""MariaDB schema: experiments, the transition log, the execution ledger, the fence row, leader terms, and what
Neo4j is rebuilt from (template definitions, the graph's generation), API tokens and the audit log.

Created idempotently by ``haorch stack up``: every statement creates only what is missing, so an existing database
gains the tables and columns it lacks. Times are UNIX seconds (DOUBLE) so that every process compares them the
same way.

MariaDB is the system of record: Neo4j (Community, one server) can be rebuilt from it by ``haorch recover neo4j``
(``node/recover.py``): every template definition (``templates``), every experiment with its type, template
version and params (``experiments``), and every task's history (``transitions``, from which each task's status,
attempt, retry state and executed flag follow).
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
    # a listing of one type (GET /api/experiments?type=), in the same order
    "CREATE INDEX IF NOT EXISTS idx_type_created ON experiments (type, created_at, experiment_id)",
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
    # every template version an experiment may refer to, as Neo4j stores it (``definition``: the canonical JSON of
    # Template.to_dict()); written when a template is registered and, in the same transaction, with every
    # experiment row of that version (node/stores/graph_record.py)
    """CREATE TABLE IF NOT EXISTS templates (
        type VARCHAR(64) NOT NULL,
        version INT NOT NULL,
        hash CHAR(64) NOT NULL,
        definition MEDIUMTEXT NOT NULL,
        registered_at DOUBLE NOT NULL,
        PRIMARY KEY (type, version)
    ) ENGINE=InnoDB""",
    # which Neo4j store holds the graph of this database: ``generation`` is also stamped on Neo4j's Fence node, and
    # nobody advances a DAG in a Neo4j whose stamp differs (an emptied or replaced store: `haorch recover neo4j`)
    """CREATE TABLE IF NOT EXISTS graph (
        name VARCHAR(32) NOT NULL PRIMARY KEY,
        generation CHAR(32) NULL,
        changed_at DOUBLE NULL,
        rebuilt_at DOUBLE NULL
    ) ENGINE=InnoDB""",
    "INSERT IGNORE INTO graph (name) VALUES ('neo4j')",
    # API tokens (node/access/tokens.py): only the sha256 hex of each token is kept. A fast, unsalted hash is
    # right here: a token is 32 random bytes, so there is no dictionary to precompute and no brute force to slow
    # down (salts and slow hashes exist for low-entropy passwords), and a plain hash lets a request find its row
    # through the unique index. Names are never reused, not even after a revocation: the audit log names tokens.
    """CREATE TABLE IF NOT EXISTS api_tokens (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        name VARCHAR(64) NOT NULL UNIQUE,
        role VARCHAR(16) NOT NULL,
        token_hash CHAR(64) NOT NULL UNIQUE,
        prefix VARCHAR(16) NOT NULL,
        created_at DOUBLE NOT NULL,
        created_by VARCHAR(128) NOT NULL,
        revoked_at DOUBLE NULL,
        revoked_by VARCHAR(128) NULL,
        last_used_at DOUBLE NULL
    ) ENGINE=InnoDB""",
    # the audit log (node/access/audit.py): one row per mutation through the API or the CLI, and per refusal;
    # paged newest first by id, filtered by target (a prefix index: targets are ids, distinct in 64 characters)
    """CREATE TABLE IF NOT EXISTS audit (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        at DOUBLE NOT NULL,
        who VARCHAR(128) NOT NULL,
        role VARCHAR(16) NOT NULL,
        action VARCHAR(32) NOT NULL,
        target VARCHAR(255) NOT NULL,
        detail VARCHAR(1024) NULL,
        outcome VARCHAR(16) NOT NULL,
        node_id VARCHAR(64) NOT NULL,
        KEY idx_at (at),
        KEY idx_target (target(64))
    ) ENGINE=InnoDB""",
    # retention (node/retention/): the finished experiments past their period, oldest first, per state
    "CREATE INDEX IF NOT EXISTS idx_state_finished ON experiments (state, finished_at)",
    # concurrency pools (``haorch pool``): at most ``slots`` tasks of the pool dispatched at once; a task's pool is
    # its template's ``pool`` or its kind; a pool without a row here is unbounded
    """CREATE TABLE IF NOT EXISTS pools (
        name VARCHAR(64) NOT NULL PRIMARY KEY,
        slots INT NOT NULL,
        description VARCHAR(255) NOT NULL DEFAULT '',
        updated_at DOUBLE NOT NULL
    ) ENGINE=InnoDB""",
]

TABLES = ("experiments", "transitions", "ledger", "fence", "applied_batches", "leader_terms", "templates", "graph",
          "api_tokens", "audit", "pools")


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
