"""MariaDB's part of the system of record for Neo4j: template definitions, the graph's generation, and the reads
that ``haorch recover neo4j`` rebuilds Neo4j from (``node/recover.py``).

    record = GraphRecord(records)                 # over a Records connection (its transactions and retries)
    record.save_templates([template_row(t, 3, time.time())])
    record.generation()                           # the generation Neo4j's Fence node must carry; None: not yet set
    rows, steps = record.page("RUNNING", after, limit=1000), record.steps(ids)

**Templates.** A definition is stored as Neo4j stores it (the canonical JSON of ``Template.to_dict()``). Neo4j
allocates the version when a template is registered (unchanged); MariaDB gets the definition right after, and again
— in the same transaction — with the first experiment row of that version (:meth:`Records.insert_experiments`). So
an experiment row never exists without the definition its DAG is built from, whatever crashed: a registration that
died between its two writes leaves only a version no experiment uses yet, and a retry of it writes the row.

**Generation.** The ``graph`` row names the Neo4j store that holds this database's graph: the same value is stamped
on Neo4j's ``(:Fence)`` node, and every writer that advances a DAG checks the stamp in its transaction
(:class:`~node.stores.dags.GraphNotReady` otherwise). An emptied or replaced Neo4j has no stamp, so nobody advances
anything in it until ``haorch recover neo4j`` has rebuilt it and stamped it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pymysql.cursors

from node.model.template import Template

if TYPE_CHECKING:
    from node.stores.records import Records

#: a definition is written at most once per (type, version); a second write of the same key changes nothing (no
#: INSERT IGNORE: in a strict session a value too long for its column must fail, not be stored cut short)
TEMPLATE_INSERT = ("INSERT INTO templates (type, version, hash, definition, registered_at) VALUES (%s, %s, %s, %s, %s) "
                   "ON DUPLICATE KEY UPDATE type = type")


def template_definition(template: Template) -> str:
    """The definition as Neo4j's ``Template.definition`` holds it."""
    return json.dumps(template.to_dict(), sort_keys=True)


def template_row(template: Template, version: int, registered_at: float) -> tuple[str, int, str, str, float]:
    """The ``templates`` row of ``template`` at ``version``."""
    return (template.type, version, template.content_hash(), template_definition(template), registered_at)


@dataclass(frozen=True)
class StoredTemplate:
    """A ``templates`` row."""

    type: str
    version: int
    hash: str
    definition: str
    registered_at: float


@dataclass(frozen=True)
class StepRow:
    """A task's row of the transition log, as the rebuild reads it (``node/model/rebuild.py``)."""

    experiment_id: str
    task: str
    to_state: str
    attempt: int
    epoch: int
    at: float
    detail: str | None


class GraphRecord:
    """Reads and writes of the tables above, each one transaction of ``records`` (retried while MariaDB is
    unreachable, then DependencyError)."""

    def __init__(self, records: Records) -> None:
        self.records = records

    # --- templates ---------------------------------------------------------------------------------------
    def save_templates(self, rows: list[tuple[str, int, str, str, float]]) -> int:
        """Record template versions (rows of :func:`template_row`) that are not recorded yet; returns how many
        were new."""
        if not rows:
            return 0

        def work(cur: pymysql.cursors.Cursor) -> int:
            return sum(cur.execute(TEMPLATE_INSERT, row) == 1 for row in rows)
        return self.records.transaction(work)

    def templates(self) -> list[StoredTemplate]:
        """Every recorded template version, by type and version."""
        def work(cur: pymysql.cursors.Cursor) -> list[StoredTemplate]:
            cur.execute("SELECT type, version, hash, definition, registered_at FROM templates ORDER BY type, version")
            return [StoredTemplate(*row) for row in cur.fetchall()]
        return self.records.transaction(work)

    # --- generation --------------------------------------------------------------------------------------
    def generation(self) -> str | None:
        def work(cur: pymysql.cursors.Cursor) -> str | None:
            cur.execute("SELECT generation FROM graph WHERE name = 'neo4j'")
            row = cur.fetchone()
            return row[0] if row else None
        return self.records.transaction(work)

    def set_generation(self, generation: str, if_unset: bool = False) -> str | None:
        """Record ``generation`` (only if none is recorded, with ``if_unset``); returns the generation recorded
        after it (another writer's when it won)."""
        def work(cur: pymysql.cursors.Cursor) -> str | None:
            cur.execute("UPDATE graph SET generation = %s, changed_at = %s WHERE name = 'neo4j'"
                        + (" AND generation IS NULL" if if_unset else ""), (generation, time.time()))
            cur.execute("SELECT generation FROM graph WHERE name = 'neo4j'")
            row = cur.fetchone()
            return row[0] if row else None
        return self.records.transaction(work)

    def mark_rebuilt(self, generation: str) -> None:
        def work(cur: pymysql.cursors.Cursor) -> None:
            cur.execute("UPDATE graph SET rebuilt_at = %s WHERE name = 'neo4j' AND generation = %s",
                        (time.time(), generation))
        self.records.transaction(work)

    def fence(self) -> tuple[int, str | None]:
        """The leader fence's epoch and holder."""
        def work(cur: pymysql.cursors.Cursor) -> tuple[int, str | None]:
            cur.execute("SELECT epoch, holder FROM fence WHERE name = 'leader'")
            row = cur.fetchone()
            return (int(row[0]), row[1]) if row else (0, None)
        return self.records.transaction(work)

    def has_experiments(self) -> bool:
        def work(cur: pymysql.cursors.Cursor) -> bool:
            cur.execute("SELECT 1 FROM experiments LIMIT 1")
            return cur.fetchone() is not None
        return self.records.transaction(work)

    # --- what the rebuild reads --------------------------------------------------------------------------
    def page(self, state: str, after: tuple[float, str] | None, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` experiments in ``state`` after the position ``(created_at, experiment_id)``, in that
        order (one range of ``idx_state_created``): ``experiment_id, type, template_version, state, params,
        created_at, finished_at``; ``params`` is None (and ``params_error`` says why) when it cannot be decoded."""
        where = "state = %s"
        args: list[object] = [state]
        if after is not None:
            where += " AND (created_at > %s OR (created_at = %s AND experiment_id > %s))"
            args += [after[0], after[0], after[1]]

        def work(cur: pymysql.cursors.Cursor) -> list[dict[str, Any]]:
            cur.execute("SELECT experiment_id, type, template_version, state, params, created_at, finished_at "
                        f"FROM experiments WHERE {where} ORDER BY created_at, experiment_id LIMIT %s",
                        (*args, limit))
            cols = [c[0] for c in cur.description]
            return [decoded_params(dict(zip(cols, r, strict=True))) for r in cur.fetchall()]
        return self.records.transaction(work)

    def steps(self, ids: list[str]) -> dict[str, list[StepRow]]:
        """The task rows of the transition log of each experiment of ``ids``, in log order (``id``)."""
        if not ids:
            return {}

        def work(cur: pymysql.cursors.Cursor) -> dict[str, list[StepRow]]:
            cur.execute("SELECT experiment_id, task, to_state, attempt, epoch, at, detail FROM transitions "
                        f"WHERE experiment_id IN ({','.join(['%s'] * len(ids))}) AND task IS NOT NULL ORDER BY id",
                        ids)
            out: dict[str, list[StepRow]] = {i: [] for i in ids}
            for row in cur.fetchall():
                out[row[0]].append(StepRow(*row))
            return out
        return self.records.transaction(work)


def decoded_params(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its params decoded; a row whose params cannot be (cut short by an older version) says so in
    ``params_error`` instead of failing every listing that includes it."""
    try:
        row["params"] = json.loads(row["params"])
    except ValueError:
        row["params_error"] = f"stored params are not valid JSON ({len(row['params'])} characters); not decoded"
        row["params"] = None
    return row
