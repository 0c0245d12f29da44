"""Tasks that wait on the world without holding a worker slot (the ``wait_file`` sensor, like ``slurm_monitor``),
and outputs passed on to successors through ``{{ tasks.NAME.outputs.KEY }}`` — on a real cluster (issue 14)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from core_harness import cli_json, dag_tasks, query, register, submit, transitions, unique, wait_all
from polling import wait_until

from node.config import Config

pytestmark = pytest.mark.stack


def sensor_template(type_: str, flag: Path, timeout_s: float) -> dict:
    return {"type": type_, "tasks": [
        {"name": "sense", "kind": "monitoring", "executor": "wait_file",
         "params": {"path": str(flag), "poll_s": 0.5}, "timeout_s": timeout_s},
        {"name": "use", "kind": "job_submission", "executor": "sleep", "depends_on": ["sense"],
         "params": {"ms": "{{ tasks.sense.outputs.size }}", "label": "read {{ tasks.sense.outputs.path }}"}}]}


def test_a_waiting_task_holds_no_slot_is_re_checked_and_passes_its_outputs_on(workers: Config,
                                                                             tmp_path: Path) -> None:
    cfg = workers
    flag = tmp_path / "ready.flag"
    type_ = unique("sensor").replace("-", "_")
    assert register(cfg, tmp_path, sensor_template(type_, flag, timeout_s=120)).returncode == 0
    exp = submit(cfg, type_, unique("wait"))
    # several re-checks happen while the file is missing; between them no worker holds the attempt
    wait_until(lambda: dag_tasks(cfg, exp)["sense"]["status"] == "DISPATCHED", 30, "sense dispatched")
    time.sleep(3)
    open_claims = query(cfg, "SELECT COUNT(*) AS n FROM ledger WHERE experiment_id = %s AND ended_at IS NULL",
                        (exp,))[0]["n"]
    assert open_claims <= 1  # at most a check in progress, never a held slot for the whole wait
    assert query(cfg, "SELECT COUNT(*) AS n FROM ledger WHERE experiment_id = %s", (exp,))[0]["n"] <= 1
    flag.write_text("x" * 25)
    assert wait_all(cfg, [exp], 60) == {exp: "COMPLETED"}
    rows = query(cfg, "SELECT task, attempt, outcome, result FROM ledger WHERE experiment_id = %s ORDER BY id",
                 (exp,))
    assert [(r["task"], r["attempt"], r["outcome"]) for r in rows] == [("sense", 1, "success"), ("use", 1, "success")]
    assert '"slept_ms":25' in rows[1]["result"].replace(" ", "")
    # the re-checks are not transitions: sense was dispatched once and succeeded once
    sense = [(r["to_state"], r["attempt"]) for r in transitions(cfg, exp) if r["task"] == "sense"]
    assert sense == [("DISPATCHED", 1), ("SUCCEEDED", 1)]
    shown = {t["name"]: t for t in cli_json(cfg, "status", exp)["tasks"]}
    assert shown["sense"]["outputs"] == {"path": str(flag), "size": 25}
    assert shown["use"]["outputs"] == {"slept_ms": 25}


def test_a_task_waiting_past_its_timeout_fails_with_the_reason(workers: Config, tmp_path: Path) -> None:
    cfg = workers
    type_ = unique("sensor").replace("-", "_")
    assert register(cfg, tmp_path, sensor_template(type_, tmp_path / "never", timeout_s=2)).returncode == 0
    exp = submit(cfg, type_, unique("wait-late"))
    assert wait_all(cfg, [exp], 60) == {exp: "FAILED"}
    (failed,) = [r for r in transitions(cfg, exp) if r["task"] == "sense" and r["to_state"] == "FAILED"]
    assert failed["detail"].startswith("still waiting after the task's timeout of 2 s: ")
    assert "does not exist yet" in failed["detail"]
