"""``haorch bench hpc``: short SLURM jobs through haorch against the same jobs driven by hand, and the worker slots
held while jobs wait in SLURM.

Three phases on the HPC test site (``haorch hpc up``) and the running cluster, in one run:

1. **direct**: ``jobs`` trivial jobs sbatch'ed one after the other over the worker's kind of pooled SSH connection
   (``node/hpc/ssh.py``), then ``sacct`` polled until all are COMPLETED: what a script of one's own does.
2. **haorch**: ``jobs`` experiments of a two-task type (``slurm_submit`` → ``slurm_monitor``) submitted at once;
   done when all are COMPLETED. Per job, created → COMPLETED in MariaDB; in phase 1, sbatch → seen COMPLETED.
3. **held**: ``jobs`` experiments whose jobs SLURM holds for ``hold_s`` (``#SBATCH --begin=now+hold_s``): while
   they wait, every worker's ``haorch_worker_executions_in_progress`` is sampled (goal: about 0 of the slots; a
   monitor that slept in a thread would hold one per job).

Jobs/s are counted from the first submission to the last completion; the ratio haorch/direct is what matters (the
machine is shared). Each phase's jobs carry the run's own names and experiment ids.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import yaml

from bench.report import percentile
from node import cluster
from node.config import Config
from node.demo import _require_stack
from node.experiments import Experiments
from node.hpc import site as hpc_site
from node.hpc.siteinfo import DEFAULT_SITE, load_sites, site_named
from node.hpc.ssh import POOL

Progress = Callable[[str], None]
TYPE = "bench_slurm"
WORKERS = 2
POLL_S = 0.5
PHASE_TIMEOUT_S = 900.0


def template(hold_s: int) -> dict[str, Any]:
    hold = f"#SBATCH --begin=now+{hold_s}\n" if hold_s else ""
    return {"type": f"{TYPE}_{hold_s}", "description": "one trivial SLURM job, monitored (haorch bench hpc)",
            "tasks": [
                {"name": "submit", "kind": "job_submission", "executor": "slurm_submit", "timeout_s": 120,
                 "retries": 2, "params": {"script": f"#!/bin/bash\n{hold}true\n", "time": "00:02:00"}},
                {"name": "monitor", "kind": "monitoring", "executor": "slurm_monitor", "depends_on": ["submit"],
                 "timeout_s": PHASE_TIMEOUT_S, "params": {"job_id": "{{ tasks.submit.outputs.job_id }}",
                                                           "poll_s": 1}}]}


def run(cfg: Config, jobs: int, hold_s: int, progress: Progress) -> dict[str, Any]:
    _require_stack(cfg)
    hpc_site.up(cfg, progress=lambda m: progress(f"hpc: {m}"))
    up = cluster.up(cfg, nodes=1, workers=WORKERS, progress=lambda m: progress(f"cluster: {m}"))
    slots = WORKERS * cfg.worker_concurrency
    run_id = uuid.uuid4().hex[:6]
    with Experiments(cfg) as exps:
        for hold in (0, hold_s):
            path = cfg.home / "bench" / f"{TYPE}_{hold}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(template(hold), sort_keys=False))
            exps.register(path)
    direct = _direct(cfg, jobs, run_id, progress)
    through = _through_haorch(cfg, f"{TYPE}_0", [f"bh-{run_id}-{i}" for i in range(jobs)], progress)
    held = _held(cfg, f"{TYPE}_{hold_s}", [f"bw-{run_id}-{i}" for i in range(jobs)], slots, progress)
    return {"jobs": jobs, "hold_s": hold_s, "workers": WORKERS, "slots": slots, "leader": up.get("leader"),
            "direct": direct, "haorch": through, "held": held,
            "ratio_jobs_per_s": round(through["jobs_per_s"] / direct["jobs_per_s"], 3),
            "overhead_p50_s": round(through["latency_p50_s"] - direct["latency_p50_s"], 3)}


def _direct(cfg: Config, jobs: int, run_id: str, progress: Progress) -> dict[str, Any]:
    """sbatch ``jobs`` trivial jobs over one kept SSH connection, then poll sacct until they completed."""
    info = site_named(load_sites(cfg.home), DEFAULT_SITE)
    name = f"bench-direct-{run_id}"
    submitted: dict[str, float] = {}
    t0 = time.time()
    for _ in range(jobs):
        at = time.time()
        done = POOL.run(DEFAULT_SITE, info, f"sbatch --parsable --job-name={name} --time=00:02:00 "
                                            f"--output=/dev/null --wrap=true", timeout_s=60, idempotent=False)
        if done.exit_code != 0:
            raise RuntimeError(f"sbatch failed: {done.last_error_line()}")
        submitted[done.stdout.strip().split(";")[0]] = at
    progress(f"direct: {jobs} jobs sbatch'ed in {time.time() - t0:.1f} s")
    seen: dict[str, float] = {}
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while len(seen) < jobs and time.monotonic() < deadline:
        out = POOL.run(DEFAULT_SITE, info, f"sacct -n -X -P -S now-1days -o JobIDRaw,State --name={name}",
                       timeout_s=60)
        now = time.time()
        for line in out.stdout.splitlines():
            job_id, _, state = line.partition("|")
            if state.strip() == "COMPLETED" and job_id in submitted and job_id not in seen:
                seen[job_id] = now
        time.sleep(POLL_S)
    latencies = [seen[j] - submitted[j] for j in seen]
    elapsed = max(seen.values(), default=time.time()) - t0
    return {"completed": len(seen), "seconds": round(elapsed, 2), "jobs_per_s": round(len(seen) / elapsed, 2),
            **_percentiles(latencies)}


def _through_haorch(cfg: Config, type_: str, ids: list[str], progress: Progress) -> dict[str, Any]:
    t0 = time.time()
    with Experiments(cfg) as exps:
        exps.submit_many(type_, ids)
    progress(f"haorch: {len(ids)} experiments submitted in {time.time() - t0:.1f} s")
    rows = _wait(cfg, ids)
    done = [r for r in rows if r["state"] == "COMPLETED"]
    latencies = [r["finished_at"] - r["created_at"] for r in done]
    elapsed = max((r["finished_at"] for r in done), default=time.time()) - t0
    return {"completed": len(done), "not_completed": len(ids) - len(done), "seconds": round(elapsed, 2),
            "jobs_per_s": round(len(done) / elapsed, 2), **_percentiles(latencies)}


def _held(cfg: Config, type_: str, ids: list[str], slots: int, progress: Progress) -> dict[str, Any]:
    """Submit experiments whose jobs SLURM holds; sample busy worker slots while every job waits in SLURM."""
    with Experiments(cfg) as exps:
        exps.submit_many(type_, ids)
    info = site_named(load_sites(cfg.home), DEFAULT_SITE)
    samples: list[float] = []
    waiting_max = 0
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while time.monotonic() < deadline:
        out = POOL.run(DEFAULT_SITE, info, "squeue -h -t PENDING -o %j", timeout_s=30)
        waiting = sum(1 for line in out.stdout.splitlines() if line.startswith("haorch."))
        waiting_max = max(waiting_max, waiting)
        if waiting >= len(ids):
            samples.append(_busy_slots(cfg))
        elif waiting_max >= len(ids):
            break  # SLURM started releasing them
        time.sleep(POLL_S)
    progress(f"held: {len(samples)} samples while all {len(ids)} jobs waited in SLURM")
    rows = _wait(cfg, ids)
    return {"jobs_waiting_max": waiting_max, "samples": len(samples), "slots": slots,
            "busy_slots_max": max(samples, default=float("nan")),
            "busy_slots_mean": round(statistics.fmean(samples), 3) if samples else None,
            "completed": sum(1 for r in rows if r["state"] == "COMPLETED")}


def _busy_slots(cfg: Config) -> float:
    total = 0.0
    for n in range(1, WORKERS + 1):
        with urllib.request.urlopen(f"{cfg.worker_url(n)}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("haorch_worker_executions_in_progress"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


def _wait(cfg: Config, ids: list[str]) -> list[dict[str, Any]]:
    """The rows of ``ids`` once every one is terminal (TimeoutExpired after PHASE_TIMEOUT_S)."""
    with Experiments(cfg) as exps:
        return exps.wait(ids, PHASE_TIMEOUT_S, poll_s=POLL_S)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"latency_p50_s": None, "latency_p99_s": None}
    return {"latency_p50_s": round(percentile(values, 0.5), 3), "latency_p99_s": round(percentile(values, 0.99), 3)}


def render(result: dict[str, Any]) -> str:
    d, h, w = result["direct"], result["haorch"], result["held"]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"""## bench hpc ({when})

{result['jobs']} trivial SLURM jobs on the HPC test site (`haorch hpc up`: slurmctld + 2 slurmd on this 2-core
machine), same run. *direct*: `sbatch` one after the other over one kept SSH connection, then `sacct` polled every
{POLL_S} s. *haorch*: one experiment per job (`slurm_submit` → `slurm_monitor`, re-checks every 1 s), submitted at
once, {result['workers']} workers × {result['slots'] // result['workers']} slots. Latency: direct sbatch → seen
COMPLETED; haorch experiment created → COMPLETED.

| path | completed | seconds | jobs/s | latency p50 | p99 |
| --- | ---: | ---: | ---: | ---: | ---: |
| direct | {d['completed']} | {d['seconds']} | {d['jobs_per_s']} | {d['latency_p50_s']} s | {d['latency_p99_s']} s |
| haorch | {h['completed']} | {h['seconds']} | {h['jobs_per_s']} | {h['latency_p50_s']} s | {h['latency_p99_s']} s |

haorch/direct jobs/s: **{result['ratio_jobs_per_s']}**; haorch's overhead per job (p50 latency difference):
**{result['overhead_p50_s']} s**.

Worker slots busy while all {result['jobs']} jobs waited in SLURM (held {result['hold_s']} s by `--begin`): max
**{w['busy_slots_max']}** of {w['slots']}, mean {w['busy_slots_mean']} over {w['samples']} samples (at most
{w['jobs_waiting_max']} jobs pending at once; {w['completed']} completed afterwards).
"""
