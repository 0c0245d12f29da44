"""What an HPC site recorded, read for the job and staging rules of :mod:`node.verify.hpc` (read only: a crash at
any step changes nothing):

    jobs = read_jobs(cfg, ids, ("submit",), since=started)         # sacct + squeue over the site's SSH pool
    staging = read_staging(cfg, site_journal, local_journal, expected)
    report = evaluate_hpc(jobs, staging)

Jobs: every job squeue lists (``-t all``: slurmctld still holds it) and every job sacct lists since ``since``,
merged as the submit executor merges them (squeue's view of a job it holds, sacct's of the others). SLURM's
accounting lags the controller by a moment (an array job first shows one row; an end record arrives after the
job ended), so the read is repeated (bounded) until sacct lists every job of the checked tasks, ended, with the
state and element count squeue shows. The experiments' states come from MariaDB.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterable
from pathlib import Path

from pymysql.cursors import Cursor

from node.config import Config
from node.hpc import slurm
from node.hpc.siteinfo import DEFAULT_SITE, SiteInfo, load_sites, site_named
from node.hpc.ssh import POOL
from node.model.states import TaskStatus
from node.stores.records import Records
from node.verify.hpc import JobEvidence, Key, Place, SiteJob, StagingEvidence, owner, parse_journal, task_prefixes

SETTLE_S = 60.0         # bound on waiting for the accounting to catch up with the controller
COMMAND_TIMEOUT_S = 120.0
MAX_ARGS_CHARS = 100_000
LOOKBACK_S = 120.0      # sacct's window starts this long before ``since``


class SiteReadError(RuntimeError):
    """The site could not be read (one line)."""


def _site(cfg: Config, name: str) -> SiteInfo:
    return site_named(load_sites(cfg.home), name)


def _run(cfg: Config, name: str, command: str) -> str:
    result = POOL.run(name, _site(cfg, name), command, COMMAND_TIMEOUT_S)
    if result.exit_code != 0:
        raise SiteReadError(f"{command.split()[0]} on site {name!r}: {result.last_error_line()}")
    return result.stdout


def succeeded_attempts(records: Records, tasks: list[Key]) -> dict[Key, int]:
    """The attempt of each task with a SUCCEEDED transition (the latest, if a repair wrote another)."""
    if not tasks:
        return {}

    def work(cur: Cursor) -> dict[Key, int]:
        cur.execute("SELECT experiment_id, task, MAX(attempt) FROM transitions WHERE to_state = %s AND "
                    "(experiment_id, task) IN (" + ",".join(["(%s,%s)"] * len(tasks)) + ") "
                    "GROUP BY experiment_id, task", [TaskStatus.SUCCEEDED, *[v for key in tasks for v in key]])
        return {(row[0], row[1]): int(row[2]) for row in cur.fetchall()}
    return records.transaction(work)


def site_jobs(cfg: Config, since: float, site_name: str = DEFAULT_SITE) -> tuple[list[slurm.Job], list[slurm.Job]]:
    """(squeue's jobs, sacct's jobs since ``since`` - LOOKBACK_S) of the site."""
    window = int(time.time() - since + LOOKBACK_S)
    queued = _run(cfg, site_name, f"squeue -h -r -t all -O {shlex.quote(slurm.SQUEUE_FORMAT)}")
    accounted = _run(cfg, site_name, f"sacct -n -P -X -S now-{window}seconds -o {slurm.SACCT_FORMAT}")
    return (list(slurm.group_jobs(slurm.parse_squeue(queued)).values()),
            list(slurm.group_jobs(slurm.parse_sacct(accounted)).values()))


def merged(queued: list[slurm.Job], accounted: list[slurm.Job]) -> list[SiteJob]:
    """Each job once: squeue's view when slurmctld holds it (current), else sacct's; ``accounted`` when sacct
    lists it."""
    in_sacct = {job.job_id for job in accounted}
    return [SiteJob(job.job_id, job.name, job.state, len(job.rows), job.job_id in in_sacct)
            for job in slurm.merge_jobs([row for job in queued for row in job.rows],
                                        [row for job in accounted for row in job.rows])]


def _settled(queued: list[slurm.Job], accounted: list[slurm.Job], prefixes: dict[str, Key]) -> bool:
    """sacct lists every job of the tasks of ``prefixes`` ended, agreeing with squeue on its state and element
    count."""
    books = {job.job_id: job for job in accounted}
    for job in queued + accounted:
        if owner(job.name, prefixes) is None:
            continue
        book = books.get(job.job_id)
        if book is None or not book.terminal or (book.state, len(book.rows)) != (job.state, len(job.rows)):
            return False
    return True


def read_jobs(cfg: Config, experiment_ids: list[str], submit_tasks: tuple[str, ...], since: float,
              site_name: str = DEFAULT_SITE, settle_s: float = SETTLE_S) -> JobEvidence:
    """The slurm_submit tasks of ``experiment_ids`` (each named in ``submit_tasks``) with their experiment's state,
    and the site's jobs once the accounting settled (or ``settle_s`` passed)."""
    records = Records(cfg)
    try:
        states = records.states(experiment_ids)
        tasks = {(e, t): states.get(e, "MISSING") for e in experiment_ids for t in submit_tasks}
        prefixes = task_prefixes(tasks)
        deadline = time.monotonic() + settle_s
        while True:
            queued, accounted = site_jobs(cfg, since, site_name)
            if _settled(queued, accounted, prefixes) or time.monotonic() > deadline:
                return JobEvidence(tasks, merged(queued, accounted), succeeded_attempts(records, list(tasks)))
            time.sleep(1.0)
    finally:
        records.close()


def _groups(paths: list[str]) -> Iterable[list[str]]:
    group: list[str] = []
    size = 0
    for path in paths:
        if group and size + len(path) + 3 > MAX_ARGS_CHARS:
            yield group
            group, size = [], 0
        group.append(path)
        size += len(path) + 3
    if group:
        yield group


def site_inodes(cfg: Config, paths: list[str], site_name: str = DEFAULT_SITE) -> dict[str, int | None]:
    """The inode at each of ``paths`` on the site (None: nothing there)."""
    out: dict[str, int | None] = {}
    for group in _groups(sorted(set(paths))):
        args = " ".join(shlex.quote(p) for p in group)
        text = _run(cfg, site_name, f"for f in {args}; do stat -c %i -- \"$f\" 2>/dev/null || echo -; done")
        answers = text.split()
        if len(answers) != len(group):
            raise SiteReadError(f"stat on site {site_name!r} answered {len(answers)} lines for {len(group)} paths")
        out.update({p: int(a) if a.isdigit() else None for p, a in zip(group, answers, strict=True)})
    return out


def local_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def read_staging(cfg: Config, site_journal: str, local_journal: Path, expected: dict[Place, str],
                 site_name: str = DEFAULT_SITE) -> StagingEvidence:
    """Both journals' placements, the inode now at every target and temporary file they name and at every
    expected target."""
    site_text = _run(cfg, site_name, f"if [ -f {shlex.quote(site_journal)} ]; then cat -- "
                                     f"{shlex.quote(site_journal)}; fi")
    on_site, bad_site = parse_journal(site_text, "site")
    try:
        local_text = local_journal.read_text()
    except FileNotFoundError:
        local_text = ""
    locally, bad_local = parse_journal(local_text, "local")
    placements = on_site + locally
    places = {(p.side, path) for p in placements for path in (p.target, p.part)} | set(expected)
    remote = site_inodes(cfg, [path for side, path in places if side == "site"], site_name)
    inodes: dict[Place, int | None] = {(side, path): remote[path] if side == "site" else local_inode(path)
                                        for side, path in places}
    return StagingEvidence(placements, inodes, dict(expected), bad_site + bad_local)
