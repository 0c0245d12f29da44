"""The console's pure parts: time formatting, filters, the shaping of tasks, terms and actions, the form parser, and
graph.py drawing a small DAG with the real ``dot`` (and its error boxes when ``dot`` is missing, fails or hangs)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from node.access.roles import Principal, Role
from node.console import views
from node.console.graph import GraphNode, GraphRenderer, dot_source
from node.console.routes import _safe_next, parse_form
from node.errors import UsageError

DIAMOND = [GraphNode("a", (), "SUCCEEDED", 1), GraphNode("b", ("a",), "DISPATCHED", 2),
           GraphNode("c", ("a",), "FAILED", 3), GraphNode("d", ("b", "c"), "PENDING", 0)]


def test_utc_iso_and_relative() -> None:
    assert views.utc_iso(0) == "1970-01-01T00:00:00Z"
    assert views.utc_iso(None) == ""
    assert views.relative(100.0, now=105.0) == "5 s ago"
    assert views.relative(0.0, now=3 * 3600 + 5) == "3 h ago"
    assert views.relative(200.0, now=80.0) == "in 2 min"
    assert views.relative(None) == ""


def test_parse_time_accepts_dates_iso_and_seconds() -> None:
    assert views.parse_time("", "since") is None
    assert views.parse_time("1970-01-02", "since") == 86400.0
    assert views.parse_time("1970-01-01T00:01:00Z", "since") == 60.0
    assert views.parse_time("12.5", "since") == 12.5
    with pytest.raises(UsageError, match="until"):
        views.parse_time("yesterday", "until")


def test_list_filter_from_query_and_links() -> None:
    f = views.ListFilter.from_query({"state": "running", "type": "chain", "q": " chain-1 ", "since": "1970-01-02"})
    checked = f.checked()
    assert checked == {"state": "running", "type_": "chain", "since": 86400.0, "until": None, "prefix": "chain-1",
                       "after": None}
    assert f.query(after="CUR") == {"state": "running", "type": "chain", "since": "1970-01-02", "q": "chain-1",
                                    "after": "CUR"}


def test_state_counts_lists_every_state_and_the_total() -> None:
    counts = dict(views.state_counts({"RUNNING": 3, "COMPLETED": 7}))
    assert counts == {"QUEUED": 0, "RUNNING": 3, "COMPLETED": 7, "FAILED": 0, "CANCELLED": 0, "total": 10}


def test_task_rows_and_nodes_from_status_tasks() -> None:
    tasks = [{"name": "a", "kind": "k", "status": "SUCCEEDED", "attempt": 1, "max_attempts": 3, "dispatched_at": 10.0,
              "finished_at": 11.5, "last_error": None, "depends_on": [], "waiting_on": None,
              "outputs": {"n": 1}},
             {"name": "b", "kind": "k", "status": "DISPATCHED", "attempt": 2, "max_attempts": 3,
              "dispatched_at": 12.0, "finished_at": None, "last_error": "boom", "depends_on": ["a"],
              "waiting_on": {"job": 7}, "outputs": {}}]
    rows = views.task_rows(tasks)
    assert rows[0]["duration"] == "1.50 s" and json.loads(rows[0]["outputs"]) == {"n": 1}
    assert rows[1]["outputs"] == "" and rows[1]["error"] == "boom" and json.loads(rows[1]["waiting_on"]) == {"job": 7}
    assert views.task_nodes(tasks) == [GraphNode("a", (), "SUCCEEDED", 1, "k"), GraphNode("b", ("a",), "DISPATCHED", 2,
                                                                                             "k")]


def test_actions_per_state_and_role() -> None:
    operator, viewer = Principal("op", Role.OPERATOR), Principal("v", Role.VIEWER)
    assert views.actions_for("RUNNING", operator) == views.Actions(cancel=True, retry=False, allowed=True)
    assert views.actions_for("FAILED", operator) == views.Actions(cancel=False, retry=True, allowed=True)
    assert views.actions_for("COMPLETED", operator) == views.Actions(cancel=False, retry=False, allowed=True)
    seen = views.actions_for("QUEUED", viewer)
    assert seen.cancel and not seen.allowed and "viewer" in seen.note


def test_terms_bars_share_the_longest_total() -> None:
    rows = [(3, "node-2", 100.0, json.dumps({"detect": 1.0, "elect": 0.5, "fence": 0.5, "total": 2.0})),
            (2, "node-1", 50.0, json.dumps({"detect": 0.5, "total": 0.5})),
            (1, "node-1", 10.0, None)]
    newest, second, first = views.terms(rows)
    assert [(p, w) for p, _, w in newest.bars] == [("detect", 50.0), ("elect", 25.0), ("fence", 25.0)]
    assert second.bars == [("detect", 0.5, 25.0)]
    assert first.bars == [] and first.total is None


def test_safe_next_keeps_local_paths_only() -> None:
    assert _safe_next("/experiments/x?state=RUNNING") == "/experiments/x?state=RUNNING"
    for bad in ("//evil.example/", "https://evil.example/", "javascript:alert(1)", "/\\evil"):
        assert _safe_next(bad) == "/experiments"


def test_parse_form_urlencoded_and_multipart() -> None:
    assert parse_form("application/x-www-form-urlencoded", b"token=a%2Bb&next=%2Fx&token=2") == {"token": "a+b",
                                                                                                "next": "/x"}
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.yaml\"\r\n"
            b"Content-Type: application/x-yaml\r\n\r\ntype: t\ntasks: []\n\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\n\r\n--XyZ--\r\n")
    assert parse_form("multipart/form-data; boundary=XyZ", body) == {"file": "type: t\ntasks: []\n", "text": ""}


def test_dot_source_quotes_and_ids() -> None:
    source = dot_source([GraphNode('we"ird'), GraphNode("b", ('we"ird', "elsewhere"), "PENDING", 0)])
    assert '"we\\"ird" -> "b";' in source
    assert "elsewhere" not in source  # an edge to a task that is not drawn is left out
    assert 'id="task-b"' in source and 'class="state-PENDING"' in source


def test_graph_svg_has_a_node_per_task_coloured_by_state() -> None:
    graph = GraphRenderer().render(DIAMOND, "exp-1")
    assert graph.error is None and graph.svg is not None
    assert graph.svg.startswith("<svg")
    assert len(re.findall(r'class="node state&#45;', graph.svg)) == 4
    assert len(re.findall(r'class="edge"', graph.svg)) == 4
    assert "FAILED · attempt 3" in graph.svg and "#fecaca" in graph.svg
    template = GraphRenderer().render([GraphNode(n.name, n.depends_on, None, 0, "kind") for n in DIAMOND])
    assert template.svg is not None and template.svg.count('class="node template&#45;task"') == 4


def test_graph_cache_is_per_state(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    fake = _script(tmp_path, f'echo x >> {counter}\nexec /usr/bin/dot "$@"\n')
    renderer = GraphRenderer(dot=str(fake))
    first = renderer.render(DIAMOND, "e")
    assert renderer.render(DIAMOND, "e") is first
    renderer.render([*DIAMOND[:3], GraphNode("d", ("b", "c"), "DISPATCHED", 1)], "e")
    assert counter.read_text().count("x") == 2


def test_graph_error_boxes(tmp_path: Path) -> None:
    missing = GraphRenderer(dot=str(tmp_path / "no-dot")).render(DIAMOND)
    assert missing.svg is None and missing.error is not None and "not installed" in missing.error
    failing = GraphRenderer(dot=str(_script(tmp_path, "echo 'syntax error in line 1' >&2\nexit 3\n"))).render(DIAMOND)
    assert failing.svg is None and failing.error == "Graphviz failed (exit 3): syntax error in line 1"


def test_graph_dot_timeout(tmp_path: Path) -> None:
    hanging = _script(tmp_path, "exec sleep 30\n")
    graph = GraphRenderer(dot=str(hanging), timeout_s=0.3).render(DIAMOND)
    assert graph.svg is None and graph.error == "Graphviz did not draw the graph within 0.3 s"


def _script(directory: Path, body: str) -> Path:
    path = directory / f"fake-dot-{len(list(directory.iterdir()))}"
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, path.stat().st_mode | stat.S_IXUSR)
    return path
