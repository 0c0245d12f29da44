"""HA holds for jobs on a real SLURM site: the ``hpc`` chaos scenario (a leader SIGKILL, a worker SIGKILL right
after an sbatch answered, a slurmctld restart, each while jobs are queued and running) completes every experiment
with exactly one job per submit task in sacct and nothing staged twice. The evidence can fail on the real site: two
jobs under one task's names are found in sacct, and a target staged twice is found in the journal.

The scenario starts the HPC test site in the stack's own home (the workers read its sites.json); the module stops
and purges it afterwards.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos_tests import faults, report, scenarios
from chaos_tests.hpc import AFTER_SBATCH, SUBMIT
from node import cluster
from node.config import Config, with_overrides
from node.hpc import site, slurm
from node.hpc.siteinfo import load_sites, site_named
from node.hpc.ssh import POOL
from node.verify.hpc import JobEvidence, StagingEvidence, evaluate_hpc
from node.verify.hpc_read import read_jobs, read_staging
from node.worker.executors import ExecutionContext, get_executor
from node.worker.hpc_executors import data_dir

pytestmark = [pytest.mark.stack, pytest.mark.timeout(420)]

SESSION_S = 1.0
EXPERIMENTS = 30


@pytest.fixture(scope="module")
def hpc_cfg(stack: Config) -> Iterator[Config]:
    cfg = with_overrides(stack, zk_session_timeout_s=SESSION_S)
    faults.cleanup(cfg)
    site.down(cfg, purge=True)  # what a crashed earlier run left
    try:
        yield cfg
    finally:
        faults.cleanup(cfg)
        cluster.down(cfg)
        site.down(cfg, purge=True)


def test_hpc_scenario_one_job_per_task_nothing_staged_twice(hpc_cfg: Config, tmp_path: Path) -> None:
    started = time.monotonic()
    result = scenarios.run(hpc_cfg, "hpc", kills=3, experiments=EXPERIMENTS, seed=7, interval_s=1.0,
                           quiesce_s=240.0, progress=lambda m: print(f"[chaos] {m}", flush=True))
    print(f"[chaos] hpc scenario: {time.monotonic() - started:.0f} s", flush=True)
    hpc, exp = result["hpc"], result["experiments"]
    assert result["violations"] == 0, result["check_markdown"]
    assert hpc["violations"] == [], hpc["markdown"]
    assert exp["completed"] == exp["submitted"] == EXPERIMENTS, exp
    assert [f["fault"] for f in result["faults"]] == ["kill-leader", "kill-worker", "restart-slurmctld"]
    assert all(f.get("injected_at") and f.get("undone_at") and not f.get("error") for f in result["faults"])
    # each fault hit jobs both queued and running in SLURM; the worker died between sbatch and its answer
    assert hpc["faults"]["with_jobs_pending_and_running"] == 3, result["faults"]
    assert hpc["faults"]["worker_kills_at_failpoint"] == 1, result["faults"]
    assert result["faults"][2]["restart_s"] > 0 and result["faults"][0]["epoch_changed"]
    # one job per submit task, COMPLETED and in sacct; the killed worker's job adopted by the task's next attempt
    assert hpc["tasks"] == EXPERIMENTS and hpc["jobs_per_task"] == {"1": EXPERIMENTS}
    assert hpc["job_states"] == {"COMPLETED": EXPERIMENTS} and hpc["jobs_accounted"] == EXPERIMENTS
    assert hpc["adopted"] >= 1
    assert hpc["expected_targets"] == EXPERIMENTS * 6 and hpc["targets"] == EXPERIMENTS * 6
    assert result["ok"] and result["rules_left"] == 0 and result["frozen_left"] == []
    assert not list((hpc_cfg.home / "failpoints").glob(f"*/{AFTER_SBATCH}"))
    text = Path(report.write(result, tmp_path / "chaos-hpc")["markdown"]).read_text()
    assert "**SLURM jobs per submit task** (sacct) | 1 job(s): 30 task(s)" in text and "@sbatch" in text
    assert "## HPC check: OK" in text


def _run(cfg: Config, command: str) -> str:
    done = POOL.run("local", site_named(load_sites(cfg.home), "local"), command, timeout_s=60)
    assert done.exit_code == 0, done
    return done.stdout


def test_two_jobs_under_one_tasks_names_are_found_in_sacct(hpc_cfg: Config) -> None:
    """Submitted by hand around haorch: attempt 1's and attempt 2's jobs both completing is a violation."""
    site.up(hpc_cfg)
    experiment_id = f"twice-{uuid.uuid4().hex[:8]}"
    since = time.time()
    for attempt in (1, 2):
        name = slurm.job_name(experiment_id, SUBMIT, attempt)
        _run(hpc_cfg, f"cd /tmp && sbatch --parsable --job-name={shlex.quote(name)} --output=/dev/null --wrap true")
    deadline = time.monotonic() + 60
    while True:
        jobs = read_jobs(hpc_cfg, [experiment_id], (SUBMIT,), since=since, settle_s=10)
        if [j.state for j in jobs.by_task()[(experiment_id, SUBMIT)]] == ["COMPLETED", "COMPLETED"]:
            break
        assert time.monotonic() < deadline, jobs
        time.sleep(1)
    found = evaluate_hpc(jobs, StagingEvidence())
    assert found.by_kind() == {"job_twice": 1} and found.jobs_per_task == {2: 1}, found.to_markdown()


def test_a_target_staged_twice_is_found_in_the_journal(hpc_cfg: Config) -> None:
    """stage_in run again with the same bytes places nothing; with other bytes and overwrite it places the target
    a second time, and the journal shows the first placement replaced."""
    site.up(hpc_cfg)
    info = site_named(load_sites(hpc_cfg.home), "local")
    experiment_id = f"stage-{uuid.uuid4().hex[:8]}"
    src = data_dir(str(hpc_cfg.home)) / "chaos-hpc-test" / experiment_id
    src.mkdir(parents=True)
    (src / "a.txt").write_text("first\n")
    journal = f"chaos-hpc-test/{experiment_id}/staging.journal"
    params = {"src": f"chaos-hpc-test/{experiment_id}", "dst": f"chaos-hpc-test/{experiment_id}/in",
              "journal": journal}
    stage_in = get_executor("stage_in", shell_enabled=False)
    target = f"{info.work_dir}/chaos-hpc-test/{experiment_id}/in/a.txt"
    expected = {("site", target): experiment_id}
    local_journal = src / "none.journal"

    def check() -> dict:
        evidence = read_staging(hpc_cfg, f"{info.work_dir}/{journal}", local_journal, expected)
        return evaluate_hpc(JobEvidence(), evidence).to_dict()

    assert stage_in(params, ExecutionContext(experiment_id, "stage_in", 1, 0, str(hpc_cfg.home)))["copied"] == 1
    assert stage_in(params, ExecutionContext(experiment_id, "stage_in", 2, 0, str(hpc_cfg.home)))["copied"] == 0
    once = check()
    assert once["ok"] and once["placements"] == 1, once
    (src / "a.txt").write_text("second\n")
    outputs = stage_in({**params, "overwrite": True}, ExecutionContext(experiment_id, "stage_in", 3, 0,
                                                                      str(hpc_cfg.home)))
    assert outputs["copied"] == 1
    twice = check()
    assert twice["violations_by_kind"] == {"staged_twice": 1} and twice["placements"] == 2, twice
    assert [json.loads(line.partition(" ")[2])["attempt"]
            for line in _run(hpc_cfg, f"cat {shlex.quote(f'{info.work_dir}/{journal}')}").splitlines()] == [1, 3]
    _run(hpc_cfg, f"rm -rf -- {shlex.quote(f'{info.work_dir}/chaos-hpc-test')}")


def test_the_hpc_plans_cycle_their_kinds_and_arm_every_other_worker_kill() -> None:
    specs = scenarios.plan("hpc", 9, 1)
    assert [s["kind"] for s in specs] == ["kill-leader", "kill-worker", "restart-slurmctld"] * 3
    assert [s.get("at") for s in specs if s["kind"] == "kill-worker"] == [AFTER_SBATCH, None, AFTER_SBATCH]
    assert [s["kind"] for s in scenarios.plan("hpc-restart-slurmctld", 2, 1)] == ["restart-slurmctld"] * 2
    assert scenarios.plan("hpc", 9, 1) == specs
