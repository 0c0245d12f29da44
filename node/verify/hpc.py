"""The HA invariants of work on an HPC site, as pure rules over what the site recorded (``node/verify/hpc_read.py``
reads it: sacct and squeue over the site's SSH pool, the staging journals):

    report = evaluate_hpc(jobs, staging)          # JobEvidence, StagingEvidence -> HpcReport
    report.ok, report.violations, report.jobs_per_task, report.to_markdown()

Jobs (every slurm_submit task of the checked experiments; its jobs are the ones whose SLURM name starts with the
task's prefix, ``node/hpc/slurm.py``, whatever the attempt that submitted them):

- ``job_twice``: a task has a job submitted after another of its jobs that had not failed (a second job is allowed
  only when every earlier one ended in a failure state: a retry after a failed job).
- ``job_outcome``: a COMPLETED experiment whose task has not exactly one COMPLETED job.

Staging (every line of the journals ``stage_in`` and ``stage_out`` append before each rename into place, see
``node/worker/hpc_executors.py``; a line names the target, the temporary file and its inode, which the rename
carries into place):

- ``staged_twice``: a journaled placement whose inode is neither the target's now nor its temporary file's (that
  file is still there when its rename never happened): it was renamed into the target and then replaced by
  another placement, so the same place was staged twice.
- ``staged_unjournaled``: a target that a COMPLETED experiment must have is missing, or holds an inode that no
  journaled placement of it had (it was written by something that did not journal, or written over).
- ``journal_unreadable``: a journal line that does not parse (a torn or interleaved append).

A journaled placement whose temporary file is still there is counted (``not_placed``): the stage was interrupted
between its journal line and its rename, and a later attempt staged the file. A task whose succeeding attempt is
later than the attempt that submitted its job is counted too (``adopted``): an attempt submitted the job and was
lost before it answered (its worker killed after sbatch), and a later attempt adopted that job.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from node.hpc import slurm
from node.model.states import ExperimentState
from node.verify.rules import Violation

Key = tuple[str, str]  # (experiment_id, task)
Place = tuple[str, str]  # (side: "site" or "local", absolute path)

HPC_KINDS: dict[str, str] = {
    "job_twice": "jobs: a second SLURM job for a task while an earlier one had not failed",
    "job_outcome": "jobs: a completed experiment without exactly one COMPLETED job for its task",
    "staged_twice": "staging: a file renamed into a place that a placement had already filled",
    "staged_unjournaled": "staging: a target missing, or not the file any journaled placement put there",
    "journal_unreadable": "staging: a journal line that does not parse",
}


@dataclass(frozen=True)
class SiteJob:
    """One SLURM job as the site knows it (squeue's view while slurmctld holds it, else sacct's)."""

    job_id: str
    name: str
    state: str          # COMPLETED, a failure state (node/hpc/slurm.py FAILURE_STATES) or a live state
    elements: int = 1   # rows: array elements (a pending range counts once), 1 for a plain job
    accounted: bool = True  # sacct lists it

    @property
    def failed(self) -> bool:
        return self.state in slurm.FAILURE_STATES

    @property
    def attempt(self) -> int | None:
        """The attempt that submitted it (from its name)."""
        tail = self.name.rpartition(".a")[2]
        return int(tail) if tail.isdigit() else None


@dataclass
class JobEvidence:
    """The slurm_submit tasks to check, with their experiment's state, the site's jobs (any of them), and the
    attempt of each task that succeeded (from the transition log)."""

    tasks: dict[Key, str] = field(default_factory=dict)
    jobs: list[SiteJob] = field(default_factory=list)
    succeeded: dict[Key, int] = field(default_factory=dict)

    def by_task(self) -> dict[Key, list[SiteJob]]:
        """Each task's jobs in submission order (job id), all attempts."""
        prefixes = task_prefixes(self.tasks)
        out: dict[Key, list[SiteJob]] = {key: [] for key in self.tasks}
        for job in self.jobs:
            key = owner(job.name, prefixes)
            if key is not None:
                out[key].append(job)
        return {key: sorted(jobs, key=lambda j: int(j.job_id)) for key, jobs in out.items()}


def task_prefixes(tasks: Iterable[Key]) -> dict[str, Key]:
    """The job name prefix of each task (``node/hpc/slurm.py``) -> the task."""
    return {slurm.task_prefix(experiment_id, task): (experiment_id, task) for experiment_id, task in tasks}


def owner(job_name: str, prefixes: dict[str, Key]) -> Key | None:
    """The task among ``prefixes`` whose job ``job_name`` is (any attempt), or None. A name is
    ``haorch.<experiment>.<task>.a<attempt>`` and no part has a dot, so the prefix ends at the last ``.a``."""
    head, sep, _ = job_name.rpartition(".a")
    key = prefixes.get(head + sep)
    return key if key is not None and slurm.attempt_of(job_name, head + sep) is not None else None


@dataclass(frozen=True)
class Placement:
    """One journal line: ``part`` (inode ``inode``) renamed into ``target`` by an attempt of a stage task."""

    side: str
    target: str
    part: str
    inode: int
    sha256: str
    experiment_id: str
    task: str
    attempt: int


@dataclass
class StagingEvidence:
    """The journals' placements, the inode now at every path they name (None: nothing there), and the targets the
    checked experiments must have (target -> experiment)."""

    placements: list[Placement] = field(default_factory=list)
    inodes: dict[Place, int | None] = field(default_factory=dict)
    expected: dict[Place, str] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # journal lines that did not parse (the first 100 chars)


def parse_journal(text: str, side: str) -> tuple[list[Placement], list[str]]:
    """The placements of a journal (``<inode> <json>`` per line) and the lines that do not parse."""
    placements: list[Placement] = []
    bad: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        inode, _, body = line.partition(" ")
        try:
            entry = json.loads(body)
            placements.append(Placement(side, str(entry["target"]), str(entry["part"]), int(inode),
                                        str(entry["sha256"]), str(entry["experiment"]), str(entry["task"]),
                                        int(entry["attempt"])))
        except (ValueError, KeyError, TypeError):
            bad.append(line[:100])
    return placements, bad


def job_violations(ev: JobEvidence) -> list[Violation]:
    out: list[Violation] = []
    for (experiment_id, task), jobs in sorted(ev.by_task().items()):
        listed = ", ".join(f"{j.job_id} {j.state} ({j.name.rpartition('.')[2]})" for j in jobs) or "none"
        for i, job in enumerate(jobs[1:], start=1):
            alive = [j for j in jobs[:i] if not j.failed]
            if alive:
                out.append(Violation("job_twice", f"{experiment_id}/{task}: job {job.job_id} was submitted after "
                                     f"job {alive[0].job_id}, which had not failed (jobs: {listed})", experiment_id))
                break
        completed = sum(1 for j in jobs if j.state == slurm.SUCCESS_STATE)
        if ev.tasks[(experiment_id, task)] == ExperimentState.COMPLETED and completed != 1:
            out.append(Violation("job_outcome", f"{experiment_id} is COMPLETED but SLURM holds {completed} COMPLETED "
                                 f"jobs for its task {task} (jobs: {listed})", experiment_id))
    return out


def staging_violations(ev: StagingEvidence) -> list[Violation]:
    out = [Violation("journal_unreadable", f"journal line {line!r}") for line in ev.unreadable]
    by_target: dict[Place, list[Placement]] = defaultdict(list)
    for p in ev.placements:
        by_target[(p.side, p.target)].append(p)
    for place, placements in sorted(by_target.items()):
        now = ev.inodes.get(place)
        for p in placements:
            if p.inode != now and ev.inodes.get((p.side, p.part)) != p.inode:
                others = "; ".join(f"inode {q.inode} by {q.experiment_id}/{q.task} attempt {q.attempt}"
                                   for q in placements)
                out.append(Violation("staged_twice", f"{place[0]} {place[1]}: the file of {p.experiment_id}/{p.task} "
                                     f"attempt {p.attempt} (inode {p.inode}) was placed and then replaced (now "
                                     f"inode {now}; placements: {others})", p.experiment_id))
    for place, experiment_id in sorted(ev.expected.items()):
        now = ev.inodes.get(place)
        if now is None:
            out.append(Violation("staged_unjournaled", f"{place[0]} {place[1]} is missing", experiment_id))
        elif all(p.inode != now for p in by_target.get(place, [])):
            out.append(Violation("staged_unjournaled", f"{place[0]} {place[1]} holds inode {now}, which no journaled "
                                 "placement put there", experiment_id))
    return out


@dataclass
class HpcReport:
    """What :func:`evaluate_hpc` found, with the counters a chaos report shows."""

    violations: list[Violation] = field(default_factory=list)
    tasks: int = 0                                        # slurm_submit tasks checked
    jobs: int = 0                                         # jobs of those tasks (squeue or sacct)
    jobs_accounted: int = 0                               # of those, the ones sacct lists
    jobs_per_task: dict[int, int] = field(default_factory=dict)  # jobs -> how many tasks have that many
    job_states: dict[str, int] = field(default_factory=dict)
    adopted: int = 0                                      # tasks whose job an earlier attempt than the winner submitted
    placements: int = 0                                   # journal lines
    targets: int = 0                                      # distinct targets journaled
    not_placed: int = 0                                   # journaled, its temporary file still there
    expected_targets: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_kind(self) -> dict[str, int]:
        return dict(Counter(v.kind for v in self.violations))

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "tasks": self.tasks, "jobs": self.jobs, "jobs_accounted": self.jobs_accounted,
                "jobs_per_task": {str(k): v for k, v in sorted(self.jobs_per_task.items())},
                "job_states": dict(sorted(self.job_states.items())), "adopted": self.adopted,
                "placements": self.placements,
                "targets": self.targets, "not_placed": self.not_placed, "expected_targets": self.expected_targets,
                "violations_by_kind": self.by_kind(), "violations": [asdict(v) for v in self.violations]}

    def to_markdown(self, max_shown: int = 30) -> str:
        lines = [f"## HPC check: {'OK' if self.ok else f'{len(self.violations)} violation(s)'}", "",
                 "| counter | value |", "| --- | --- |",
                 f"| slurm_submit tasks / their jobs (in sacct) | {self.tasks} / {self.jobs} ({self.jobs_accounted}) |",
                 "| jobs per task | " + (", ".join(f"{n} job(s): {c} task(s)"
                                                    for n, c in sorted(self.jobs_per_task.items())) or "-") + " |",
                 "| job states | " + (", ".join(f"{s} {n}" for s, n in sorted(self.job_states.items())) or "-") + " |",
                 f"| tasks whose job a lost earlier attempt submitted (adopted) | {self.adopted} |",
                 f"| staging placements journaled / targets / interrupted before the rename | {self.placements} / "
                 f"{self.targets} / {self.not_placed} |",
                 f"| targets the completed experiments must have | {self.expected_targets} |", ""]
        if self.ok:
            lines.append("Every job and staging invariant holds.")
        else:
            lines += ["| invariant | kind | violations |", "| --- | --- | --- |"]
            lines += [f"| {HPC_KINDS.get(k, '?')} | `{k}` | {n} |" for k, n in sorted(self.by_kind().items())]
            lines.append("")
            lines += [f"- `{v.kind}` {v.detail}" for v in self.violations[:max_shown]]
            if len(self.violations) > max_shown:
                lines.append(f"- {len(self.violations) - max_shown} more not shown")
        return "\n".join(lines) + "\n"


def evaluate_hpc(jobs: JobEvidence, staging: StagingEvidence) -> HpcReport:
    """Every job and staging rule over the evidence, with its counters (pure)."""
    per_task = jobs.by_task()
    mine = [j for js in per_task.values() for j in js]
    targets = {(p.side, p.target) for p in staging.placements}
    return HpcReport(
        violations=job_violations(jobs) + staging_violations(staging), tasks=len(per_task), jobs=len(mine),
        jobs_accounted=sum(1 for j in mine if j.accounted),
        jobs_per_task=dict(Counter(len(js) for js in per_task.values())),
        job_states=dict(Counter(j.state for j in mine)),
        adopted=sum(1 for key, js in per_task.items() if key in jobs.succeeded and any(
            j.state == slurm.SUCCESS_STATE and (j.attempt or 0) < jobs.succeeded[key] for j in js)),
        placements=len(staging.placements), targets=len(targets),
        not_placed=sum(1 for p in staging.placements if staging.inodes.get((p.side, p.part)) == p.inode),
        expected_targets=len(staging.expected))
