"""One verification: read a snapshot of the stores for a scope, run every rule over it, report.

    report = check(cfg, Scope(since=started_at))          # experiments created at or after ``since``
    report = check(cfg, Scope(experiment_ids=["exp-1"]))  # just these
    report = check(cfg, Scope(since=t, archive_dir=cfg.archive_dir))  # and those retention archived and deleted
    if not report.ok:
        print(report.to_markdown())

Read only: a crash at any step leaves the stores as they were.
"""

from __future__ import annotations

import time
from collections import Counter

from node.config import Config
from node.verify.report import Report
from node.verify.rules import RULES
from node.verify.snapshot import Scope, Snapshot, read


def check(cfg: Config, scope: Scope) -> Report:
    """Verify every invariant (:mod:`node.verify.rules`) over the experiments of ``scope``."""
    started = time.perf_counter()
    report = evaluate(read(cfg, scope))
    report.elapsed_s = time.perf_counter() - started
    return report


def evaluate(snapshot: Snapshot) -> Report:
    """Every rule over ``snapshot``, with its counters (pure)."""
    scope = snapshot.scope
    return Report(
        violations=[v for rule in RULES for v in rule(snapshot)],
        experiments=len(snapshot.experiments), tasks=len(snapshot.tasks),
        duplicate_executions=snapshot.duplicate_keys, duplicate_rows=snapshot.duplicate_rows,
        replays=snapshot.replays, epochs=len(snapshot.epoch_nodes), executions=snapshot.executions,
        transitions=snapshot.transitions, archived=snapshot.archived,
        states=dict(Counter(snapshot.experiments.values())),
        since=scope.since, experiment_ids=None if scope.experiment_ids is None else len(scope.experiment_ids))
