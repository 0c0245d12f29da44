#!/usr/bin/env python3
"""Generate ``node/assets/grafana/dashboards/haorch-cluster.json`` (package data: ``haorch dashboard`` of a wheel
install reads it) with Grafana's dashboards-as-code SDK.

    .venv/bin/python grafana/build_dashboard.py          # rewrite the JSON
    .venv/bin/python grafana/build_dashboard.py --check  # exit 1 if the committed JSON is out of date

The dashboard, its rows, panels (timeseries, stat), their options, the Prometheus queries and the schema version
come from the builders of ``grafana-foundation-sdk`` (pinned in pyproject.toml; that release is generated for
Grafana 10.1, so the JSON loads in Grafana 10.1 and later). The dashboard is the one source of truth for the panel
queries: ``haorch dashboard`` renders the same panels to PNG from the JSON, and the observability tests evaluate
every query against a real Prometheus. Queries use fixed windows (no Grafana-only variables) so that they run
unchanged through the Prometheus HTTP API.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from grafana_foundation_sdk.builders.common import ReduceDataOptions, VizLegendOptions, VizTooltipOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from node.paths import DASHBOARD_FILE

OUT = DASHBOARD_FILE
DATASOURCE = DataSourceRef(type_val="prometheus", uid="haorch-prometheus")
NODE = 'job="haorch-node"'
WIDTH, HEIGHT = 12, 8  # two panels per row of the grid (24 wide)


@dataclass(frozen=True)
class Spec:
    """One panel: its queries as (PromQL, legend format); ``stat`` shows the latest value instead of a graph."""

    title: str
    unit: str
    queries: list[tuple[str, str]]
    description: str
    stat: bool = False


def _quantiles(metric: str, selector: str = "") -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{selector}[1m])))", f"p{int(q * 100)}")
            for q in (0.5, 0.99)]


ROWS: list[tuple[str, list[Spec]]] = [
    ("Leadership and failover", [
        Spec("Acting leader", "none",
             [(f"haorch_node_is_leader{{{NODE}}}", "{{haorch_id}}")],
             "1 while a node is the acting leader. Exactly one line should be at 1; a gap is a failover."),
        Spec("Leader epoch", "none",
             [(f"haorch_leader_epoch{{{NODE}}}", "{{haorch_id}}")],
             "Epoch of each node's current (or last) term; a step up is a new term.", stat=True),
        Spec("Failover duration by phase (p99, 15m)", "s",
             [(f"histogram_quantile(0.99, sum by (phase, le) "
               f"(increase(haorch_failover_duration_seconds_bucket{{{NODE}}}[15m])))", "{{phase}}")],
             "Takeover phases: detect (previous leader's last write to lock won), elect, fence, rescan, redispatch, "
             "first_advance, and total. SLO: total under 3 s."),
        Spec("Failovers and rescanned tasks (5m)", "none",
             [(f"sum(increase(haorch_failovers_total{{{NODE}}}[5m]))", "takeovers"),
              (f"sum(increase(haorch_rescan_tasks_total{{{NODE}}}[5m]))", "rescanned tasks")],
             "Takeovers completed and ready tasks found by takeover rescans."),
        Spec("ZooKeeper session", "none",
             [(f"haorch_zk_session_state{{{NODE}}}", "{{haorch_id}}")],
             "1 connected, 0.5 suspended, 0 lost."),
        Spec("Fence rejections (1m)", "none",
             [(f"sum by (haorch_id) (increase(haorch_fence_rejections_total{{{NODE}}}[1m]))", "{{haorch_id}}")],
             "Writes refused because a newer epoch holds the fence (a deposed leader that had not noticed yet)."),
    ]),
    ("Work", [
        Spec("Tasks advanced by the leader (per s)", "ops",
             [("sum by (kind, outcome) (rate(haorch_tasks_total[1m]))", "{{kind}} {{outcome}}")],
             "haorch_tasks_total: tasks the leader flagged succeeded, failed or scheduled for a retry."),
        Spec("Task executions by workers (per s)", "ops",
             [("sum by (kind, outcome) (rate(haorch_worker_executions_total[1m]))", "{{kind}} {{outcome}}")],
             "haorch_worker_executions_total: attempts the workers executed (replays from the ledger excluded)."),
        Spec("Task latency, dispatch to flagged (leader)", "s",
             _quantiles("haorch_task_latency_seconds"),
             "haorch_task_latency_seconds: from the leader's dispatch of a task to its flagging as succeeded."),
        Spec("Execution time (workers)", "s",
             _quantiles("haorch_worker_execution_seconds"),
             "haorch_worker_execution_seconds: how long one execution took on a worker."),
        Spec("Executions in progress (workers)", "none",
             [("sum by (haorch_id) (haorch_worker_executions_in_progress)", "{{haorch_id}}")],
             "haorch_worker_executions_in_progress: executions running on each worker, including ones abandoned "
             "at their timeout whose thread still runs."),
        Spec("Experiments by state", "none",
             [("max by (state) (haorch_experiments)", "{{state}}")],
             "Experiments in MariaDB by state, as exported by the acting leader."),
        Spec("Queue depth", "none",
             [(f"max by (queue) (haorch_queue_depth{{{NODE}}})", "{{queue}}")],
             "Messages ready in each haorch queue (haorch.responses backlog > 1000 and growing alerts)."),
        Spec("Leader batch size", "none",
             _quantiles("haorch_batch_size"),
             "haorch_batch_size: responses and submissions the leader advances in one batch."),
        Spec("Worker batch size", "none",
             _quantiles("haorch_worker_batch_size"),
             "haorch_worker_batch_size: requests a worker takes in one batch."),
        Spec("Worker claims (1m)", "none",
             [("sum by (result) (increase(haorch_worker_claims_total[1m]))", "{{result}}")],
             "haorch_worker_claims_total: copies of attempts another worker held (held), attempts ended as lost "
             "because their worker died or froze (abandoned), claims given back after a lost channel (released)."),
        Spec("Duplicate responses (1m)", "none",
             [("sum(increase(haorch_duplicate_responses_total[1m]))", "duplicates")],
             "Responses ignored because the task was already flagged or the attempt is stale (a re-sent or replayed "
             "copy)."),
        Spec("Dead letters (1m)", "none",
             [("sum by (job) (increase(haorch_dead_letters_total[1m]))", "{{job}}")],
             "Malformed messages parked on haorch.dead."),
        Spec("Experiments deleted by retention (per s)", "ops",
             [("sum(rate(haorch_gc_experiments_deleted_total[1m]))", "deleted")],
             "haorch_gc_experiments_deleted_total: finished experiments past their retention that the leader's gc "
             "deleted from both stores."),
        Spec("Retention lag", "s",
             [(f"max(haorch_gc_lag_seconds{{{NODE}}})", "lag")],
             "haorch_gc_lag_seconds: how long ago the oldest experiment past its retention passed it, at the "
             "leader's last gc step. Growing: experiments finish faster than gc deletes them (alert past 1 h)."),
    ]),
    ("Health", [
        Spec("Dependency health", "none",
             [("min by (service) (haorch_dependency_up)", "{{service}}")],
             "1 when every node and worker reaches the dependency, 0 when one of them cannot."),
        Spec("Scrape targets up", "none",
             [('up{job=~"haorch-node|haorch-worker"}', "{{haorch_id}}")],
             "1 while Prometheus reaches a node's or worker's /metrics."),
        Spec("Alerts", "none",
             [("sum by (alertname, alertstate) (ALERTS)", "{{alertname}} ({{alertstate}})")],
             "Pending and firing alerts of node/assets/prometheus/rules/haorch.yml."),
    ]),
]


def panel(panel_id: int, spec: Spec) -> Timeseries | Stat:
    """A timeseries (or stat) panel of ``spec`` on the provisioned Prometheus datasource."""
    if spec.stat:
        built: Timeseries | Stat = (Stat().graph_mode(BigValueGraphMode.AREA).color_mode(BigValueColorMode.VALUE)
                                    .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    else:
        built = (Timeseries().line_width(1).fill_opacity(0)
                 .legend(VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM)
                         .show_legend(True))
                 .tooltip(VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.NONE)))
    built = built.id(panel_id).title(spec.title).description(spec.description).datasource(DATASOURCE)
    built = built.unit(spec.unit).span(WIDTH).height(HEIGHT)
    for i, (expr, legend) in enumerate(spec.queries):
        built = built.with_target(Dataquery().ref_id(chr(ord("A") + i)).datasource(DATASOURCE).expr(expr)
                                  .legend_format(legend).range())
    return built


def dashboard() -> Dashboard:
    board = (Dashboard("haorch cluster").uid("haorch-cluster")
             .description("Leadership, failovers, throughput and health of a haorch cluster "
                          "(generated by grafana/build_dashboard.py)")
             .tags(["haorch"]).timezone("utc").editable().version(1).refresh("5s").time("now-15m", "now"))
    panel_id = 0
    for title, specs in ROWS:
        panel_id += 1
        board = board.with_row(Row(title).id(panel_id).datasource(DATASOURCE))
        for spec in specs:
            panel_id += 1
            board = board.with_panel(panel(panel_id, spec))
    return board


def render() -> str:
    """The dashboard JSON as committed: the SDK's encoding, keys sorted, two-space indent."""
    return JSONEncoder(sort_keys=True, indent=2).encode(dashboard().build()) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run .venv/bin/python grafana/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT} ({sum(len(specs) for _, specs in ROWS)} panels in {len(ROWS)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
