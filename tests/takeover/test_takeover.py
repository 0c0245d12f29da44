"""A cluster started over a ready backlog larger than a takeover page (as after an outage during which users kept
submitting): the leader re-dispatches it in pages, advances DAGs between pages, keeps its connections, and every
experiment completes exactly once. The backlog is created directly in the stores (bench/takeover.py), the scale
is a fifth of ``haorch bench takeover``'s."""

from __future__ import annotations

import time

import pytest

from bench.scratch import Scratch
from bench.takeover import create_backlog, work_off
from node import cluster
from node.config import Config, with_overrides
from node.verify import Scope, check

pytestmark = pytest.mark.stack

TASKS = 10_000
PAGE = 1_000  # at most: the leader halves its pages while they are slow


def _progress(message: str) -> None:
    print(f"[takeover] {message}", flush=True)


def test_a_backlog_larger_than_a_page_is_taken_over_in_pages_and_completes(stack: Config) -> None:
    cfg = with_overrides(stack, takeover_page_size=PAGE)
    cluster.down(cfg)
    with Scratch(cfg, "test-takeover") as scratch:
        try:
            since = time.time()
            create_backlog(cfg, scratch.prefix, TASKS, _progress)
            result = work_off(cfg, scratch.prefix, TASKS, nodes=1, workers=2, timeout_s=200, progress=_progress)
            report = check(cfg, Scope(since=since))
        finally:
            cluster.down(cfg)
    _progress(str(result))
    assert result["completed"] == TASKS, result
    assert result["pages"] is not None and result["pages"] >= 2, f"not paged: {result}"  # notices took some roots
    # that batches are advanced between pages is tested without timing in tests/unit/test_leader_term.py; here
    # "first advance before the last page" would race with the workers' start on a loaded machine
    assert not any(result["connection_events"].values()), f"the leader lost a connection: {result}"
    assert report.ok, report.to_markdown()
