"""SLURM without a server: job names, job scripts, squeue/sacct parsing, the adoption decision and job outcomes.

Everything here is pure: the HPC executors (``node/worker/hpc_executors.py``) run the commands over SSH and hand
their output to these functions::

    name = job_name("exp-1", "submit", 2)             # "haorch.exp-1.submit.a2"
    attempt_of(name, task_prefix("exp-1", "submit"))  # 2
    jobs = merge_jobs(parse_squeue(squeue_out), parse_sacct(sacct_out))
    decision = decide(jobs, task_prefix("exp-1", "submit"), attempt=2)   # adopt, submit, or fail
    ok, reason = outcome(jobs[0])                     # (False, "job 123 ended TIMEOUT (exit 0:15)")

A job name is ``haorch.<experiment>.<task>.a<attempt>``: each id as it is when it is 1-32 characters of
``[A-Za-z0-9_-]``, otherwise a readable part and a hash (``exp_1+3fa9c2d1e0``), so that the name of any task is
distinct from any other's, the experiment's jobs share one prefix (cancel finds them by it) and the attempt is
read back from the end. SLURM keeps names up to 255 characters in its accounting database; these stay under 90.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

NAME_ROOT = "haorch"
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_READABLE = re.compile(r"[^A-Za-z0-9_-]")

SUCCESS_STATE = "COMPLETED"
#: terminal states that mean the job failed (a requeued PREEMPTED job shows PENDING again, not this)
FAILURE_STATES = frozenset({"FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                            "DEADLINE", "PREEMPTED", "REVOKED"})
TERMINAL_STATES = FAILURE_STATES | {SUCCESS_STATE}

#: squeue's ``-O`` fields with a ``|`` after each (the suffix syntax of ``-O``); exit_code is a wait status
SQUEUE_FORMAT = "JobID:|,ArrayJobID:|,ArrayTaskID:|,State:|,exit_code:|,TimeUsed:|,Reason:|,Name:|"
#: sacct's ``-o`` fields (with ``-P``: separated by ``|``)
SACCT_FORMAT = "JobID,JobIDRaw,State,ExitCode,Elapsed,Reason,JobName"
#: how many earlier attempts' job names a lookup asks about
LOOKUP_ATTEMPTS = 100
#: how far back a lookup asks sacct (its default is since midnight); an older job is not adopted
LOOKUP_SINCE = "now-365days"

_OPTION_PATTERNS: dict[str, tuple[str, re.Pattern[str]]] = {
    # param: (sbatch option, what a value must match; SLURM itself judges the meaning)
    "partition": ("--partition", re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*")),
    "time": ("--time", re.compile(r"[A-Za-z0-9:-]+")),
    "array": ("--array", re.compile(r"[0-9][0-9,:%-]*")),
}
_COUNT_OPTIONS = {"ntasks": "--ntasks", "cpus_per_task": "--cpus-per-task", "nodes": "--nodes"}
MAX_COUNT = 1_000_000
_PATH_FORBIDDEN = re.compile(r"[\s\"'\\%`$]|[^\x20-\x7e]")


class SlurmInputError(ValueError):
    """A param that cannot become a job: the message is one line naming it."""


def id_token(value: str) -> str:
    """``value`` itself if it is 1-32 characters of ``[A-Za-z0-9_-]``, else ``<readable>+<10 hex of sha256>``."""
    if _SAFE_ID.fullmatch(value):
        return value
    readable = _READABLE.sub("_", value)[:20]
    return f"{readable}+{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"


def experiment_prefix(experiment_id: str) -> str:
    """The start of the name of every job of the experiment."""
    return f"{NAME_ROOT}.{id_token(experiment_id)}."


def task_prefix(experiment_id: str, task: str) -> str:
    """The start of the name of every job of one task, whatever the attempt."""
    return f"{experiment_prefix(experiment_id)}{id_token(task)}.a"


def job_name(experiment_id: str, task: str, attempt: int) -> str:
    """The name of the job that ``attempt`` of the task submits."""
    return f"{task_prefix(experiment_id, task)}{attempt}"


def attempt_of(name: str, prefix: str) -> int | None:
    """The attempt a job name of the task with ``prefix`` carries; None for another task's name."""
    if not name.startswith(prefix):
        return None
    tail = name[len(prefix):]
    return int(tail) if tail.isdigit() and not tail.startswith("0") else None


def lookup_names(experiment_id: str, task: str, attempt: int) -> list[str]:
    """The job names of this attempt and the :data:`LOOKUP_ATTEMPTS` - 1 before it."""
    return [job_name(experiment_id, task, a) for a in range(max(1, attempt - LOOKUP_ATTEMPTS + 1), attempt + 1)]


@dataclass(frozen=True)
class JobOptions:
    """The ``#SBATCH`` options of a job (None: the site's default)."""

    partition: str | None = None
    time: str | None = None
    array: str | None = None
    ntasks: int | None = None
    cpus_per_task: int | None = None
    nodes: int | None = None

    def directives(self) -> list[str]:
        """``--option=value`` for each option set, in a fixed order."""
        out = []
        for param, (option, _) in _OPTION_PATTERNS.items():
            value = getattr(self, param)
            if value is not None:
                out.append(f"{option}={value}")
        for param, option in _COUNT_OPTIONS.items():
            value = getattr(self, param)
            if value is not None:
                out.append(f"{option}={value}")
        return out


def parse_options(params: dict[str, object], default_partition: str = "") -> JobOptions:
    """The job options among ``params``; :class:`SlurmInputError` for a value that is not one (a line break in
    any of them would add a directive of its own, so each must match its pattern)."""
    values: dict[str, object] = {}
    for param, (_, pattern) in _OPTION_PATTERNS.items():
        raw = params.get(param, default_partition if param == "partition" else None)
        if raw is None or raw == "":
            continue
        text = str(raw) if isinstance(raw, (str, int)) and not isinstance(raw, bool) else None
        if text is None or "\n" in text or "\r" in text:
            raise SlurmInputError(f"param {param!r} must be one line of text, got {raw!r:.80}")
        if not pattern.fullmatch(text):
            raise SlurmInputError(f"param {param!r} has characters an sbatch {_OPTION_PATTERNS[param][0]} value "
                                  f"cannot have: {text!r:.80}")
        values[param] = text
    for param in _COUNT_OPTIONS:
        raw = params.get(param)
        if raw is None:
            continue
        try:
            count = int(str(raw)) if not isinstance(raw, (bool, float)) else None
        except ValueError:
            count = None
        if count is None or not 1 <= count <= MAX_COUNT:
            raise SlurmInputError(f"param {param!r} must be an integer from 1 to {MAX_COUNT}, got {raw!r:.80}")
        values[param] = count
    return JobOptions(**values)  # type: ignore[arg-type]


def array_size(spec: str | None) -> int:
    """How many tasks an ``--array`` spec (``0-9``, ``1,3,5-7``, ``0-15:4%2``) makes; 0 without one."""
    if not spec:
        return 0
    indexes: set[int] = set()
    for part in spec.split("%", 1)[0].split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if match is None:
            raise SlurmInputError(f"param 'array' is not an sbatch array spec: {spec!r:.80}")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        step = int(match.group(3) or 1)
        if last < first or step < 1 or last - first > 10 * MAX_COUNT:
            raise SlurmInputError(f"param 'array' has an empty or oversized range: {part!r}")
        indexes.update(range(first, last + 1, step))
    return len(indexes)


def check_remote_path(path: str, what: str) -> str:
    """``path`` if it is an absolute path that fits in a directive unquoted; else :class:`SlurmInputError`."""
    if not path.startswith("/") or _PATH_FORBIDDEN.search(path) or "/../" in f"{path}/":
        raise SlurmInputError(f"{what} must be an absolute path of printable characters without spaces, quotes, "
                              f"'%', '$', '`', backslashes or '..', got {path!r:.120}")
    return path


def render_script(body: str, name: str, workdir: str, options: JobOptions) -> str:
    """The job script: the body's ``#!`` line (default ``#!/bin/bash``), then the ``#SBATCH`` directives (name,
    working directory, output file in it, options), then the body. ``workdir`` must pass
    :func:`check_remote_path`; the executor also gives ``--job-name`` on the command line, which wins over a
    ``#SBATCH --job-name`` of the body."""
    check_remote_path(workdir, "the job's workdir")
    if not body.strip():
        raise SlurmInputError("param 'script' is empty")
    if "\0" in body:
        raise SlurmInputError("param 'script' contains a NUL character")
    shebang = "#!/bin/bash"
    if body.startswith("#!"):
        shebang, _, body = body.partition("\n")
    output = "slurm-%A_%a.out" if options.array else "slurm-%j.out"
    directives = [f"--job-name={name}", f"--chdir={workdir}", f"--output={workdir}/{output}",
                  *options.directives()]
    lines = [shebang, *(f"#SBATCH {d}" for d in directives), body]
    return "\n".join(lines).rstrip("\n") + "\n"


def parse_sbatch(stdout: str) -> str:
    """The job id ``sbatch --parsable`` printed (``123`` or ``123;cluster``); :class:`ValueError` otherwise."""
    line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = line.split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise ValueError(f"sbatch printed no job id: {stdout.strip()[:120]!r}")
    return job_id


@dataclass(frozen=True)
class JobRow:
    """One line of squeue or sacct: a job, or one element of an array job (``element`` set)."""

    job_id: str  # the job as sbatch answered it (an array's master id)
    element: str | None  # array task index ("3"), a pending range ("[4-9]"), or None
    state: str  # first word of the state ("CANCELLED by 0" -> "CANCELLED")
    exit_code: str  # "exit:signal", as sacct shows it
    elapsed: str
    reason: str
    name: str

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class Job:
    """A job with its rows (one, or one per array element) from a single source."""

    job_id: str
    name: str
    rows: tuple[JobRow, ...] = field(default_factory=tuple)

    @property
    def is_array(self) -> bool:
        return any(row.element is not None for row in self.rows)

    @property
    def terminal(self) -> bool:
        return bool(self.rows) and all(row.terminal for row in self.rows)

    @property
    def succeeded(self) -> bool:
        return self.terminal and all(row.state == SUCCESS_STATE for row in self.rows)

    @property
    def state(self) -> str:
        """COMPLETED when every row is; else the first failure of a terminal job; else the most advanced live
        state (RUNNING before PENDING)."""
        if self.succeeded:
            return SUCCESS_STATE
        if self.terminal:
            return next(row.state for row in self.rows if row.state != SUCCESS_STATE)
        live = [row.state for row in self.rows if not row.terminal]
        return "RUNNING" if "RUNNING" in live else live[0]

    def counts(self) -> dict[str, int]:
        """How many rows are in each state (array elements; a pending range row counts once)."""
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.state] = out.get(row.state, 0) + 1
        return dict(sorted(out.items()))


def wait_status_exit_code(raw: str) -> str:
    """squeue's ``exit_code`` (a wait status, ``768``) as sacct writes it (``3:0``); other text unchanged."""
    if not raw.isdigit():
        return raw
    status = int(raw)
    return f"{(status >> 8) & 0xFF}:{status & 0x7F}"


def parse_squeue(text: str) -> list[JobRow]:
    """Rows of ``squeue -h -r -O`` :data:`SQUEUE_FORMAT`; lines that are not such a row are skipped."""
    rows = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 8 or not parts[0].isdigit():
            continue
        job_id, array_job, array_task, state, exit_code, elapsed, reason = parts[:7]
        name = "|".join(parts[7:]).rstrip("|").strip()
        is_element = array_task not in ("N/A", "")
        rows.append(JobRow(job_id=array_job if is_element and array_job.isdigit() else job_id,
                           element=array_task if is_element else None, state=_state(state),
                           exit_code=wait_status_exit_code(exit_code), elapsed=elapsed, reason=reason, name=name))
    return rows


def parse_sacct(text: str) -> list[JobRow]:
    """Rows of ``sacct -n -P -X -o`` :data:`SACCT_FORMAT` (heterogeneous job components are skipped)."""
    rows = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 7:
            continue
        job, _raw, state, exit_code, elapsed, reason = parts[:6]
        name = "|".join(parts[6:])
        master, _, element = job.partition("_")
        if not master.isdigit():
            continue
        rows.append(JobRow(job_id=master, element=element or None, state=_state(state), exit_code=exit_code,
                           elapsed=elapsed, reason=reason, name=name))
    return rows


def _state(raw: str) -> str:
    words = raw.split()
    return words[0].rstrip("+") if words else "UNKNOWN"


def group_jobs(rows: list[JobRow]) -> dict[str, Job]:
    """Rows gathered by job id (array elements ordered by index), in order of job id."""
    by_id: dict[str, list[JobRow]] = {}
    for row in rows:
        by_id.setdefault(row.job_id, []).append(row)
    jobs = {}
    for job_id in sorted(by_id, key=int):
        rows_of = sorted(by_id[job_id], key=lambda r: (len(r.element or ""), r.element or ""))
        jobs[job_id] = Job(job_id=job_id, name=rows_of[0].name, rows=tuple(rows_of))
    return jobs


def merge_jobs(squeue_rows: list[JobRow], sacct_rows: list[JobRow]) -> list[Job]:
    """The jobs seen by either command: squeue's view of the jobs slurmctld still holds (it is current, and it
    lists every array element at once), sacct's of the others (ended longer ago than MinJobAge)."""
    live = group_jobs(squeue_rows)
    accounted = group_jobs(sacct_rows)
    merged = {**accounted, **live}
    return [merged[job_id] for job_id in sorted(merged, key=int)]


@dataclass(frozen=True)
class Decision:
    """What a submit does: adopt ``adopt``, submit a new job (``submit``), or fail with ``failure``."""

    adopt: Job | None = None
    adopt_attempt: int | None = None
    submit: bool = False
    failure: str | None = None


def decide(jobs: list[Job], prefix: str, attempt: int) -> Decision:
    """The submit decision for ``attempt`` of the task whose job names start with ``prefix``, given the jobs found:

    - a job of any attempt that is queued, running or completed is adopted (the oldest, if a race made two);
    - else, a failed job of this very attempt fails the attempt (the attempt ran before and its job failed: only
      a retry, which the template may allow, submits a new one);
    - else (no job, or only earlier attempts' failed jobs) a new job is submitted.
    """
    mine = [(job, a) for job in jobs if (a := attempt_of(job.name, prefix)) is not None and a <= attempt]
    usable = [(job, a) for job, a in mine if not job.terminal or job.succeeded]
    if usable:
        job, owner = min(usable, key=lambda pair: int(pair[0].job_id))
        return Decision(adopt=job, adopt_attempt=owner)
    own_failed = [job for job, a in mine if a == attempt]
    if own_failed:
        _, reason = outcome(own_failed[-1])
        return Decision(failure=f"{reason}; this attempt submitted it before (a retry submits a new job)")
    return Decision(submit=True)


def outcome(job: Job) -> tuple[bool, str]:
    """(success, one-line reason) of a terminal job: ``job 123 ended TIMEOUT (exit 0:15)``; for an array, the
    count of failed elements and the first of them."""
    if not job.terminal:
        return False, f"job {job.job_id} is {job.state}"
    if not job.is_array:
        row = job.rows[0]
        return row.state == SUCCESS_STATE, f"job {job.job_id} ended {row.state} ({_detail(row)})"
    failed = [row for row in job.rows if row.state != SUCCESS_STATE]
    if not failed:
        return True, f"job {job.job_id} ended COMPLETED ({len(job.rows)} array tasks)"
    first = failed[0]
    return False, (f"job {job.job_id} ended {first.state}: {len(failed)} of {len(job.rows)} array tasks failed, "
                   f"first {job.job_id}_{first.element} {first.state} ({_detail(first)})")


def _detail(row: JobRow) -> str:
    reason = f", {row.reason}" if row.reason and row.reason not in ("None", "NonZeroExitCode") else ""
    return f"exit {row.exit_code}{reason}"


def status_line(job: Job) -> str:
    """A live job's state for a waiting task: ``job 123 RUNNING`` or ``job 123 RUNNING (3 of 10 array tasks
    ended)``."""
    if not job.is_array:
        return f"job {job.job_id} {job.state}"
    ended = sum(1 for row in job.rows if row.terminal)
    return f"job {job.job_id} {job.state} ({ended} of {len(job.rows)} array tasks ended)"
