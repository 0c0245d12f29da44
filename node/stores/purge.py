"""Neo4j side of retention: read, then delete, the subgraphs of finished experiments past their retention.

    purge = Purge(driver, tx_timeout_s=15.0)
    purge.generation = GraphRecord(records).generation()
    graphs = purge.graphs(ids)                       # {id: {"experiment": {...}, "tasks": [...]}} for the archive
    done = purge.delete(epoch, {id: cutoff}, now)    # Purged(deleted, absent, kept)

:meth:`Purge.delete` is ONE transaction that refuses with :class:`FencedError` if the ``(:Fence {name:
'leader'})`` node holds a newer epoch than the caller's, and with :class:`GraphNotReady` if the node lacks the
generation MariaDB records; then it write-locks each candidate's Experiment node and, under that lock, re-checks it:
still terminal, finished before its cutoff, and named by no Outbox node (a write MariaDB does not have yet, e.g. a
retry whose caller died before its MariaDB write); anything else is kept.

Why it reads the fence instead of locking it as the leader's batches, cancel and retry do: the lock would make
every batch of the leader wait for the whole delete (hundreds of milliseconds for a batch of experiments), and it
is not needed for safety. Whatever changes an experiment (a retry reopening it, the leader finishing it and
writing its Outbox node) writes its Experiment node in the same transaction, so the Experiment node lock orders
this delete with each of them, and what is re-read under it is their committed result. A leader deposed after the
fence was read may still delete, but only experiments that are finished and past their retention under that lock:
what the new leader deletes too.

A crash before the commit deletes nothing; after it, the experiments' MariaDB rows remain and the next gc step finds
them again, with no node here (``absent``), and deletes the rows. Deleting is idempotent.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from neo4j import Driver, ManagedTransaction, unit_of_work

from node.errors import FencedError
from node.model.states import TERMINAL_EXPERIMENT_STATES
from node.stores.dags import GraphNotReady
from node.stores.failures import at_boundary, neo4j_boundary

_TERMINAL = list(TERMINAL_EXPERIMENT_STATES)


@dataclass
class Purged:
    """What one delete did: experiments whose subgraph it deleted, those without an Experiment node (deleted before,
    by a step that died before its MariaDB delete), and those it kept (retried or changed meanwhile)."""

    deleted: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _plain(props: dict[str, Any]) -> dict[str, Any]:
    """Node properties as JSON values: bytes (a task's serialized ``request``) as base64 text."""
    return {k: base64.b64encode(v).decode() if isinstance(v, (bytes, bytearray)) else v for k, v in props.items()}


class Purge:
    """Reads and deletes experiment subgraphs (see the module docstring)."""

    def __init__(self, driver: Driver, tx_timeout_s: float | None = None) -> None:
        self.driver = driver
        self.tx_timeout_s = tx_timeout_s
        self.boundary = neo4j_boundary(driver)
        self.generation: str | None = None  # the graph's generation in MariaDB; None: not checked

    @at_boundary
    def graphs(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The Experiment node and Task nodes (each with ``depends_on``, its predecessors' names) of those of ``ids``
        that have a node, as plain JSON values."""
        records, _, _ = self.driver.execute_query(
            "UNWIND $ids AS id MATCH (e:Experiment {experiment_id: id}) "
            "OPTIONAL MATCH (t:Task {experiment_id: id}) "
            "RETURN id, properties(e) AS experiment, "
            "collect(CASE WHEN t IS NULL THEN NULL ELSE "
            "  [properties(t), [(t)-[:DEPENDS_ON]->(p:Task) | p.name]] END) AS tasks", ids=ids, routing_="r")
        return {r["id"]: {"experiment": _plain(r["experiment"]),
                          "tasks": sorted(({**_plain(props), "depends_on": sorted(deps)} for props, deps in r["tasks"]),
                                          key=lambda t: t.get("name") or "")}
                for r in records}

    @at_boundary
    def delete(self, epoch: int, cutoffs: dict[str, float], now: float | None = None) -> Purged:
        """Delete the subgraph of each experiment of ``cutoffs`` that is terminal, finished before its cutoff and
        named by no Outbox node, in ONE fenced transaction (see the module docstring)."""
        now = time.time() if now is None else now

        def work(tx: ManagedTransaction) -> Purged:
            fence = tx.run("MATCH (f:Fence {name: 'leader'}) "
                           "RETURN f.epoch AS epoch, f.generation AS generation").single()
            if fence is not None and fence["epoch"] > epoch:
                raise FencedError("neo4j", epoch, fence["epoch"])
            found = fence["generation"] if fence is not None else None
            if self.generation is not None and found != self.generation:
                raise GraphNotReady(self.boundary.endpoint, self.generation, found)
            tx.run("UNWIND $ids AS id MATCH (e:Experiment {experiment_id: id}) SET e.gc_at = $now",
                   ids=sorted(cutoffs), now=now)  # the locks (in one order: two collectors never deadlock)
            rows = tx.run("UNWIND $items AS item OPTIONAL MATCH (e:Experiment {experiment_id: item[0]}) "
                          "RETURN item[0] AS id, e IS NOT NULL AS present, "
                          "e.state IN $terminal AND coalesce(e.finished_at, 0) < item[1] AS due",
                          items=[[i, c] for i, c in cutoffs.items()], terminal=_TERMINAL)
            out = Purged()
            due: list[str] = []
            for r in rows:
                (due if r["due"] else out.absent if not r["present"] else out.kept).append(r["id"])
            if due:
                pending = {r["id"] for r in tx.run(
                    "MATCH (o:Outbox) UNWIND $items AS item WITH o, item WHERE o.rows CONTAINS item[1] "
                    "RETURN DISTINCT item[0] AS id", items=[[i, json.dumps(i)] for i in due])}
                out.kept += [i for i in due if i in pending]
                out.deleted = [i for i in due if i not in pending]
            if out.deleted:
                tx.run("UNWIND $ids AS id MATCH (t:Task {experiment_id: id}) DETACH DELETE t", ids=out.deleted)
                tx.run("UNWIND $ids AS id MATCH (e:Experiment {experiment_id: id}) DETACH DELETE e", ids=out.deleted)
            return out

        timed = work if self.tx_timeout_s is None else unit_of_work(timeout=self.tx_timeout_s)(work)
        with self.driver.session() as session:
            return session.execute_write(timed)
