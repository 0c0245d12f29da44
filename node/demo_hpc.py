"""``haorch demo --hpc``: one real science workload end to end on the HPC test site.

    summary = run_hpc_demo(cfg, files=6)   # progress lines on stderr
    summary["ok"]                          # every count checked, one SLURM job for the submit task

Steps: check the stack is up → start the HPC test site if it is not running (``node/hpc/site.py``: SLURM, slurmdbd,
an SSH login node) → register the example type ``hpc_wordcount`` (``node/model/examples/``) → start the cluster if
it is not running (3 nodes, 2 workers) → write ``files`` text files with known word counts under the workers' data
location → submit → follow the tasks (stage in over SFTP, an array job through ``sbatch``, monitored without holding
a worker, stage out) → check each result file against the count written, and that SLURM's accounting holds exactly
one job for the submit task. Everything stays up for a look (``haorch status ID``, ``haorch hpc status``).
"""

from __future__ import annotations

import random
import time
import uuid
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from rich.console import Console

from node import cluster
from node.config import Config
from node.demo import _require_stack
from node.experiments import Experiments
from node.hpc import site as hpc_site
from node.hpc import slurm
from node.hpc.siteinfo import DEFAULT_SITE, load_sites, site_named
from node.hpc.ssh import POOL
from node.model.states import TERMINAL_EXPERIMENT_STATES

TYPE = "hpc_wordcount"
NODES = 3
WORKERS = 2
TIMEOUT_S = 600.0
_WORDS = ("neutron", "flux", "lattice", "sample", "beam", "detector", "spectrum", "phase", "grain", "field")


def example_template() -> Any:
    """The shipped template file (a context manager giving its path, inside a wheel too)."""
    return as_file(files("node.model").joinpath("examples", f"{TYPE}.yaml"))


def write_inputs(directory: Path, count: int, seed: int) -> dict[str, int]:
    """``count`` text files of known word counts in ``directory``; file name -> words."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    expected = {}
    for i in range(count):
        words = rng.randint(20, 400)
        lines = [" ".join(rng.choice(_WORDS) for _ in range(min(12, words - n))) for n in range(0, words, 12)]
        (directory / f"run-{i:02d}.txt").write_text("\n".join(lines) + "\n")
        expected[f"run-{i:02d}.txt"] = words
    return expected


def run_hpc_demo(cfg: Config, files_count: int = 6, console: Console | None = None) -> dict[str, Any]:
    """Run the demo (progress on ``console``, default stderr); the summary (``ok`` False when a check failed)."""
    out = console or Console(stderr=True)
    t0 = time.monotonic()
    _require_stack(cfg)
    out.print("[bold]haorch demo --hpc[/bold]: stage in, a SLURM array job, monitor, stage out, check")
    site = hpc_site.up(cfg, progress=lambda m: out.print(f"[dim]hpc[/dim] {m}"))
    with Experiments(cfg) as exps, example_template() as path:
        exps.register(path)
    cluster.up(cfg, nodes=NODES, workers=WORKERS, progress=lambda m: out.print(f"[dim]cluster[/dim] {m}"))

    experiment_id = f"hpc-demo-{uuid.uuid4().hex[:8]}"
    inputs = Path("demo-hpc") / experiment_id
    expected = write_inputs(cfg.home / "data" / inputs, files_count, seed=int(experiment_id[-8:], 16))
    with Experiments(cfg) as exps:
        exps.submit(TYPE, experiment_id, {"inputs": str(inputs), "site": DEFAULT_SITE})
        out.print(f"submitted {experiment_id}: {files_count} files, {sum(expected.values())} words; "
                  f"site {site.login}")
        status = _follow(exps, experiment_id, out)
    results = cfg.home / "data" / "results" / experiment_id
    problems = _check_counts(results, expected) if status["state"] == "COMPLETED" else [
        f"experiment ended {status['state']}"]
    tasks = {t["name"]: t for t in status["tasks"]}
    job_id = tasks["submit"]["outputs"].get("job_id")
    jobs = _jobs_of_task(cfg, experiment_id, "submit")
    if jobs != 1:
        problems.append(f"SLURM accounting holds {jobs} job(s) for the submit task, not 1")
    summary = {"ok": not problems, "experiment_id": experiment_id, "state": status["state"], "job_id": job_id,
               "slurm_jobs_for_submit": jobs, "files": files_count, "words": sum(expected.values()),
               "results": str(results), "problems": problems, "elapsed_s": round(time.monotonic() - t0, 1),
               "tasks": [{"task": t["name"], "state": t["status"], "attempts": t["attempt"],
                          "outputs": t["outputs"]} for t in status["tasks"]]}
    return summary


def _follow(exps: Experiments, experiment_id: str, out: Console) -> dict[str, Any]:
    """Print each task's state changes until the experiment ends (or TIMEOUT_S); the last status."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        status = exps.status(experiment_id)
        for t in status["tasks"]:
            shown = t["status"] + (f" ({t['waiting_on']})" if t.get("waiting_on") else "")
            if seen.get(t["name"]) != shown:
                seen[t["name"]] = shown
                out.print(f"  {t['name']:<10} {shown}")
        if status["state"] in TERMINAL_EXPERIMENT_STATES or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def _check_counts(results: Path, expected: dict[str, int]) -> list[str]:
    problems = []
    for name, words in sorted(expected.items()):
        path = results / f"{name}.words"
        try:
            got = int(path.read_text().strip())
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        if got != words:
            problems.append(f"{name}: the job counted {got} words, the demo wrote {words}")
    return problems


def _jobs_of_task(cfg: Config, experiment_id: str, task: str, wait_s: float = 15.0) -> int:
    """Jobs SLURM's accounting holds for any attempt of ``task`` (by the names haorch gives them; an array job is
    one job). slurmdbd records a job a moment after it ends: an empty answer is asked again for up to ``wait_s``."""
    info = site_named(load_sites(cfg.home), DEFAULT_SITE)
    names = ",".join(slurm.job_name(experiment_id, task, attempt) for attempt in range(1, 6))
    deadline = time.monotonic() + wait_s
    while True:
        done = POOL.run(DEFAULT_SITE, info, f"sacct -n -X -P -S now-1days -o JobID --name={names}", timeout_s=30)
        jobs = {line.split("_")[0] for line in done.stdout.split() if line.strip()}
        if jobs or time.monotonic() > deadline:
            return len(jobs)
        time.sleep(1.0)


def print_hpc_summary(summary: dict[str, Any], console: Console) -> None:
    mark = "[bold green]OK[/]" if summary["ok"] else "[bold red]FAILED[/]"
    console.print(f"\n[bold]summary[/bold] {mark}  ({summary['elapsed_s']} s)")
    console.print(f"  experiment  {summary['experiment_id']}: {summary['state']}")
    console.print(f"  SLURM job   {summary['job_id']} ({summary['slurm_jobs_for_submit']} job for the submit task)")
    console.print(f"  results     {summary['results']}: {summary['files']} files, {summary['words']} words checked")
    for line in summary["problems"]:
        console.print(f"  [red]problem[/]     {line}")
    console.print(f"look:  haorch status {summary['experiment_id']}    haorch hpc status\n"
                  "stop:  haorch hpc down    haorch cluster down    haorch stack down")
