"""Completing submits that died halfway: the leader's repair of a QUEUED row without a DAG.

A submit writes the MariaDB row (QUEUED), then the Neo4j DAG (``node/experiments.py``). A submitter that dies, or
loses Neo4j, between the two leaves a row that nothing would ever dispatch. On each sweep the leader takes one page
of rows QUEUED for longer than ``submit_grace_s`` (oldest first; the next sweep continues after it, and the pages
start over after the last) and asks Neo4j which of them have an Experiment node:

- none: it builds the DAG from the row's type, template version and params, with the checks and the store call
  that submit uses (idempotent on the id, so a submitter that finishes at the same time is harmless); the same
  sweep's ``due_work`` then dispatches the roots. A DAG that cannot be built (the template version is gone, the
  params cannot be decoded or are not allowed) is recorded FAILED with the reason: a FAILED Experiment node
  first, then the row and its transition, both fenced.
- a terminal node beside a QUEUED row (a crash between those two writes, or between a leader's two commits): the
  row gets the node's state.

A crash anywhere in between leaves the row QUEUED, so a later sweep, of this leader or the next, does the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from node.config import Config
from node.errors import ConflictError, UsageError
from node.model.api_limits import check_params_size
from node.model.states import TERMINAL_EXPERIMENT_STATES, ExperimentState
from node.model.template import Template
from node.stores.dags import DagStore
from node.stores.records import Records

log = logging.getLogger(__name__)
DETAIL_MAX_CHARS = 255  # transitions.detail


@dataclass
class SubmitRepair:
    """Called as ``repair(epoch, now)`` by the leader's sweep; keeps its position between sweeps of one term."""

    cfg: Config
    dags: DagStore
    records: Records
    node_id: str
    page_size: int = 200
    _after: tuple[float, str] | None = None

    def __call__(self, epoch: int, now: float) -> None:
        rows = self.records.experiments_page(ExperimentState.QUEUED, self._after, self.page_size,
                                             created_before=now - self.cfg.submit_grace_s)
        self._after = (rows[-1]["created_at"], rows[-1]["experiment_id"]) if len(rows) == self.page_size else None
        if not rows:
            return
        graph = self.dags.experiment_states([row["experiment_id"] for row in rows])
        settled = {i: (s, "state of the Neo4j experiment, recorded by the sweep") for i, s in graph.items()
                   if s in TERMINAL_EXPERIMENT_STATES}
        failed = self._build([row for row in rows if row["experiment_id"] not in graph])
        if failed:
            self.dags.fail_unbuilt(epoch, [(row["experiment_id"], row["type"], row["template_version"], reason)
                                           for row, reason in failed], now)
            settled.update({row["experiment_id"]: (ExperimentState.FAILED, reason) for row, reason in failed})
        if settled:
            rows_out = [(i, None, ExperimentState.QUEUED, state, 0, detail[:DETAIL_MAX_CHARS])
                        for i, (state, detail) in settled.items()]
            self.records.write_batch(epoch, self.node_id, rows_out, {i: s for i, (s, _) in settled.items()}, now)

    def _build(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
        """Build the DAGs of ``rows`` (one transaction per template version); returns the rows that cannot be
        built, each with the reason."""
        groups: dict[tuple[str, int], list[tuple[str, dict[str, Any]]]] = {}
        templates: dict[tuple[str, int], Template] = {}
        failed = []
        for row in rows:
            version = (row["type"], row["template_version"])
            try:
                if row["params"] is None:
                    raise UsageError(row["params_error"])
                if version not in templates:
                    templates[version] = self.dags.get_template(*version)[0]
                check_params_size(row["params"])
                templates[version].check_overrides(row["params"])
            except UsageError as exc:  # UnknownTypeError included: that version is gone
                failed.append((row, f"submit did not finish and cannot be completed: {exc}"))
                continue
            groups.setdefault(version, []).append((row["experiment_id"], row["params"]))
        for version, items in groups.items():
            try:
                built = self.dags.create_experiments(templates[version], version[1], items)
            except ConflictError as exc:  # another type took one of these ids meanwhile: its own submit decides
                log.warning("leader: cannot complete submits of %s: %s", version[0], exc)
                continue
            if built:
                log.warning("leader: built the DAG of %d %s experiment(s) whose submit did not finish: %s",
                            len(built), version[0], ", ".join(built[:5]) + (" ..." if len(built) > 5 else ""))
        if failed:
            log.warning("leader: %d submit(s) that did not finish cannot be completed, recorded FAILED: %s",
                        len(failed), "; ".join(f"{row['experiment_id']}: {reason}" for row, reason in failed[:3]))
        return failed
