#!/usr/bin/env python3
"""Generate ``grafana/dashboards/haorch-cluster.json`` (standard library only).

    python3 grafana/build_dashboard.py          # rewrite the JSON
    python3 grafana/build_dashboard.py --check  # exit 1 if the committed JSON is out of date

The dashboard is the one source of truth for the panel queries: ``haorch dashboard`` renders the same panels to
PNG from the JSON, and the observability tests evaluate every query against a real Prometheus. Queries use fixed
windows (no Grafana-only variables) so that they run unchanged through the Prometheus HTTP API.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "haorch-cluster.json"
DATASOURCE = {"type": "prometheus", "uid": "haorch-prometheus"}
NODE = 'job="haorch-node"'
WORKER = 'job="haorch-worker"'

# (title, unit, [(expr, legend)], description)
PANELS: list[tuple[str, str, list[tuple[str, str]], str]] = [
    ("Acting leader", "none",
     [(f"haorch_node_is_leader{{{NODE}}}", "{{haorch_id}}")],
     "1 while a node is the acting leader. Exactly one line should be at 1; a gap is a failover."),
    ("Leader epoch", "none",
     [(f"haorch_leader_epoch{{{NODE}}}", "{{haorch_id}}")],
     "Epoch of each node's current (or last) term; a step up is a new term."),
    ("Failover duration by phase (p99, 15m)", "s",
     [(f"histogram_quantile(0.99, sum by (phase, le) "
       f"(increase(haorch_failover_duration_seconds_bucket{{{NODE}}}[15m])))", "{{phase}}")],
     "Takeover phases: detect (previous leader's last write to lock won), elect, fence, rescan, redispatch, "
     "first_advance, and total. SLO: total under 3 s."),
    ("Failovers and rescanned tasks (5m)", "none",
     [(f"sum(increase(haorch_failovers_total{{{NODE}}}[5m]))", "takeovers"),
      (f"sum(increase(haorch_rescan_tasks_total{{{NODE}}}[5m]))", "rescanned tasks")],
     "Takeovers completed and ready tasks found by takeover rescans."),
    ("Throughput (tasks/s)", "ops",
     [(f"sum by (kind, outcome) (rate(haorch_tasks_total{{{NODE}}}[1m]))", "advanced {{kind}} {{outcome}}"),
      (f"sum by (kind, outcome) (rate(haorch_tasks_total{{{WORKER}}}[1m]))", "executed {{kind}} {{outcome}}")],
     "Leader: tasks advanced (flagged, failed, retried). Workers: tasks executed."),
    ("Task latency", "s",
     [("histogram_quantile(0.5, sum by (le, job) (rate(haorch_task_latency_seconds_bucket[1m])))", "p50 {{job}}"),
      ("histogram_quantile(0.99, sum by (le, job) (rate(haorch_task_latency_seconds_bucket[1m])))", "p99 {{job}}")],
     "haorch-node: dispatch to flagged; haorch-worker: execution time."),
    ("Experiments by state", "none",
     [(f"max by (state) (haorch_experiments{{{NODE}}})", "{{state}}")],
     "Experiments in MariaDB by state, as exported by the acting leader."),
    ("Queue depth", "none",
     [(f"max by (queue) (haorch_queue_depth{{{NODE}}})", "{{queue}}")],
     "Messages ready in each haorch queue (haorch.responses backlog > 1000 and growing alerts)."),
    ("Dependency health", "none",
     [("min by (service) (haorch_dependency_up)", "{{service}}")],
     "1 when every node and worker reaches the dependency, 0 when one of them cannot."),
    ("ZooKeeper session", "none",
     [(f"haorch_zk_session_state{{{NODE}}}", "{{haorch_id}}")],
     "1 connected, 0.5 suspended, 0 lost."),
    ("Fence rejections (1m)", "none",
     [(f"sum by (haorch_id) (increase(haorch_fence_rejections_total{{{NODE}}}[1m]))", "{{haorch_id}}")],
     "Writes refused because a newer epoch holds the fence (a deposed leader that had not noticed yet)."),
    ("Duplicate responses (1m)", "none",
     [(f"sum(increase(haorch_duplicate_responses_total{{{NODE}}}[1m]))", "duplicates")],
     "Responses ignored because the task was already flagged or the attempt is stale (at-least-once delivery)."),
    ("Dead letters (1m)", "none",
     [("sum by (job) (increase(haorch_dead_letters_total[1m]))", "{{job}}")],
     "Malformed messages parked on haorch.dead."),
    ("Leader batch size", "none",
     [(f"histogram_quantile(0.5, sum by (le) (rate(haorch_batch_size_bucket{{{NODE}}}[1m])))", "p50"),
      (f"histogram_quantile(0.99, sum by (le) (rate(haorch_batch_size_bucket{{{NODE}}}[1m])))", "p99")],
     "Messages per leader batch."),
    ("Scrape targets up", "none",
     [('up{job=~"haorch-node|haorch-worker"}', "{{haorch_id}}")],
     "1 while Prometheus reaches a node's or worker's /metrics."),
    ("Alerts", "none",
     [("sum by (alertname, alertstate) (ALERTS)", "{{alertname}} ({{alertstate}})")],
     "Pending and firing alerts of deploy/prometheus/rules/haorch.yml."),
]


def panel(n: int, title: str, unit: str, targets: list[tuple[str, str]], description: str) -> dict:
    return {
        "id": n + 1,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": (n % 2) * 12, "y": (n // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 0}}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
                     "range": True} for i, (expr, legend) in enumerate(targets)],
    }


def dashboard() -> dict:
    return {
        "uid": "haorch-cluster",
        "title": "haorch cluster",
        "description": "Leadership, failovers, throughput and health of a haorch cluster "
                       "(generated by grafana/build_dashboard.py)",
        "tags": ["haorch"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "annotations": {"list": []},
        "templating": {"list": []},
        "panels": [panel(n, *spec) for n, spec in enumerate(PANELS)],
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python3 grafana/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(PANELS)} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
