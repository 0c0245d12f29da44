"""``haorch recover neo4j``: rebuild Neo4j from MariaDB, the system of record, while the cluster runs.

    summary = recover_neo4j(cfg, progress=print)     # a Summary; .to_dict() is the --json output

Neo4j Community is one server: when its store is lost (deleted, a new empty server), everything it held is rebuilt
from MariaDB (``node/stores/graph_record.py``): the template versions, and each experiment's DAG built from its
recorded type, version and params, with every task in the state its transition-log rows lead to
(``node/model/rebuild.py``). The steps, and what a crash at each leaves:

1. **Check.** MariaDB first (unreachable: one line, nothing done), then Neo4j's schema (idempotent). If Neo4j's
   Fence node carries the generation MariaDB records, the graph is whole: the steps below only create what is
   missing (normally nothing: running it twice is harmless) and the cluster is not disturbed.
2. **Hold.** Otherwise a new generation is recorded in MariaDB and Neo4j's stamp is removed. From then on every
   fenced write and DAG creation fails with GraphNotReady: the leader retries its term without acknowledging
   anything (responses wait in their queue; nothing is failed or dead-lettered for a task that is not rebuilt
   yet), submitters record their rows and report a retryable error. A crash from here on leaves the cluster
   holding until a new run (the leader's log says to run this command).
3. **Templates**, then the **live experiments** (QUEUED, RUNNING), page by page: each page's experiments that have
   no node are built and created in one transaction, each whole (its node, its tasks in their final state, their
   edges), so a crash never leaves half an experiment and a new run skips what was created.
4. **Release.** Neo4j's fence gets the new generation and MariaDB's fence epoch and holder (no leader older than
   the last one may act in it). The leader's retried term now passes: responses that arrived meanwhile advance
   the rebuilt DAGs; what was dispatched and not answered completes exactly once (the worker's ledger claim
   admits one execution per attempt, a copy of an attempt that ended is answered from the ledger); the sweep
   dispatches due retries and roots of QUEUED experiments. Not done if another run recorded a newer generation
   meanwhile (that run releases).
5. **Finished experiments** (COMPLETED, FAILED, CANCELLED), the same way, while the cluster runs: the leader never
   touches them, and ``haorch status`` and the invariant verifier read their tasks from Neo4j. One whose DAG cannot
   be built (the leader recorded it FAILED because its template or params were unusable) gets its node alone.

A live experiment whose DAG cannot be built is left out and reported: a QUEUED one is recorded FAILED with the
reason by the leader's repair of unfinished submits, as if its submit had died halfway.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from node.config import Config
from node.errors import UsageError
from node.model.executors import KNOWN_EXECUTORS
from node.model.rebuild import ExperimentGraph, ExperimentRecord, Step, Unbuildable, rebuild, unbuilt
from node.model.states import LIVE_EXPERIMENT_STATES, TERMINAL_EXPERIMENT_STATES
from node.model.template import Template, parse_template
from node.stores import neo4j_schema
from node.stores.connect import neo4j_driver
from node.stores.graph_record import GraphRecord
from node.stores.graph_restore import GraphRestore
from node.stores.records import Records

Progress = Callable[[str], None]
PAGE = 1000  # experiments read and created per transaction (the builtin types: about 5,000 task nodes)
SHOWN = 20   # experiments left out, listed in the summary


@dataclass
class Counts:
    """Experiments of one pass: ``created`` (rebuilt now), ``present`` (had a node already), ``left_out``."""

    created: int = 0
    present: int = 0
    left_out: int = 0
    tasks: int = 0
    seconds: float = 0.0


@dataclass
class Summary:
    generation: str
    rebuilt: bool                 # the graph was held and released (False: it was whole, only gaps were filled)
    released: bool                # this run released the hold (False when it was whole, or another run did)
    templates: int = 0            # template versions created
    live: Counts = field(default_factory=Counts)
    finished: Counts = field(default_factory=Counts)
    left_out: list[str] = field(default_factory=list)  # "id: reason" of the first SHOWN experiments left out
    held_s: float = 0.0           # from the hold to the release: how long the leader waited
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Rebuilder:
    """Builds and creates the experiments of MariaDB that Neo4j lacks (steps 3 and 5), in pages."""

    def __init__(self, record: GraphRecord, restore: GraphRestore, progress: Progress, page_size: int = PAGE,
                 prefix: str = "") -> None:
        self.record = record
        self.restore = restore
        self.progress = progress
        self.page_size = page_size
        self.prefix = prefix  # only ids that start with it (a benchmark's own experiments)
        self.left_out: list[str] = []
        self._templates: dict[tuple[str, int], Template | str] = {}  # the template, or why it cannot be had

    def templates(self) -> int:
        """Create the template versions MariaDB recorded that Neo4j lacks; returns how many."""
        versions = []
        for stored in self.record.templates():
            template = self._parse((stored.type, stored.version), stored.definition)
            if isinstance(template, Template):
                versions.append((template, stored.version, stored.registered_at))
        return self.restore.templates(versions) if versions else 0

    def experiments(self, states: tuple[str, ...], total: int, what: str) -> Counts:
        """Every experiment in ``states`` that Neo4j lacks, page by page; ``total`` (for the progress lines)."""
        counts = Counts()
        started = time.monotonic()
        done = 0
        for state in states:
            for page in self._pages(state):
                done += len(page)
                self._page(page, counts)
                self.progress(f"recover: {what} experiments {done}/{max(total, done)} "
                              f"(rebuilt {counts.created}, present {counts.present}, left out {counts.left_out})")
        counts.seconds = time.monotonic() - started
        return counts

    def _pages(self, state: str) -> Iterator[list[dict[str, Any]]]:
        after: tuple[float, str] | None = None
        while True:
            rows = self.record.page(state, after, self.page_size)
            if not rows:
                return
            after = (rows[-1]["created_at"], rows[-1]["experiment_id"])
            page = [r for r in rows if r["experiment_id"].startswith(self.prefix)]
            if page:
                yield page
            if len(rows) < self.page_size:
                return

    def _page(self, rows: list[dict[str, Any]], counts: Counts) -> None:
        present = self.restore.existing([r["experiment_id"] for r in rows])
        missing = [r for r in rows if r["experiment_id"] not in present]
        counts.present += len(present)
        steps = self.record.steps([r["experiment_id"] for r in missing])
        now = time.time()
        graphs: list[ExperimentGraph] = []
        for row in missing:
            record = ExperimentRecord(
                row["experiment_id"], row["type"], row["template_version"], row["state"], row["params"] or {},
                row["created_at"], row["finished_at"],
                [Step(s.task, s.to_state, s.attempt, s.epoch, s.at, s.detail) for s in steps[row["experiment_id"]]])
            try:
                graphs.append(self._graph(row, record, now))
            except Unbuildable as exc:
                counts.left_out += 1
                if len(self.left_out) < SHOWN:
                    self.left_out.append(f"{row['experiment_id']} ({row['state']}): {exc}")
        created = set(self.restore.experiments(graphs)) if graphs else set()
        counts.created += len(created)
        counts.present += len(graphs) - len(created)  # created meanwhile by a submitter or the leader
        counts.tasks += sum(len(g.tasks) for g in graphs if g.experiment_id in created)

    def _graph(self, row: dict[str, Any], record: ExperimentRecord, now: float) -> ExperimentGraph:
        """The graph of one row; Unbuildable for a live one that cannot be built, the node alone for a finished
        one."""
        key = (row["type"], row["template_version"])
        template = self._templates.get(key)
        if template is None:
            template = self._template(key)
        try:
            if isinstance(template, str):
                raise Unbuildable(template)
            if row["params"] is None:
                raise Unbuildable(row["params_error"])
            template.check_overrides(row["params"])
            return rebuild(record, template, now)
        except (Unbuildable, UsageError) as exc:
            if row["state"] in LIVE_EXPERIMENT_STATES:
                raise Unbuildable(str(exc)) from exc
            return unbuilt(record, str(exc), now)

    def _template(self, key: tuple[str, int]) -> Template | str:
        stored = {(t.type, t.version): t for t in self.record.templates()}.get(key)
        if stored is None:
            self._templates[key] = f"MariaDB has no definition of {key[0]} version {key[1]}"
            return self._templates[key]
        return self._parse(key, stored.definition)

    def _parse(self, key: tuple[str, int], definition: str) -> Template | str:
        try:
            parsed: Template | str = parse_template(json.loads(definition), KNOWN_EXECUTORS)
        except (ValueError, UsageError) as exc:
            parsed = f"the definition of {key[0]} version {key[1]} does not parse: {exc}"
        self._templates[key] = parsed
        return parsed


def recover_neo4j(cfg: Config, progress: Progress = lambda _m: None, page_size: int = PAGE) -> Summary:
    """Rebuild Neo4j from MariaDB (the module docstring's steps); safe to run again and while the cluster runs."""
    started = time.monotonic()
    probe = Records(cfg, retry_for_s=0.0)  # MariaDB first, not retried: unreachable is one line, nothing touched
    try:
        known = GraphRecord(probe).generation()
    finally:
        probe.close()
    records = Records(cfg, retry_for_s=30.0)
    try:
        record = GraphRecord(records)
        counts = records.state_counts()
        neo4j_schema.ensure_schema(cfg)
        with neo4j_driver(cfg) as driver:
            restore = GraphRestore(driver)
            fence = restore.fence()
            whole = known is not None and fence.generation == known
            generation = known if whole and known is not None else uuid.uuid4().hex
            summary = Summary(generation, rebuilt=not whole, released=False)
            held = time.monotonic()
            if whole:
                progress(f"recover: Neo4j holds generation {generation[:8]} of the graph: creating only what is "
                         "missing; the cluster is not held")
            else:
                record.set_generation(generation)
                restore.unstamp(generation)
                progress(f"recover: Neo4j holds {'no graph' if fence.generation is None else 'another graph'}: "
                         f"rebuilding it as generation {generation[:8]}; the leader holds until it is released")
            rebuilder = Rebuilder(record, restore, progress, page_size)
            summary.templates = rebuilder.templates()
            progress(f"recover: {summary.templates} template version(s) created")
            summary.live = rebuilder.experiments(tuple(LIVE_EXPERIMENT_STATES),
                                                 sum(counts.get(s, 0) for s in LIVE_EXPERIMENT_STATES), "live")
            if not whole:
                summary.released = _release(record, restore, generation, progress)
                summary.held_s = time.monotonic() - held
            summary.finished = rebuilder.experiments(
                tuple(TERMINAL_EXPERIMENT_STATES), sum(counts.get(s, 0) for s in TERMINAL_EXPERIMENT_STATES),
                "finished")
            summary.left_out = rebuilder.left_out
    finally:
        records.close()
    summary.seconds = time.monotonic() - started
    return summary


def _release(record: GraphRecord, restore: GraphRestore, generation: str, progress: Progress) -> bool:
    """Stamp Neo4j with ``generation`` and MariaDB's fence, unless another run recorded a newer generation."""
    if record.generation() != generation:
        progress("recover: another run recorded a newer generation meanwhile: it releases the leader")
        return False
    epoch, holder = record.fence()
    restore.stamp(generation, epoch, holder)
    record.mark_rebuilt(generation)
    progress(f"recover: generation {generation[:8]} stamped (fence epoch {epoch}): the leader resumes")
    return True
