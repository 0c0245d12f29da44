"""Metric names: one meaning each (nodes and workers serve their own registries), series exported at 0 from the
start, and every name the dashboard and the Prometheus rules use is one haorch declares."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import yaml
from prometheus_client import generate_latest

from node import metrics
from node.dashboard import DASHBOARD_FILE, load_panels
from node.model.builtin import builtin_kinds
from node.paths import PROMETHEUS_RULES_DIR, REPO_ROOT
from node.stores.queues import QUEUES
from node.worker.worker import DEPENDENCIES

RULES_FILE = PROMETHEUS_RULES_DIR / "haorch.yml"
SHARED = {"haorch_dependency_up", "haorch_dead_letters_total"}
NODE_SERVICES = ("zookeeper", "mariadb", "neo4j", "rabbitmq")  # node_main.DependencyMonitor.SERVICES
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _names(registry) -> set[str]:
    """The exported haorch_ names of ``registry`` (counters with their _total, histograms without suffixes)."""
    return {f"{m.name}_total" if m.type == "counter" else m.name
            for m in registry.collect() if m.name.startswith("haorch_")}


def _used(expr: str) -> set[str]:
    names = set(re.findall(r"\bhaorch_[a-z_]+", expr)) - {"haorch_id"}  # a target label, not a metric
    return {next((n[: -len(s)] for s in HISTOGRAM_SUFFIXES if n.endswith(s)), n) for n in names}


def test_nodes_and_workers_share_only_their_own_probes_and_dead_letters() -> None:
    node, worker = _names(metrics.NODE_REGISTRY), _names(metrics.WORKER_REGISTRY)
    assert node & worker == SHARED
    assert {"haorch_tasks_total", "haorch_task_latency_seconds", "haorch_batch_size"} <= node - worker
    assert {"haorch_worker_executions_total", "haorch_worker_execution_seconds",
            "haorch_worker_batch_size"} <= worker - node


def test_dashboard_and_rules_use_declared_names_only() -> None:
    declared = _names(metrics.NODE_REGISTRY) | _names(metrics.WORKER_REGISTRY)
    exprs = [t.expr for p in load_panels() for t in p.targets]
    exprs += [r["expr"] for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]
    used = set().union(*map(_used, exprs))
    assert used - declared == set()
    assert {"haorch_worker_executions_total", "haorch_worker_execution_seconds", "haorch_worker_batch_size"} <= used


def test_a_fresh_node_exposes_its_known_series_from_the_start() -> None:
    metrics.expose_node_series(builtin_kinds(), QUEUES, NODE_SERVICES)
    sample = metrics.NODE_REGISTRY.get_sample_value
    assert {"data_staging", "job_submission", "monitoring", "output_staging"} <= set(builtin_kinds())
    for kind in builtin_kinds():
        for outcome in ("succeeded", "failed", "retried"):
            assert sample("haorch_tasks_total", {"kind": kind, "outcome": outcome}) is not None, (kind, outcome)
    for queue in QUEUES:
        assert sample("haorch_queue_depth", {"queue": queue}) is not None, queue
    for service in NODE_SERVICES:
        assert sample("haorch_dependency_up", {"service": service}) is not None, service
    assert "haorch_worker_executions_total" not in generate_latest(metrics.NODE_REGISTRY).decode()


def test_a_fresh_worker_exposes_its_known_series_from_the_start() -> None:
    metrics.expose_worker_series(builtin_kinds(), DEPENDENCIES)
    for kind in builtin_kinds():
        for outcome in ("success", "failure"):
            assert metrics.WORKER_REGISTRY.get_sample_value(
                "haorch_worker_executions_total", {"kind": kind, "outcome": outcome}) is not None, (kind, outcome)
    text = generate_latest(metrics.WORKER_REGISTRY).decode()
    assert "haorch_tasks_total" not in text and "haorch_experiments" not in text


def test_committed_dashboard_is_what_the_builder_produces() -> None:
    spec = importlib.util.spec_from_file_location("build_dashboard", REPO_ROOT / "grafana" / "build_dashboard.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = builder  # dataclasses look their module up there
    spec.loader.exec_module(builder)
    assert DASHBOARD_FILE.read_text() == builder.render(), "run .venv/bin/python grafana/build_dashboard.py"
    board = json.loads(DASHBOARD_FILE.read_text())
    assert board["schemaVersion"] == builder.Dashboard("x").build().schema_version  # the SDK's, not ours
    assert {p["type"] for p in board["panels"]} == {"row", "timeseries", "stat"}
