"""Running a short chaos scenario in a test and asserting its verdict (shared by the process and Docker suites)."""

from __future__ import annotations

from typing import Any

from chaos_tests import scenarios
from node.config import Config


def run_short(cfg: Config, scenario: str, kills: int = 1, experiments: int = 40, **kw: Any) -> dict[str, Any]:
    """A scenario on the running cluster (kept up afterwards), seed 7, 8 submissions/s unless told otherwise."""
    return scenarios.run(cfg, scenario, kills=kills, experiments=experiments, seed=7, rate=kw.pop("rate", 8.0),
                         interval_s=0.5, fresh_cluster=False, keep_cluster=True, quiesce_s=150.0,
                         progress=lambda m: print(f"[chaos] {m}", flush=True), **kw)


def assert_ok(result: dict[str, Any], faults_expected: int) -> None:
    """No violation, every experiment completed, every fault injected and undone, nothing left behind."""
    exp = result["experiments"]
    assert result["violations"] == 0, result["check_markdown"]
    assert exp["completed"] == exp["submitted"] == result["experiments_requested"], exp
    assert len(result["faults"]) == faults_expected
    assert all(f.get("injected_at") and f.get("undone_at") and not f.get("error") for f in result["faults"]), \
        result["faults"]
    assert result["rules_left"] == 0 and result["frozen_left"] == []
    assert result["ok"]
