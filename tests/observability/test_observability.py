"""Metrics, rules, dashboard and ``haorch dashboard`` against the real Prometheus of the test stack.

Every panel query of node/assets/grafana/dashboards/haorch-cluster.json and every rule expression of
node/assets/prometheus/rules/haorch.yml is evaluated through the Prometheus HTTP API after a run with a real failover
(see conftest.py); panel queries must return data, so a misspelt metric name fails here.

``HAORCH_DASHBOARD_SNAPSHOT=docs/img/dashboard-failover.png`` copies the rendered overview there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from node.dashboard import DASHBOARD_FILE, load_panels
from node.metrics import FAILOVER_PHASES
from node.paths import REPO_ROOT
from node.stack.prometheus import RULES_DIR, prometheus_query, prometheus_query_range

RULES_FILE = RULES_DIR / "haorch.yml"
RULES_TEST = REPO_ROOT / "deploy" / "prometheus" / "tests" / "haorch_test.yml"
HAORCH = [sys.executable, "-m", "node.cli"]

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]  # the first test pays for the stack and the run


def _env(cfg) -> dict[str, str]:
    return {**os.environ, "HAORCH_HOME": str(cfg.home), "HAORCH_PORT_BASE": str(cfg.port_base)}


def _api(cfg, path: str):
    with urllib.request.urlopen(f"{cfg.prometheus_url}/api/v1/{path}", timeout=5) as resp:
        return json.loads(resp.read())["data"]


# --- static checks (no stack needed) ---------------------------------------------------------------------------
def test_promtool_check_rules() -> None:
    out = subprocess.run(["promtool", "check", "rules", str(RULES_FILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_rule_unit_tests() -> None:
    out = subprocess.run(["promtool", "test", "rules", str(RULES_TEST)], capture_output=True, text=True,
                         cwd=RULES_TEST.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rule_unit_tests_cover_every_alert() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts == firing, f"alerts without a firing test: {alerts - firing}"
    assert alerts == quiet, f"alerts without a not-firing test: {alerts - quiet}"


def test_every_alert_has_severity_and_annotations() -> None:
    for group in yaml.safe_load(RULES_FILE.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
                assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_dashboard_json_is_generated_from_build_script() -> None:
    out = subprocess.run([sys.executable, str(REPO_ROOT / "grafana" / "build_dashboard.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    board = json.loads(DASHBOARD_FILE.read_text())
    assert {p["datasource"]["uid"] for p in board["panels"]} == {"haorch-prometheus"}
    provisioned = yaml.safe_load((REPO_ROOT / "grafana" / "provisioning" / "datasources" / "haorch.yml").read_text())
    assert provisioned["datasources"][0]["uid"] == "haorch-prometheus"


def test_dashboard_reports_prometheus_down_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HAORCH_HOME": str(tmp_path / "home"), "HAORCH_PORT_BASE": "19900"}  # nothing listens
    out = subprocess.run([*HAORCH, "dashboard", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         env=env, cwd=REPO_ROOT)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "prometheus is not answering at http://127.0.0.1:19960" in out.stderr


# --- against the run with a failover -----------------------------------------------------------------------------
def test_every_scrape_target_is_up(run) -> None:
    targets = _api(run.cfg, "targets?state=active")["activeTargets"]
    by_id = {t["labels"].get("haorch_id", t["labels"]["job"]): t for t in targets}
    assert {"node-1", "node-2", "worker-1", "prometheus"} <= set(by_id), sorted(by_id)
    down = {name: t["lastError"] for name, t in by_id.items() if t["health"] != "up"}
    assert not down, f"targets not up: {down}"


def test_prometheus_loaded_the_rules_and_they_evaluate(run) -> None:
    groups = {g["name"]: g for g in _api(run.cfg, "rules")["groups"]}
    assert {"haorch.recording", "haorch.alerts"} <= set(groups), sorted(groups)
    declared = [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]
    loaded = {r["name"]: r for g in groups.values() for r in g["rules"]}
    for rule in declared:
        name = rule.get("record") or rule["alert"]
        assert loaded[name]["health"] == "ok", f"{name}: {loaded[name].get('lastError')}"
        prometheus_query(run.cfg, rule["expr"])  # raises on a bad expression


def test_every_panel_query_returns_data(run) -> None:
    panels = load_panels()
    assert len(panels) >= 12
    empty = []
    for panel in panels:
        for target in panel.targets:
            rows = prometheus_query_range(run.cfg, target.expr, run.started_at, time.time(), 1.0)
            if not rows:
                empty.append(f"{panel.title}: {target.expr}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)


def test_failover_histogram_has_every_phase_on_the_new_leader(run) -> None:
    new_id = run.new_leader["node_id"]
    rows = prometheus_query(run.cfg, f'sum by (phase) (haorch_failover_duration_seconds_count{{haorch_id="{new_id}"}})')
    counts = {r["metric"]["phase"]: float(r["value"][1]) for r in rows}
    sums = {r["metric"]["phase"]: float(r["value"][1]) for r in prometheus_query(
        run.cfg, f'sum by (phase) (haorch_failover_duration_seconds_sum{{haorch_id="{new_id}"}})')}
    print(f"[obs] takeover by {new_id}: " + " ".join(f"{p}={sums.get(p, 0) * 1000:.0f}ms" for p in FAILOVER_PHASES))
    missing = [p for p in FAILOVER_PHASES if counts.get(p, 0) < 1]
    assert not missing, f"phases never observed on {new_id}: {missing} (counts {counts})"
    parts = sum(sums[p] for p in FAILOVER_PHASES if p != "total")
    assert abs(parts - sums["total"]) < 0.01, f"phases add up to {parts:.3f} s, total is {sums['total']:.3f} s"
    assert float(prometheus_query(run.cfg, f'haorch_failovers_total{{haorch_id="{new_id}"}}')[0]["value"][1]) >= 1
    epoch = prometheus_query(run.cfg, f'haorch_leader_epoch{{haorch_id="{new_id}"}}')
    assert int(float(epoch[0]["value"][1])) == run.new_leader["epoch"]


def test_haorch_dashboard_renders_pngs(run, tmp_path: Path) -> None:
    minutes = max(1.0, round((time.time() - run.started_at) / 60 + 0.5, 1))
    out = subprocess.run([*HAORCH, "dashboard", "--out", str(tmp_path), "--minutes", str(minutes), "--json"],
                         capture_output=True, text=True, env=_env(run.cfg), cwd=REPO_ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result["panels"]) == len(load_panels())
    index = (tmp_path / "index.html").read_text()
    for panel in result["panels"]:
        png = tmp_path / panel["file"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, panel
        assert panel["series"] > 0, f"{panel['title']}: no series"
        assert panel["file"] in index
    overview = tmp_path / "dashboard.png"
    assert overview.stat().st_size > 50_000
    snapshot = os.environ.get("HAORCH_DASHBOARD_SNAPSHOT")
    if snapshot:
        Path(snapshot).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(overview, snapshot)
