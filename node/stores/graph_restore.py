"""Neo4j's side of a rebuild from MariaDB (``haorch recover neo4j``, ``node/recover.py``) and of the generation
stamp (``node/leader/generation.py``).

    restore = GraphRestore(driver)
    restore.fence()                          # FenceState: epoch, holder, generation of the (:Fence) node
    restore.unstamp("g2")                    # nobody advances anything here until stamp()
    restore.templates([(template, 3, registered_at)])
    restore.experiments(graphs)              # creates the experiments that are not there; returns their ids
    restore.stamp("g2", epoch=7, holder="node-2")

Every write creates only what is missing, each experiment whole (its node, its tasks in their final state and
their edges) in one transaction, so a rebuild can run again after a crash or next to a running cluster: an
experiment a submitter (or the leader's repair of an unfinished submit) creates at the same moment is either seen
and skipped or makes the transaction fail on the unique constraint, after which it is run again and skips it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neo4j import Driver, ManagedTransaction
from neo4j.exceptions import ConstraintError

from node.model.rebuild import ExperimentGraph
from node.model.template import Template
from node.stores.dags import create_template_nodes
from node.stores.failures import at_boundary, neo4j_boundary


@dataclass(frozen=True)
class FenceState:
    """The (:Fence {name: 'leader'}) node; ``exists`` False in a store that has none yet."""

    exists: bool
    epoch: int = 0
    holder: str | None = None
    generation: str | None = None


class GraphRestore:
    """Writes of a rebuild; driver failures leave as DependencyError."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.boundary = neo4j_boundary(driver)

    @at_boundary
    def fence(self) -> FenceState:
        records, _, _ = self.driver.execute_query(
            "MATCH (f:Fence {name: 'leader'}) RETURN f.epoch AS epoch, f.holder AS holder, f.generation AS g")
        if not records:
            return FenceState(False)
        r = records[0]
        return FenceState(True, int(r["epoch"] or 0), r["holder"], r["g"])

    @at_boundary
    def unstamp(self, rebuilding: str) -> None:
        """Remove the Fence node's generation (``rebuilding`` names the one it will get): every fenced write and DAG
        creation checks it, so from now on nobody advances anything here until :meth:`stamp`."""
        self.driver.execute_query("MERGE (f:Fence {name: 'leader'}) ON CREATE SET f.epoch = 0 "
                                  "SET f.rebuilding = $g REMOVE f.generation", g=rebuilding)

    @at_boundary
    def stamp(self, generation: str, epoch: int | None = None, holder: str | None = None) -> None:
        """Stamp the Fence node with ``generation`` (and raise its epoch to ``epoch``, held by ``holder``, when it is
        lower: a rebuilt store's fence is MariaDB's, so that no leader older than the last one acts in it)."""
        self.driver.execute_query(
            "MERGE (f:Fence {name: 'leader'}) ON CREATE SET f.epoch = 0 "
            "WITH f, $epoch IS NOT NULL AND f.epoch < $epoch AS raise "
            "SET f.generation = $g, f.stamped_at = timestamp() / 1000.0, "
            "f.epoch = CASE WHEN raise THEN $epoch ELSE f.epoch END, "
            "f.holder = CASE WHEN raise THEN $holder ELSE f.holder END "
            "REMOVE f.rebuilding", g=generation, epoch=epoch, holder=holder)

    @at_boundary
    def empty(self) -> bool:
        """No template and no experiment: a new store (or one whose store was deleted)."""
        records, _, _ = self.driver.execute_query(
            "OPTIONAL MATCH (t:Template) WITH t LIMIT 1 OPTIONAL MATCH (e:Experiment) WITH t, e LIMIT 1 "
            "RETURN t IS NULL AND e IS NULL AS empty")
        return bool(records[0]["empty"])

    @at_boundary
    def stored_templates(self) -> list[dict[str, Any]]:
        """Every Template node: type, version, hash, definition, registered_at."""
        records, _, _ = self.driver.execute_query(
            "MATCH (t:Template) RETURN t.type AS type, t.version AS version, t.hash AS hash, "
            "t.definition AS definition, t.registered_at AS registered_at ORDER BY type, version")
        return [dict(r) for r in records]

    @at_boundary
    def templates(self, versions: list[tuple[Template, int, float]]) -> int:
        """Create the Template nodes (with their tasks) of ``(template, version, registered_at)`` that are not there
        (one transaction); returns how many it created."""
        def work(tx: ManagedTransaction) -> int:
            present = {(r["type"], r["version"]) for r in tx.run(
                "UNWIND $keys AS k MATCH (t:Template {type: k[0], version: k[1]}) RETURN t.type AS type, "
                "t.version AS version", keys=[[t.type, v] for t, v, _ in versions])}
            created = 0
            for template, version, registered_at in versions:
                if (template.type, version) not in present:
                    create_template_nodes(tx, template, version, registered_at)
                    created += 1
            return created

        with self.driver.session() as session:
            return session.execute_write(work)

    @at_boundary
    def existing(self, ids: list[str]) -> set[str]:
        """The ids of ``ids`` that have an Experiment node."""
        records, _, _ = self.driver.execute_query(
            "UNWIND $ids AS id MATCH (e:Experiment {experiment_id: id}) RETURN id", ids=ids)
        return {r["id"] for r in records}

    @at_boundary
    def experiments(self, graphs: list[ExperimentGraph]) -> list[str]:
        """Create, in ONE transaction, the graphs whose experiment has no node; returns their ids."""
        def work(tx: ManagedTransaction) -> list[str]:
            present = {r["id"] for r in tx.run("UNWIND $ids AS id MATCH (e:Experiment {experiment_id: id}) RETURN id",
                                               ids=[g.experiment_id for g in graphs])}
            new = [g for g in graphs if g.experiment_id not in present]
            if not new:
                return []
            # SET n = map: a null value leaves the property out, as on a node that never had it. The edges join
            # the nodes just made, not an index lookup per end
            tx.run("UNWIND $rows AS row CREATE (e:Experiment) SET e = row.experiment "
                   "WITH row CALL (row) { UNWIND row.tasks AS t CREATE (n:Task) SET n = t "
                   "  RETURN collect({key: t.key, node: n}) AS made } "
                   "UNWIND row.edges AS edge "
                   "WITH [m IN made WHERE m.key = edge[0]][0].node AS a, "
                   "     [m IN made WHERE m.key = edge[1]][0].node AS b "
                   "CREATE (a)-[:DEPENDS_ON]->(b)",
                   rows=[{"experiment": g.experiment, "tasks": g.tasks, "edges": [list(e) for e in g.edges]}
                         for g in new])
            return [g.experiment_id for g in new]

        with self.driver.session() as session:
            try:
                return session.execute_write(work)
            except ConstraintError:
                # a submitter created one of these meanwhile: run again, which now sees it and skips it
                return session.execute_write(work)
