"""What the stores recorded about a set of experiments, checked against the HA invariants (ARCHITECTURE.md).

Used by ``haorch demo`` and the HA tests; reads MariaDB (transitions, leader_terms, fence) and Neo4j (tasks,
DEPENDS_ON edges)::

    audit = Audit(cfg)
    audit.double_advanced(ids)     # [] when every executed task has exactly one SUCCEEDED row and flags == 1
    audit.epoch_owners()           # {epoch: {node ids that wrote with it}}: one node per epoch
    audit.first_advance_after(epoch, since)   # the next leader's first transition row: failover measurement
    audit.close()

The full invariant checker (order, fencing, duplicates) is ``chaos_tests.checker.check``; this module adds the
"exactly once" view and the live queries a failover measurement needs.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from node.config import Config
from node.stack.neo4j import neo4j_driver
from node.stores.records import Records


def _marks(values: list) -> str:
    return ",".join(["%s"] * len(values))


class Audit:
    """Read-only queries over MariaDB and Neo4j; one connection to each, opened lazily."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.records = Records(cfg, retry_for_s=30.0)
        self._driver = None

    @property
    def driver(self):  # type: ignore[no-untyped-def]
        if self._driver is None:
            self._driver = neo4j_driver(self.cfg)
        return self._driver

    def close(self) -> None:
        self.records.close()
        if self._driver is not None:
            self._driver.close()

    def query(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        def work(cur):  # type: ignore[no-untyped-def]
            cur.execute(sql, args)
            return list(cur.fetchall())
        return self.records.transaction(work)

    # --- experiments -------------------------------------------------------------------------------------
    def states(self, ids: list[str]) -> dict[str, str]:
        """experiment_id -> state (MariaDB) for the ids that exist."""
        if not ids:
            return {}
        return dict(self.query(f"SELECT experiment_id, state FROM experiments WHERE experiment_id IN "
                               f"({_marks(ids)})", ids))

    def succeeded_counts(self, ids: list[str]) -> dict[tuple[str, str], int]:
        """(experiment_id, task) -> number of SUCCEEDED transition rows."""
        if not ids:
            return {}
        rows = self.query(f"SELECT experiment_id, task, COUNT(*) FROM transitions WHERE to_state = 'SUCCEEDED' "
                          f"AND experiment_id IN ({_marks(ids)}) GROUP BY experiment_id, task", ids)
        return {(e, t): n for e, t, n in rows}

    def tasks(self, ids: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
        """(experiment_id, task) -> {executed, flags, status} from Neo4j."""
        records, _, _ = self.driver.execute_query(
            "UNWIND $ids AS id MATCH (t:Task {experiment_id: id}) "
            "RETURN t.experiment_id AS e, t.name AS n, t.executed AS executed, t.flags AS flags, t.status AS status",
            ids=ids)
        return {(r["e"], r["n"]): {"executed": r["executed"], "flags": r["flags"], "status": r["status"]}
                for r in records}

    def double_advanced(self, ids: list[str]) -> list[str]:
        """Tasks whose advancement is not exactly once: SUCCEEDED rows != 1 or Neo4j flags != 1 for an executed
        task, or a SUCCEEDED row for a task Neo4j does not show executed."""
        counts = self.succeeded_counts(ids)
        problems = []
        for key, task in sorted(self.tasks(ids).items()):
            n = counts.get(key, 0)
            if task["executed"] and (n != 1 or task["flags"] != 1):
                problems.append(f"{key[0]}/{key[1]}: {n} SUCCEEDED rows, flags={task['flags']}")
            elif not task["executed"] and (n or task["flags"]):
                problems.append(f"{key[0]}/{key[1]}: not executed but {n} SUCCEEDED rows, flags={task['flags']}")
        return problems

    # --- epochs and leaders ------------------------------------------------------------------------------
    def epoch_owners(self, since: float = 0.0) -> dict[int, set[str]]:
        """epoch -> node ids seen acting with it (leader_terms and transition rows); one each when fenced."""
        owners: dict[int, set[str]] = defaultdict(set)
        for epoch, node in self.query("SELECT epoch, node_id FROM leader_terms WHERE elected_at >= %s", (since,)):
            owners[epoch].add(node)
        for epoch, node in self.query("SELECT DISTINCT epoch, node_id FROM transitions WHERE epoch > 0 "
                                      "AND at >= %s", (since,)):
            owners[epoch].add(node)
        return dict(owners)

    def first_advance_after(self, epoch: int, since: float) -> tuple[int, str, float] | None:
        """(epoch, node_id, at) of the first transition row written with an epoch above ``epoch``."""
        rows = self.query("SELECT epoch, node_id, at FROM transitions WHERE epoch > %s AND at >= %s "
                          "ORDER BY id LIMIT 1", (epoch, since))
        return rows[0] if rows else None

    def fence(self) -> tuple[int, str | None, float]:
        """(epoch, holder, raised_at) of the MariaDB fence row."""
        return self.query("SELECT epoch, holder, raised_at FROM fence WHERE name = 'leader'")[0]

    def last_advance_id(self) -> int:
        """Id of the newest transition row a leader wrote (submissions write epoch 0)."""
        rows = self.query("SELECT COALESCE(MAX(id), 0) FROM transitions WHERE epoch > 0")
        return rows[0][0]
