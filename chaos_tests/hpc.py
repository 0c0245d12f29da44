"""HA for jobs on a SLURM site: the ``hpc`` scenarios' workload, faults and evidence.

    workload = HpcWorkload(cfg, prefix, workers=2)
    workload.install(progress)         # the HPC test site up (node/hpc/site.py), the chaos-hpc type, input files
    workload.watch(load.ids)           # the load's ids: whose jobs count as the run's
    fault = make_fault(cfg, {"kind": "restart-slurmctld"}, workload)
    outcome = workload.outcome(ids, started)   # jobs per task (sacct), staging journals: node/verify/hpc.py

The workload is a steady load of ``chaos-hpc`` experiments: ``stage_in`` of three small files to the site,
``slurm_submit`` of an array job (3 elements of 2 CPUs each, each sleeping 2-5 s and writing a result file),
``slurm_monitor`` (a check per dispatch, no worker slot held while the job waits) and ``stage_out`` of the results.
The site has 2 nodes of 4 CPUs: 4 elements run at once, so a load slightly above that capacity keeps jobs both
queued and running in SLURM. Both stage tasks journal every placement (the executors' ``journal`` param).

The faults, each injected only once the run has jobs pending *and* running in SLURM (a bounded wait; the counts at
the fault are recorded as ``jobs_at_fault``):

    kill-leader        SIGKILL the acting leader (chaos_tests/faults.py KillLeader); undo restarts it
    kill-worker        SIGKILL a worker; with ``at`` = ``worker.after_sbatch`` (every other one) the worker is
                       first stopped by the failpoint right after an sbatch answered and before the worker could
                       answer its attempt, then killed: the attempt's job exists, its answer never comes
    restart-slurmctld  SIGTERM slurmctld (never SIGKILL: killed, it forgets jobs submitted in its last seconds),
                       wait until it exited, ``down_s`` later start it through the site's program object and wait
                       until ``scontrol ping`` answers UP

What must hold (node/verify/hpc.py): every experiment COMPLETED, each submit task has exactly one COMPLETED job in
SLURM's accounting and no second job unless every earlier one failed, and no target of either stage was placed twice.
"""

from __future__ import annotations

import logging
import os
import random
import shlex
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chaos_tests.faults import Fault, KillLeader, KillWorker, process_stopped
from node import cluster, failpoints
from node.config import Config
from node.errors import ServiceError, UsageError
from node.experiments import Experiments
from node.hpc import site as hpc_site
from node.hpc import slurm
from node.hpc.siteinfo import DEFAULT_SITE, SiteInfo, load_sites, site_named
from node.hpc.slurm_conf import NODE_CPUS, NODES
from node.hpc.ssh import POOL
from node.model.executors import KNOWN_EXECUTORS
from node.model.states import ExperimentState
from node.model.template import parse_template
from node.runtime.process import wait_gone
from node.stack.manager import wait_ready
from node.verify.hpc import Place, evaluate_hpc
from node.verify.hpc_read import read_jobs, read_staging
from node.worker.hpc_executors import AFTER_SBATCH, data_dir

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

TYPE = "chaos-hpc"
SUBMIT = "submit"
ELEMENTS = 3                 # array elements per job
CPUS_PER_ELEMENT = 2
ELEMENT_S = 4.0              # an element's mean sleep (2-5 s) and start-up
OVERLOAD = 1.2               # the load's rate over SLURM's capacity: jobs queue up, slowly
INPUTS = {"a.txt": "neutron flux lattice\n", "b.txt": "sample beam detector spectrum\n", "c.txt": "phase grain\n"}
RETRIES = 6                  # attempts per task: a slurmctld restart fails a few submits and stages; a worker kill one
JOBS_WAIT_S = 30.0           # bound on waiting for jobs both queued and running before a fault
FAILPOINT_WAIT_S = 30.0      # bound on waiting for the worker to pass the failpoint (it needs an sbatch)
SLURMCTLD_DOWN_S = 2.0

SCRIPT = """#!/bin/bash
# element i sleeps 2-5 s (fixed by the experiment and i), then writes its result
set -euo pipefail
i=${SLURM_ARRAY_TASK_ID:-0}
s=$(( 2 + $(printf '%s.%s' "$PWD" "$i" | cksum | cut -d' ' -f1) % 4 ))
sleep "$s"
mkdir -p out
words=$(cat in/* | wc -w)
printf 'element %s of job %s slept %s s over %s words\\n' "$i" "${SLURM_ARRAY_JOB_ID:-0}" "$s" "$words" \\
  > "out/part-$i.txt"
"""

_RETRY = {"retries": RETRIES, "backoff_s": 1.0, "backoff_factor": 2.0, "max_backoff_s": 8.0}
TEMPLATE: dict[str, Any] = {
    "type": TYPE,
    "description": "Stage 3 files to the HPC site, an array job (3 x 2 CPUs, 2-5 s each) monitored without a slot, "
                   "stage the results back; both stages journal every placement.",
    "params": {"inputs": None, "site_dir": None, "results": None},
    "tasks": [
        {"name": "stage_in", "kind": "data_staging", "executor": "stage_in", **_RETRY, "timeout_s": 30,
         "params": {"src": "{{ params.inputs }}", "dst": "{{ params.site_dir }}/{{ experiment.id }}/in",
                    "journal": "{{ params.site_dir }}/staging.journal"}},
        # sbatch and the lookup before it each wait up to ~9 s for a slurmctld that is down: 30 s covers both
        {"name": SUBMIT, "kind": "job_submission", "executor": "slurm_submit", "depends_on": ["stage_in"], **_RETRY,
         "timeout_s": 30,
         "params": {"workdir": "{{ params.site_dir }}/{{ experiment.id }}", "array": f"0-{ELEMENTS - 1}",
                    "cpus_per_task": CPUS_PER_ELEMENT, "time": "00:05:00", "script": SCRIPT}},
        {"name": "monitor", "kind": "monitoring", "executor": "slurm_monitor", "depends_on": [SUBMIT], **_RETRY,
         "timeout_s": 900,
         "params": {"job_id": "{{ tasks.submit.outputs.job_id }}",
                    "array_tasks": "{{ tasks.submit.outputs.array_tasks }}", "poll_s": 1}},
        {"name": "stage_out", "kind": "output_staging", "executor": "stage_out", "depends_on": ["monitor"], **_RETRY,
         "timeout_s": 30,
         "params": {"src": "{{ params.site_dir }}/{{ experiment.id }}/out",
                    "dst": "{{ params.results }}/{{ experiment.id }}",
                    "journal": "{{ params.results }}/staging.journal"}},
    ],
}

KINDS = ("kill-leader", "kill-worker", "restart-slurmctld")
#: the hpc scenarios and the fault kinds each cycles through
SCENARIOS: dict[str, tuple[str, ...]] = {"hpc": KINDS, **{f"hpc-{kind}": (kind,) for kind in KINDS}}


def plan(kinds: tuple[str, ...], kills: int, seed: int, workers: int = 2) -> list[dict[str, Any]]:
    """``kills`` fault specs cycling through ``kinds``; a kill-worker names its worker (drawn with ``seed``), and
    the first, third, ... kill-worker happens at the failpoint after sbatch."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    worker_kills = 0
    for i in range(kills):
        kind = kinds[i % len(kinds)]
        if kind not in KINDS:
            raise ValueError(f"unknown hpc fault {kind!r}; one of {', '.join(KINDS)}")
        spec: dict[str, Any] = {"kind": kind}
        if kind == "kill-worker":
            spec["worker"] = rng.randint(1, workers)
            if worker_kills % 2 == 0:
                spec["at"] = AFTER_SBATCH
            worker_kills += 1
        out.append(spec)
    return out


@dataclass
class HpcWorkload:
    """One hpc run's workload (see the module docstring): its type, files and the evidence it leaves."""

    cfg: Config
    prefix: str
    workers: int = 2
    site_name: str = DEFAULT_SITE
    load_ids: list[str] = field(default_factory=list)   # the load's ids, growing as it submits (see ``watch``)

    @property
    def run_name(self) -> str:
        return self.prefix.rstrip("-")

    @property
    def local_dir(self) -> str:
        """The run's directory under the workers' data location (inputs, results, the local journal)."""
        return f"chaos-hpc/{self.run_name}"

    @property
    def site_dir(self) -> str:
        """The run's directory under the site's work_dir (staged inputs, job dirs, the site journal)."""
        return f"chaos-hpc/{self.run_name}"

    @property
    def types(self) -> tuple[str, ...]:
        return (TYPE,)

    @property
    def params(self) -> dict[str, str]:
        return {"inputs": f"{self.local_dir}/in", "site_dir": self.site_dir, "results": f"{self.local_dir}/results"}

    def site(self) -> SiteInfo:
        return site_named(load_sites(self.cfg.home), self.site_name)

    def max_rate(self) -> float:
        """Experiments per second slightly above what SLURM runs (:data:`OVERLOAD`): jobs queue, slowly."""
        slots = len(NODES) * NODE_CPUS // CPUS_PER_ELEMENT
        return OVERLOAD * slots / (ELEMENTS * ELEMENT_S)

    def install(self, progress: Progress = lambda _m: None) -> None:
        """Start the HPC test site if it is not up (registering it as ``local``), register the chaos-hpc type (an
        unchanged template keeps its version), write the input files."""
        hpc_site.up(self.cfg, progress=lambda m: progress(f"hpc: {m}"))
        with Experiments(self.cfg) as exps:
            exps.dags.register_template(parse_template(TEMPLATE, KNOWN_EXECUTORS))
        inputs = data_dir(str(self.cfg.home)) / self.params["inputs"]
        inputs.mkdir(parents=True, exist_ok=True)
        for name, text in INPUTS.items():
            (inputs / name).write_text(text)

    def watch(self, ids: list[str]) -> None:
        """Count the jobs of the experiments in ``ids`` (the load's list, which it extends as it submits)."""
        self.load_ids = ids

    def remove(self) -> None:
        """Delete the run's files here and on the site (best effort: the site may be down)."""
        shutil.rmtree(data_dir(str(self.cfg.home)) / self.local_dir, ignore_errors=True)
        try:
            site = self.site()
            POOL.run(self.site_name, site, f"rm -rf -- {shlex.quote(f'{site.work_dir}/{self.site_dir}')}", 60.0)
        except Exception as exc:  # noqa: BLE001 - cleanup only: report, do not mask the run's outcome
            log.warning("chaos hpc: could not remove %s on the site: %s", self.site_dir, exc)

    # --- jobs in SLURM -----------------------------------------------------------------------------------------
    def live_jobs(self) -> dict[str, int]:
        """Array elements of the run's jobs that SLURM holds, by state (PENDING, RUNNING, ...)."""
        tokens = {slurm.id_token(e) for e in list(self.load_ids)}
        out = POOL.run(self.site_name, self.site(), f"squeue -h -r -O {shlex.quote(slurm.SQUEUE_FORMAT)}", 30.0)
        counts: Counter[str] = Counter()
        for row in slurm.parse_squeue(out.stdout):
            parts = row.name.split(".")
            if len(parts) == 4 and parts[0] == slurm.NAME_ROOT and parts[1] in tokens:
                counts[row.state] += 1
        return dict(counts)

    def wait_live_jobs(self, timeout_s: float = JOBS_WAIT_S) -> dict[str, Any]:
        """Wait (bounded) until the run has jobs both pending and running in SLURM; the counts and the wait."""
        started = time.monotonic()
        counts: dict[str, int] = {}
        while True:
            try:
                counts = self.live_jobs()
            except Exception as exc:  # noqa: BLE001 - the site mid-restart: look again until the bound
                log.debug("chaos hpc: squeue: %s", exc)
            if (counts.get("PENDING", 0) and counts.get("RUNNING", 0)) or time.monotonic() - started > timeout_s:
                return {"counts": counts, "waited_s": round(time.monotonic() - started, 2)}
            time.sleep(0.5)

    # --- the evidence ------------------------------------------------------------------------------------------
    def expected(self, states: dict[str, str]) -> dict[Place, str]:
        """The targets each COMPLETED experiment of ``states`` must have: its inputs on the site, its element
        results here."""
        work_dir = self.site().work_dir
        results = os.path.realpath(data_dir(str(self.cfg.home)) / self.params["results"])
        out: dict[Place, str] = {}
        for experiment_id, state in states.items():
            if state != ExperimentState.COMPLETED:
                continue
            for name in INPUTS:
                out[("site", f"{work_dir}/{self.site_dir}/{experiment_id}/in/{name}")] = experiment_id
            for i in range(ELEMENTS):
                out[("local", f"{results}/{experiment_id}/part-{i}.txt")] = experiment_id
        return out

    def outcome(self, ids: list[str], started: float) -> dict[str, Any]:
        """Jobs per submit task (SLURM's accounting, after it settled) and the staging journals, checked by
        node/verify/hpc.py; ``ok`` also needs every experiment COMPLETED."""
        jobs = read_jobs(self.cfg, ids, (SUBMIT,), since=started, site_name=self.site_name)
        states = {e: s for (e, _t), s in jobs.tasks.items()}
        site = self.site()
        staging = read_staging(self.cfg, f"{site.work_dir}/{self.site_dir}/staging.journal",
                               data_dir(str(self.cfg.home)) / self.params["results"] / "staging.journal",
                               self.expected(states), self.site_name)
        report = evaluate_hpc(jobs, staging)
        completed = sum(1 for s in states.values() if s == ExperimentState.COMPLETED)
        return {**report.to_dict(), "markdown": report.to_markdown(), "completed": completed,
                "experiments": len(ids), "ok": report.ok and completed == len(ids)}


# --- faults ------------------------------------------------------------------------------------------------------
def _jobs_first(fault: Fault, workload: HpcWorkload | None) -> HpcWorkload:
    """Wait until the run has jobs pending and running (recorded in the fault's detail); the workload."""
    if workload is None:
        raise UsageError(f"{fault.name} needs the hpc run's workload")
    fault.detail["jobs_wait"] = workload.wait_live_jobs()
    return workload


def _at_fault(fault: Fault, workload: HpcWorkload) -> None:
    """Record the run's jobs SLURM holds, by state, right before the fault acts."""
    try:
        fault.detail["jobs_at_fault"] = workload.live_jobs()
    except Exception as exc:  # noqa: BLE001 - evidence only: the fault goes ahead
        fault.detail["jobs_at_fault"] = {"error": str(exc)[:200]}


@dataclass
class HpcKillLeader(KillLeader):
    """KillLeader once jobs are queued and running."""

    workload: HpcWorkload | None = None

    def _inject(self) -> None:
        _at_fault(self, _jobs_first(self, self.workload))
        super()._inject()


@dataclass
class HpcKillWorker(KillWorker):
    """SIGKILL a worker once jobs are queued and running; with ``at`` (the failpoint after sbatch) the worker is
    first stopped there, so that its attempt's job exists and its answer never comes (if no sbatch passes the
    failpoint within FAILPOINT_WAIT_S, it is killed wherever it is: ``at_failpoint`` False)."""

    workload: HpcWorkload | None = None
    at: str | None = None

    def _inject(self) -> None:
        workload = _jobs_first(self, self.workload)
        proc = cluster.worker_process(self.cfg, self.worker)
        pid = proc.pid()
        self.detail.update({"victim": f"worker-{self.worker}", "pid": pid})
        if self.at and pid:
            self.detail["at"] = self.at
            failpoints.arm(self.cfg, failpoints.process_id(pid), self.at)
            deadline = time.monotonic() + FAILPOINT_WAIT_S
            while not process_stopped(pid) and proc.alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            self.detail["at_failpoint"] = process_stopped(pid)
            failpoints.disarm(self.cfg, failpoints.process_id(pid), self.at)
        _at_fault(self, workload)
        proc.kill()
        if pid:
            wait_gone(pid, 5.0)


@dataclass
class RestartSlurmctld(Fault):
    """SIGTERM slurmctld once jobs are queued and running (it saves its state and exits), keep it down ``down_s``,
    start it again through the site's program object and wait until ``scontrol ping`` answers UP."""

    name: str = "restart-slurmctld"
    down_s: float = SLURMCTLD_DOWN_S
    workload: HpcWorkload | None = None

    def _inject(self) -> None:
        workload = _jobs_first(self, self.workload)
        ctld = hpc_site.site(self.cfg).slurmctld
        self.detail.update({"victim": "slurmctld", "pid": ctld.proc.pid(), "signal": "TERM"})
        _at_fault(self, workload)
        started = time.monotonic()
        if not ctld.stop():  # SIGTERM; SIGKILL only if it is still there after its 120 s grace
            raise ServiceError("slurmctld was not running")
        self.detail["stop_s"] = round(time.monotonic() - started, 3)

    def _undo(self) -> None:
        if "victim" not in self.detail:
            return
        ctld = hpc_site.site(self.cfg).slurmctld
        if ctld.proc.alive():
            return
        started = time.monotonic()
        ctld.start()
        wait_ready(ctld, lambda _m: None)
        self.detail["restart_s"] = round(time.monotonic() - started, 3)


def make_fault(cfg: Config, spec: dict[str, Any], workload: HpcWorkload | None) -> Fault:
    kind = spec["kind"]
    if kind == "kill-leader":
        return HpcKillLeader(cfg, workload=workload)
    if kind == "kill-worker":
        return HpcKillWorker(cfg, worker=int(spec.get("worker", 1)), workload=workload, at=spec.get("at"))
    if kind == "restart-slurmctld":
        return RestartSlurmctld(cfg, workload=workload)
    raise ValueError(f"unknown hpc fault {kind!r}; one of {', '.join(KINDS)}")


def fault_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """How many faults found jobs both pending and running in SLURM, and how many worker kills landed at the
    failpoint after sbatch."""
    live = [r for r in records if r.get("jobs_at_fault")]
    both = sum(1 for r in live if r["jobs_at_fault"].get("PENDING", 0) and r["jobs_at_fault"].get("RUNNING", 0))
    at = [r for r in records if r.get("at")]
    return {"faults": len(records), "with_jobs_pending_and_running": both,
            "worker_kills_at_failpoint": sum(1 for r in at if r.get("at_failpoint")), "worker_kills_armed": len(at)}

