"""HPC workloads through the whole cluster (issue 14): `haorch demo --hpc` from the CLI as a user runs it, and the
cancel of an experiment whose SLURM job runs (the job is scancelled) — on the test stack, the HPC test site in the
same home, a 3-node cluster and 2 workers, all real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import yaml
from polling import wait_until

from node import cluster
from node.config import Config
from node.experiments import Experiments
from node.hpc import site as hpc_site
from node.hpc import slurm
from node.hpc.siteinfo import DEFAULT_SITE, load_sites, site_named
from node.hpc.ssh import POOL
from node.paths import REPO_ROOT

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def hpc_cluster(stack: Config) -> Iterator[Config]:
    """The HPC site in the stack's own home (the demo's layout); site and cluster stopped after the module."""
    hpc_site.down(stack, purge=True)
    try:
        yield stack
    finally:
        cluster.down(stack)
        hpc_site.down(stack, purge=True)


def haorch(cfg: Config, *args: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess:
    env = {"HAORCH_HOME": str(cfg.home), "HAORCH_PORT_BASE": str(cfg.port_base), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "node.cli", *args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout_s)


def sacct_states(cfg: Config, experiment_id: str, task: str) -> list[str]:
    info = site_named(load_sites(cfg.home), DEFAULT_SITE)
    done = POOL.run(DEFAULT_SITE, info, f"sacct -n -X -P -S now-1days -o JobID,State "
                                        f"--name={slurm.job_name(experiment_id, task, 1)}", timeout_s=30)
    return [line.split("|")[1].split()[0] for line in done.stdout.splitlines() if "|" in line]


def test_the_hpc_demo_runs_the_example_workload_and_checks_every_result(hpc_cluster: Config) -> None:
    done = haorch(hpc_cluster, "demo", "--hpc", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["ok"] and summary["state"] == "COMPLETED" and summary["problems"] == []
    assert summary["slurm_jobs_for_submit"] == 1
    tasks = {t["task"]: t for t in summary["tasks"]}
    assert tasks["submit"]["outputs"]["array_tasks"] == 4 and not tasks["submit"]["outputs"]["adopted"]
    assert tasks["monitor"]["outputs"]["state"] == "COMPLETED"
    assert tasks["stage_out"]["outputs"]["files"] == summary["files"]
    status = json.loads(haorch(hpc_cluster, "status", summary["experiment_id"], "--json").stdout)
    assert {t["name"]: t["outputs"] for t in status["tasks"]}["submit"]["job_id"] == summary["job_id"]


def test_cancelling_an_experiment_scancels_its_running_job(hpc_cluster: Config, tmp_path) -> None:
    cfg = hpc_cluster
    hpc_site.up(cfg)
    cluster.up(cfg, nodes=3, workers=2)
    type_ = "hpc_long_job"
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump({"type": type_, "tasks": [
        {"name": "submit", "kind": "job_submission", "executor": "slurm_submit",
         "params": {"script": "#!/bin/bash\nsleep 300\n", "time": "00:10:00"}},
        {"name": "monitor", "kind": "monitoring", "executor": "slurm_monitor", "depends_on": ["submit"],
         "params": {"job_id": "{{ tasks.submit.outputs.job_id }}", "poll_s": 1}, "timeout_s": 600}]}))
    experiment_id = f"hpc-cancel-{int(time.time())}"
    with Experiments(cfg) as exps:
        exps.register(path)
        exps.submit(type_, experiment_id)
        wait_until(lambda: "RUNNING" in sacct_states(cfg, experiment_id, "submit"), 60, "the job runs", poll_s=0.5)
        wait_until(lambda: exps.status(experiment_id)["tasks"][1].get("waiting_on"), 30, "monitor waiting", poll_s=0.5)
        out = exps.cancel(experiment_id)
    assert out["state"] == "CANCELLED" and out["undone_tasks"] == 1
    wait_until(lambda: sacct_states(cfg, experiment_id, "submit") == ["CANCELLED"], 30, "the job scancelled",
               poll_s=0.5)
