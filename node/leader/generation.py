"""The generation a leader term expects Neo4j to carry (``DagStore.generation``), read from MariaDB at the start
of each term and of each of its retries (``node/replica.py``).

MariaDB's ``graph`` row names the Neo4j store holding its graph, and the same value is stamped on Neo4j's Fence
node (``node/stores/graph_record.py``). While they differ — Neo4j was emptied (its store deleted, a fresh server)
or ``haorch recover neo4j`` is rebuilding it — every fenced write of the term fails with GraphNotReady, the replica
retries the term, and nothing is advanced, failed or dead-lettered in a graph that lacks the experiments.

A database without a generation (made before generations existed, or new) gets one at the first term: Neo4j is
stamped first, then MariaDB records the value unless another node recorded one meanwhile (a crash between the two
leaves MariaDB without one, and the next term does it again). Its templates are copied to MariaDB then (those
registered before MariaDB kept them). An exception: when MariaDB has experiments and Neo4j holds nothing (no
template, no experiment), that Neo4j is not their graph (it was emptied): MariaDB records a generation Neo4j does
not carry, and the leader waits for ``haorch recover neo4j``.
"""

from __future__ import annotations

import logging
import uuid

from node.stores.dags import DagStore
from node.stores.graph_record import GraphRecord
from node.stores.graph_restore import GraphRestore
from node.stores.records import Records

log = logging.getLogger(__name__)


def expected_generation(dags: DagStore, records: Records) -> str:
    """The generation of the graph in MariaDB, recorded first if there is none (see the module docstring)."""
    record = GraphRecord(records)
    known = record.generation()
    if known is not None:
        return known
    restore = GraphRestore(dags.driver)
    fresh = uuid.uuid4().hex
    if record.has_experiments() and restore.empty():
        log.error("leader: MariaDB has experiments but Neo4j holds nothing (its store was emptied?): nothing is "
                  "advanced until `haorch recover neo4j` has rebuilt it")
        return record.set_generation(fresh, if_unset=True) or fresh
    adopted = [(t["type"], t["version"], t["hash"], t["definition"], t["registered_at"] or 0.0)
               for t in restore.stored_templates()]
    record.save_templates(adopted)
    restore.stamp(fresh)
    recorded = record.set_generation(fresh, if_unset=True) or fresh
    if recorded != fresh:  # another node recorded its own first: carry that one
        restore.stamp(recorded)
    log.info("leader: the graph in Neo4j is generation %s (%d template versions recorded in MariaDB)", recorded[:8],
             len(adopted))
    return recorded
