"""The HPC executors: stage data to and from a site over SFTP, submit SLURM jobs, wait for them, cancel them.

Every one names its site with the param ``site`` (default ``local``, see ``node/hpc/siteinfo.py``) and talks to it
over the worker's pooled SSH connection (``node/hpc/ssh.py``). A site that cannot be reached or used fails the
task with one line (``site 'local' (127.0.0.1:23280): authentication failed with key /k``).

``stage_in`` — params ``src`` (a file or directory on the worker's machine: relative to ``<home>/data``, or an
absolute path under it), ``dst`` (on the site: relative to the site's ``work_dir``, or absolute), ``overwrite``
(default false), ``max_bytes`` (default 1 GiB), ``max_files`` (default 10000). ``stage_out``: the same params with
``src`` on the site and ``dst`` under ``<home>/data``. Each file goes to a temporary name beside its target, its
sha256 is compared on both ends, then it is renamed into place: a crash at any step leaves each target as it was or
complete (and maybe a ``.<name>.haorch-<random>.part`` file beside it), never partial, and the task succeeds only
once every file is in place. A target that already holds the same bytes is not copied again (a re-run copies only
what is missing); one with other bytes fails the task before anything is copied, unless ``overwrite``. Transient
errors are retried per file; a file that still differs after three copies fails the task. With the param
``journal`` (a file on the destination side: on the site for ``stage_in``, under ``<home>/data`` for
``stage_out``), every placement is first appended to it as one line, ``<inode> <json>``: the inode of the
verified temporary file, which the rename carries into place, and ``{"v": 1, "target", "part", "sha256",
"experiment", "task", "attempt"}`` (:func:`journal_entry`). A placement is thus journaled before it happens: a
crash between the two leaves the line and the temporary file it names; a target staged twice leaves a line whose
inode is neither the target's nor its temporary file's (``node/verify/hpc.py`` checks this). Outputs::

    {"path": "/site/work/in", "files": 3, "bytes": 120, "copied": 3, "tree_sha256": "…",
     "sha256": {"a.txt": "…", …}, "sha256_complete": true}

(``sha256`` lists at most 100 files; ``tree_sha256`` covers them all: sha256 of ``<relpath>\\0<sha256>\\n`` sorted.)

``slurm_submit`` — params ``script`` (the job's body; a ``#!`` line of its own is kept), ``partition``, ``time``,
``array``, ``ntasks``, ``cpus_per_task``, ``nodes``, ``workdir`` (default ``<work_dir>/<experiment>/<task>``).
The job is named after experiment/task/attempt (``node/hpc/slurm.py``). Before submitting, the task's jobs of every
attempt are looked up (squeue and sacct); one that is queued, running or completed is adopted instead of
submitting (so a worker killed between sbatch and its answer causes no second job); a failed job of this same
attempt fails the attempt; otherwise the script is written to ``<workdir>/job-a<attempt>.sh`` and sbatch'ed.
Right after sbatch answered, the worker passes the failpoint ``worker.after_sbatch`` (``node/failpoints.py``,
armed by a chaos fault for the worker's pid: the worker stops there to be killed before it answers).
Outputs ``{"job_id": "123", "job_name", "adopted": bool, "attempt": the attempt that submitted it, "workdir",
"array_tasks": n (0: no array), "state"}``. A job SLURM rejects fails the task with sbatch's error line.

``slurm_monitor`` — params ``job_id``, ``poll_s`` (default 2), ``array_tasks`` (optional: the element count to
expect once only sacct knows the job). One check per call (squeue while slurmctld holds the job, then sacct):
a job that has not ended raises :class:`NotYet` ``(poll_s, "job 123 RUNNING")``, so the worker frees its slot and
the check runs again later, bounded by the task's timeout; a transient failure to reach the site or slurmctld
waits the same way. COMPLETED (every element of an array) gives ``{"job_id", "state", "exit_code", "elapsed",
"array_tasks", "states": {state: count}}``; any other terminal state fails the task with
``job 123 ended TIMEOUT (exit 0:15)``.

The undo of ``slurm_submit`` (:func:`undo_slurm_submit`, run when its experiment is cancelled) scancels the
task's live jobs of every attempt, found by their names.

``slurm_cancel`` — params ``job_ids`` (a list or a comma-separated string; default: every live job of this
experiment, found by its job names): scancels them, outputs ``{"cancelled": [...]}``. For an experiment's
cancellation outside a task, :func:`cancel_experiment_jobs` does the same from anywhere with the worker's home.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shlex
import stat
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import paramiko

from node import failpoints
from node.errors import UsageError
from node.hpc import slurm
from node.hpc.queue_snapshots import SNAPSHOTS
from node.hpc.siteinfo import DEFAULT_SITE, SiteInfo, load_sites, site_named
from node.hpc.ssh import POOL, RunResult, SftpSession, SshError, describe
from node.worker.executors import ExecutionContext, ExecutorFailure, NotYet

log = logging.getLogger(__name__)
T = TypeVar("T")

DATA_DIR = "data"  # the worker's data location: <home>/data
DEFAULT_MAX_BYTES = 1024**3
MAX_MAX_BYTES = 1024**4
DEFAULT_MAX_FILES = 10_000
UPLOAD_ROUNDS = 3
COMMAND_TIMEOUT_S = 60.0
HASH_TIMEOUT_S = 600.0  # sha256sum of up to max_bytes on the site
MAX_ARGS_CHARS = 100_000  # per remote command line (ARG_MAX is far above)
LISTED_DIGESTS = 100
MAX_SCRIPT_BYTES = 256 * 1024
DEFAULT_POLL_S = 2.0
JOURNAL_VERSION = 1
AFTER_SBATCH = "worker.after_sbatch"  # the failpoint a worker passes when sbatch has answered
_TRANSIENT_SLURM = ("Unable to contact slurm controller", "Socket timed out", "Connection refused",
                    "Zero Bytes were transmitted", "slurmdbd: Connection")


# --- sites and params ------------------------------------------------------------------------------------------

def _site(params: dict[str, Any], ctx: ExecutionContext) -> tuple[str, SiteInfo]:
    name = params.get("site", DEFAULT_SITE)
    if not isinstance(name, str) or not name:
        raise ExecutorFailure(f"param 'site' must be a site name, got {name!r:.80}")
    if not ctx.home:
        raise ExecutorFailure("this worker has no haorch home to read HPC sites from")
    try:
        return name, site_named(load_sites(Path(ctx.home)), name)
    except UsageError as exc:
        raise ExecutorFailure(str(exc)) from None


def _run(name: str, site: SiteInfo, command: str, timeout_s: float = COMMAND_TIMEOUT_S, stdin: bytes | None = None,
         idempotent: bool = True) -> RunResult:
    try:
        return POOL.run(name, site, command, timeout_s, stdin=stdin, idempotent=idempotent)
    except SshError as exc:
        raise ExecutorFailure(str(exc)) from None


def _int_param(params: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    raw = params.get(key, default)
    try:
        value = int(str(raw)) if not isinstance(raw, (bool, float)) else None
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ExecutorFailure(f"param {key!r} must be an integer from {low} to {high}, got {raw!r:.80}")
    return value


def _bool_param(params: dict[str, Any], key: str) -> bool:
    raw = params.get(key, False)
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
        return raw.lower() in ("true", "1", "yes")
    raise ExecutorFailure(f"param {key!r} must be true or false, got {raw!r:.80}")


def data_dir(home: str) -> Path:
    """The worker's data location: the only local place staging reads from or writes to."""
    return Path(home) / DATA_DIR


def _local_path(params: dict[str, Any], key: str, home: str) -> Path:
    """``params[key]`` resolved under the data location (relative to it, or absolute inside it), so that a
    template cannot ship the worker's keys to a site or write over its files."""
    raw = params.get(key)
    if not isinstance(raw, str) or not raw or "\0" in raw:
        raise ExecutorFailure(f"param {key!r} must be a path, got {raw!r:.120}")
    if not home:
        raise ExecutorFailure("this worker has no haorch home, so no data location to stage from or to")
    root = os.path.realpath(data_dir(home))
    real = os.path.realpath(os.path.join(root, raw))
    if real != root and os.path.commonpath([root, real]) != root:
        raise ExecutorFailure(f"param {key!r} {raw!r:.120} is not under the data location {root}")
    return Path(real)


def _remote_path(params: dict[str, Any], key: str, name: str, site: SiteInfo) -> str:
    """``params[key]`` as an absolute path on the site (a relative one is under the site's work_dir)."""
    raw = params.get(key)
    if not isinstance(raw, str) or not raw.strip() or any(c in raw for c in "\0\n\r\\"):
        raise ExecutorFailure(f"param {key!r} must be a one-line path without backslashes, got {raw!r:.120}")
    if ".." in raw.split("/"):
        raise ExecutorFailure(f"param {key!r} {raw!r:.120} must not contain '..'")
    if raw.startswith("/"):
        return posixpath.normpath(raw)
    if not site.work_dir:
        raise ExecutorFailure(f"{describe(name, site)} has no work_dir for the relative path {raw!r:.120}")
    return posixpath.normpath(posixpath.join(site.work_dir, raw))


def _check_name(rel: str, where: str) -> None:
    if any(c in rel for c in "\n\r\\"):
        raise ExecutorFailure(f"{where}: cannot stage a file whose name has a line break or backslash: {rel!r:.120}")


# --- staging ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _File:
    rel: str  # path under the staged directory ("" when a single file is staged)
    size: int


@dataclass(frozen=True)
class _Limits:
    max_bytes: int
    max_files: int

    def check(self, files: list[_File], where: str) -> None:
        if len(files) > self.max_files:
            raise ExecutorFailure(f"{where} holds {len(files)} files, more than max_files {self.max_files}")
        total = sum(f.size for f in files)
        if total > self.max_bytes:
            raise ExecutorFailure(f"{where} holds {total} bytes, more than max_bytes {self.max_bytes}")


def _limits(params: dict[str, Any]) -> _Limits:
    return _Limits(_int_param(params, "max_bytes", DEFAULT_MAX_BYTES, 0, MAX_MAX_BYTES),
                   _int_param(params, "max_files", DEFAULT_MAX_FILES, 1, 10 * DEFAULT_MAX_FILES))


def _local_tree(src: Path, what: str) -> tuple[bool, list[_File]]:
    """(is a directory, its regular files); symlinks and special files inside are refused."""
    try:
        top = src.lstat()
    except FileNotFoundError:
        raise ExecutorFailure(f"{what}: {src} does not exist") from None
    except OSError as exc:
        raise ExecutorFailure(f"{what}: cannot read {src}: {exc.strerror}") from None
    if stat.S_ISREG(top.st_mode):
        return False, [_File("", top.st_size)]
    if not stat.S_ISDIR(top.st_mode):
        raise ExecutorFailure(f"{what}: {src} is neither a regular file nor a directory")
    files = []
    for dirpath, dirnames, filenames in os.walk(src, onerror=_walk_error):
        for entry in sorted(dirnames + filenames):
            full = os.path.join(dirpath, entry)
            info = os.lstat(full)
            rel = os.path.relpath(full, src)
            _check_name(rel, what)
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a regular file"
                raise ExecutorFailure(f"{what}: {full} is {kind}; only regular files and directories are staged")
            files.append(_File(rel, info.st_size))
    return True, sorted(files, key=lambda f: f.rel)


def _walk_error(exc: OSError) -> None:
    raise ExecutorFailure(f"cannot read {exc.filename}: {exc.strerror}")


def _sha256_local(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _chunks(paths: list[str]) -> Iterable[list[str]]:
    """``paths`` in groups whose quoted length fits one command line."""
    group: list[str] = []
    size = 0
    for path in paths:
        quoted = len(shlex.quote(path)) + 1
        if group and size + quoted > MAX_ARGS_CHARS:
            yield group
            group, size = [], 0
        group.append(path)
        size += quoted
    if group:
        yield group


def _remote_digests(name: str, site: SiteInfo, paths: list[str]) -> dict[str, str]:
    """sha256 of each of ``paths`` that is a readable regular file on the site (absent ones are left out)."""
    digests: dict[str, str] = {}
    for group in _chunks(paths):
        args = " ".join(shlex.quote(p) for p in group)
        result = _run(name, site, f"command -v sha256sum >/dev/null || exit 127; "
                                  f"for f in {args}; do [ -f \"$f\" ] && sha256sum -- \"$f\"; done; true",
                      timeout_s=HASH_TIMEOUT_S)
        if result.exit_code != 0:
            why = "sha256sum is not installed" if result.exit_code == 127 else result.last_error_line()
            raise ExecutorFailure(f"cannot checksum files on {describe(name, site)}: {why}")
        for line in result.stdout.splitlines():
            digest, sep, path = line.partition("  ")
            if sep and len(digest) == 64:
                digests[path] = digest
    return digests


def _outputs(path: str, files: list[_File], digests: dict[str, str], copied: int, single_name: str) -> dict[str, Any]:
    named = {(f.rel or single_name): digests[f.rel] for f in files}
    tree = hashlib.sha256("".join(f"{rel}\0{d}\n" for rel, d in sorted(named.items())).encode()).hexdigest()
    listed: dict[str, str] = {}
    for rel, digest in sorted(named.items()):
        if len(listed) >= LISTED_DIGESTS or len(json.dumps(listed)) + len(rel) > 20_000:
            break
        listed[rel] = digest
    return {"path": path, "files": len(files), "bytes": sum(f.size for f in files), "copied": copied,
            "tree_sha256": tree, "sha256": listed, "sha256_complete": len(listed) == len(named)}


def _part_name(target: str) -> str:
    head, tail = posixpath.split(target)
    return posixpath.join(head, f".{tail}.haorch-{uuid.uuid4().hex[:12]}.part")


def _sftp_call(sftp: SftpSession, what: str, fn: Callable[[paramiko.SFTPClient], T]) -> T:
    try:
        return sftp.call(what, fn)
    except SshError as exc:
        raise ExecutorFailure(str(exc)) from None


def run_stage_in(params: dict[str, Any], ctx: ExecutionContext) -> dict[str, Any]:
    """Copy a local file or directory to the site; see the module docstring."""
    name, site = _site(params, ctx)
    src = _local_path(params, "src", ctx.home)
    dst = _remote_path(params, "dst", name, site)
    limits = _limits(params)
    overwrite = _bool_param(params, "overwrite")
    journal = _remote_path(params, "journal", name, site) if params.get("journal") not in (None, "") else None
    what = f"stage_in {src}"
    is_dir, files = _local_tree(src, what)
    limits.check(files, what)
    local = {f.rel: (src / f.rel if f.rel else src) for f in files}
    try:
        digests = {f.rel: _sha256_local(local[f.rel]) for f in files}
    except OSError as exc:
        raise ExecutorFailure(f"{what}: cannot read {exc.filename}: {exc.strerror}") from None
    targets = {f.rel: posixpath.join(dst, f.rel) if f.rel else dst for f in files}
    there = _remote_digests(name, site, list(targets.values()))
    conflicts = [f.rel for f in files if targets[f.rel] in there and there[targets[f.rel]] != digests[f.rel]]
    if conflicts and not overwrite:
        first = targets[conflicts[0]]
        raise ExecutorFailure(f"{what}: {first} on {describe(name, site)} exists with another sha256 "
                              f"({len(conflicts)} such file(s)); set overwrite: true to replace")
    pending = [f.rel for f in files if there.get(targets[f.rel]) != digests[f.rel]]
    dirs = sorted({posixpath.dirname(targets[rel]) for rel in pending} | ({dst} if is_dir else set()))
    for group in _chunks(dirs):
        made = _run(name, site, "mkdir -p -- " + " ".join(shlex.quote(d) for d in group))
        if made.exit_code != 0:
            raise ExecutorFailure(f"{what}: cannot create {group[0]} on {describe(name, site)}: "
                                  f"{made.last_error_line()}")
    copied = len(pending)
    sftp = SftpSession(POOL, name, site)
    try:
        for _ in range(UPLOAD_ROUNDS):
            if not pending:
                break
            parts = {rel: _part_name(targets[rel]) for rel in pending}
            for rel in pending:
                _sftp_call(sftp, f"upload of {local[rel]}", partial(_put, str(local[rel]), parts[rel]))
            got = _remote_digests(name, site, list(parts.values()))
            bad = [rel for rel in pending if got.get(parts[rel]) != digests[rel]]
            if journal is not None:
                _journal_on_site(name, site, journal, [(parts[rel], targets[rel], digests[rel])
                                                       for rel in pending if rel not in bad], ctx)
            for rel in pending:
                part, target, digest = parts[rel], targets[rel], digests[rel]
                if rel in bad:
                    _sftp_call(sftp, f"removal of {part}", partial(_remove_quietly, part))
                else:
                    _sftp_call(sftp, f"rename into {target}", partial(_rename_into, part, target, digest, name, site))
            if bad:
                log.warning("%s: %d file(s) arrived with another sha256 on %s; uploading again", what, len(bad),
                            describe(name, site))
            pending = bad
        if pending:
            rel = pending[0]
            raise ExecutorFailure(f"{what}: {targets[rel]} arrived on {describe(name, site)} with another sha256 "
                                  f"than {local[rel]} ({digests[rel][:12]}…) after {UPLOAD_ROUNDS} uploads")
    finally:
        sftp.close()
    return _outputs(dst, files, digests, copied, posixpath.basename(dst))


def journal_entry(inode: int, target: str, part: str, sha256: str, ctx: ExecutionContext) -> str:
    """One journal line (without its newline): ``<inode> <json>``; see the module docstring."""
    return f"{inode} {_journal_body(target, part, sha256, ctx)}"


def _journal_body(target: str, part: str, sha256: str, ctx: ExecutionContext) -> str:
    return json.dumps({"v": JOURNAL_VERSION, "target": target, "part": part, "sha256": sha256,
                       "experiment": ctx.experiment_id, "task": ctx.task, "attempt": ctx.attempt},
                      separators=(",", ":"))


def _journal_on_site(name: str, site: SiteInfo, journal: str, placements: list[tuple[str, str, str]],
                     ctx: ExecutionContext) -> None:
    """Append a line per (part, target, sha256) to ``journal`` on the site, each part's inode read there: one
    ``printf`` (one append) per line, so lines of concurrent writers do not interleave. A failure fails the task
    before anything is renamed."""
    if not placements:
        return
    steps = [f"i=$(stat -c %i -- {shlex.quote(part)}) && printf '%s %s\\n' \"$i\" "
             f"{shlex.quote(_journal_body(target, part, digest, ctx))}"
             for part, target, digest in placements]
    command = (f"mkdir -p -- {shlex.quote(posixpath.dirname(journal))} && {{ {' && '.join(steps)}; }} "
               f">> {shlex.quote(journal)}")
    result = _run(name, site, command, idempotent=False)
    if result.exit_code != 0:
        raise ExecutorFailure(f"cannot append to the journal {journal} on {describe(name, site)}: "
                              f"{result.last_error_line()}")


def _journal_locally(journal: Path, part: Path, target: Path, digest: str, ctx: ExecutionContext) -> None:
    """Append the placement of ``part`` into ``target`` to the local ``journal`` (one write, O_APPEND)."""
    line = journal_entry(os.stat(part).st_ino, str(target), str(part), digest, ctx) + "\n"
    journal.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _put(local: str, remote: str, client: paramiko.SFTPClient) -> None:
    client.put(local, remote, confirm=True)


def _remove_quietly(path: str, client: paramiko.SFTPClient) -> None:
    try:
        client.remove(path)
    except FileNotFoundError:
        pass


def _rename_into(part: str, target: str, digest: str, name: str, site: SiteInfo,
                 client: paramiko.SFTPClient) -> None:
    """posix-rename ``part`` over ``target``; a retry whose first try did rename (the answer was lost) finds the
    target in place and the part gone, which is success."""
    try:
        client.posix_rename(part, target)
    except FileNotFoundError:
        if _remote_digests(name, site, [target]).get(target) != digest:
            raise


def _remote_tree(name: str, site: SiteInfo, src: str, what: str) -> tuple[bool, list[_File]]:
    """(is a directory, its regular files) on the site; symlinks and special files inside are refused."""
    q = shlex.quote(src)
    result = _run(name, site,
                  f"if [ -d {q} ]; then echo DIR; cd {q} && find . -mindepth 1 ! -type d -printf '%y %s %P\\n'; "
                  f"elif [ -f {q} ]; then echo FILE; stat -c '%s' {q}; "
                  f"elif [ -e {q} ]; then echo OTHER; else echo MISSING; fi")
    lines = result.stdout.splitlines()
    kind = lines[0] if lines else ""
    if result.exit_code != 0 or kind not in ("DIR", "FILE", "OTHER", "MISSING"):
        raise ExecutorFailure(f"{what}: cannot list it on {describe(name, site)}: {result.last_error_line()}")
    if kind == "MISSING":
        raise ExecutorFailure(f"{what}: {src} does not exist on {describe(name, site)}")
    if kind == "OTHER":
        raise ExecutorFailure(f"{what}: {src} on {describe(name, site)} is neither a regular file nor a directory")
    if kind == "FILE":
        return False, [_File("", int(lines[1]))]
    files = []
    for line in lines[1:]:
        type_, size, rel = [*line.split(" ", 2), "", ""][:3]
        _check_name(rel, what)
        if type_ != "f" or not size.isdigit() or not rel:
            shown = "a symlink" if type_ == "l" else "not a regular file"
            raise ExecutorFailure(f"{what}: {posixpath.join(src, rel)} is {shown}; only regular files and "
                                  f"directories are staged")
        files.append(_File(rel, int(size)))
    return True, sorted(files, key=lambda f: f.rel)


def run_stage_out(params: dict[str, Any], ctx: ExecutionContext) -> dict[str, Any]:
    """Copy a file or directory from the site to the data location; see the module docstring."""
    name, site = _site(params, ctx)
    src = _remote_path(params, "src", name, site)
    dst = _local_path(params, "dst", ctx.home)
    limits = _limits(params)
    overwrite = _bool_param(params, "overwrite")
    journal = _local_path(params, "journal", ctx.home) if params.get("journal") not in (None, "") else None
    what = f"stage_out {src}"
    is_dir, files = _remote_tree(name, site, src, what)
    limits.check(files, what)
    sources = {f.rel: posixpath.join(src, f.rel) if f.rel else src for f in files}
    there = _remote_digests(name, site, list(sources.values()))
    missing = [f.rel for f in files if sources[f.rel] not in there]
    if missing:
        raise ExecutorFailure(f"{what}: {sources[missing[0]]} vanished or is unreadable on {describe(name, site)}")
    digests = {f.rel: there[sources[f.rel]] for f in files}
    targets = {f.rel: dst / f.rel if f.rel else dst for f in files}
    root = os.path.realpath(data_dir(ctx.home))
    pending = []
    for f in files:
        target = targets[f.rel]
        parent = os.path.realpath(target.parent)
        if os.path.commonpath([root, parent]) != root:
            raise ExecutorFailure(f"{what}: {target} would be written outside the data location {root}")
        if not target.exists():
            pending.append(f.rel)
            continue
        if not target.is_file() or target.is_symlink():
            raise ExecutorFailure(f"{what}: {target} exists and is not a regular file")
        if _sha256_local(target) != digests[f.rel]:
            if not overwrite:
                raise ExecutorFailure(f"{what}: {target} exists with another sha256; set overwrite: true to replace")
            pending.append(f.rel)
    if is_dir:
        dst.mkdir(parents=True, exist_ok=True)
    sftp = SftpSession(POOL, name, site)
    try:
        for rel in pending:
            targets[rel].parent.mkdir(parents=True, exist_ok=True)
            _download(sftp, sources[rel], targets[rel], digests[rel], limits.max_bytes, f"{what}: {sources[rel]}",
                      None if journal is None else partial(_journal_locally, journal, ctx=ctx))
    except OSError as exc:
        raise ExecutorFailure(f"{what}: cannot write {exc.filename}: {exc.strerror}") from None
    finally:
        sftp.close()
    return _outputs(str(dst), files, digests, len(pending), dst.name)


def _download(sftp: SftpSession, source: str, target: Path, digest: str, max_bytes: int, what: str,
              journal: Callable[[Path, Path, str], None] | None = None) -> None:
    """Fetch ``source`` into a part file beside ``target`` until its sha256 is ``digest`` (at most
    :data:`UPLOAD_ROUNDS` tries), then fsync it, journal it (``journal(part, target, digest)``, when given) and
    rename it into place."""
    for _ in range(UPLOAD_ROUNDS):
        part = target.parent / f".{target.name}.haorch-{uuid.uuid4().hex[:12]}.part"
        try:
            got = _sftp_call(sftp, f"download of {source}", partial(_fetch, source, part, max_bytes))
            if got == digest:
                if journal is not None:
                    journal(part, target, digest)
                os.replace(part, target)
                _fsync_dir(target.parent)
                return
            log.warning("%s arrived with another sha256; downloading again", what)
        finally:
            part.unlink(missing_ok=True)
    raise ExecutorFailure(f"{what} arrived with another sha256 than the site's ({digest[:12]}…) after "
                          f"{UPLOAD_ROUNDS} downloads")


def _fetch(source: str, part: Path, max_bytes: int, client: paramiko.SFTPClient) -> str:
    """Write ``source`` to ``part`` (created anew, fsynced) and return the sha256 of what was written."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, client.open(source, "rb") as remote:
        remote.prefetch()
        while chunk := remote.read(1024 * 1024):
            size += len(chunk)
            if size > max_bytes:
                raise ExecutorFailure(f"{source} grew past max_bytes {max_bytes} while it was copied")
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- SLURM -----------------------------------------------------------------------------------------------------

def _sections(stdout: str) -> list[tuple[str, int]]:
    """The output of ``cmd1 2>&1; echo "@@rc $?"; cmd2 2>&1; echo "@@rc $?"`` as [(output, exit code)]."""
    out: list[tuple[str, int]] = []
    lines: list[str] = []
    for line in stdout.splitlines():
        if line.startswith("@@rc "):
            code = line[5:].strip()
            out.append(("\n".join(lines), int(code) if code.isdigit() else -1))
            lines = []
        else:
            lines.append(line)
    return out


def _error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no error message"


def _lookup(name: str, site: SiteInfo, ctx: ExecutionContext) -> list[slurm.Job]:
    """This task's jobs of every attempt up to this one: squeue's view (jobs slurmctld holds) and sacct's."""
    names = shlex.quote(",".join(slurm.lookup_names(ctx.experiment_id, ctx.task, ctx.attempt)))
    result = _run(name, site,
                  f"squeue -h -r -t all --me --name={names} -O {shlex.quote(slurm.SQUEUE_FORMAT)} 2>&1; "
                  f"echo \"@@rc $?\"; sacct -n -P -X -S {slurm.LOOKUP_SINCE} --name={names} "
                  f"-o {slurm.SACCT_FORMAT} 2>&1; echo \"@@rc $?\"")
    sections = _sections(result.stdout)
    if len(sections) != 2:
        raise ExecutorFailure(f"job lookup on {describe(name, site)} failed: {result.last_error_line()}")
    (queued, queued_rc), (accounted, accounted_rc) = sections
    for command, (text, rc) in (("squeue", (queued, queued_rc)), ("sacct", (accounted, accounted_rc))):
        if rc != 0:  # without both views, a job of an earlier attempt could go unseen and be submitted twice
            raise ExecutorFailure(f"{command} failed on {describe(name, site)}: {_error_line(text)}")
    return slurm.merge_jobs(slurm.parse_squeue(queued), slurm.parse_sacct(accounted))


def _workdir(params: dict[str, Any], ctx: ExecutionContext, name: str, site: SiteInfo) -> str:
    if params.get("workdir") not in (None, ""):
        path = _remote_path(params, "workdir", name, site)
    elif site.work_dir:
        path = posixpath.join(site.work_dir, slurm.id_token(ctx.experiment_id), slurm.id_token(ctx.task))
    else:
        raise ExecutorFailure(f"{describe(name, site)} has no work_dir; give the param 'workdir'")
    try:
        return slurm.check_remote_path(path, "the job's workdir")
    except slurm.SlurmInputError as exc:
        raise ExecutorFailure(str(exc)) from None


def run_slurm_submit(params: dict[str, Any], ctx: ExecutionContext) -> dict[str, Any]:
    """Adopt this task's job of an earlier attempt, or submit one; see the module docstring.

    A crash before sbatch leaves nothing; a crash (or a lost connection) after it leaves a job that the next
    attempt's lookup adopts. A connection lost while sbatch ran fails this attempt without submitting again."""
    name, site = _site(params, ctx)
    script = params.get("script")
    if not isinstance(script, str) or len(script.encode("utf-8", "surrogatepass")) > MAX_SCRIPT_BYTES:
        raise ExecutorFailure(f"param 'script' must be the job's script text (at most {MAX_SCRIPT_BYTES} bytes)")
    workdir = _workdir(params, ctx, name, site)
    job_name = slurm.job_name(ctx.experiment_id, ctx.task, ctx.attempt)
    try:
        options = slurm.parse_options(params, site.partition)
        array_tasks = slurm.array_size(options.array)
        text = slurm.render_script(script, job_name, workdir, options)
    except slurm.SlurmInputError as exc:
        raise ExecutorFailure(str(exc)) from None
    prefix = slurm.task_prefix(ctx.experiment_id, ctx.task)
    decision = slurm.decide(_lookup(name, site, ctx), prefix, ctx.attempt)
    if decision.failure is not None:
        raise ExecutorFailure(decision.failure)
    if decision.adopt is not None:
        job = decision.adopt
        log.info("%s/%s attempt %d adopts job %s (%s) of attempt %s", ctx.experiment_id, ctx.task, ctx.attempt,
                 job.job_id, job.state, decision.adopt_attempt)
        return {"job_id": job.job_id, "job_name": job.name, "adopted": True, "attempt": decision.adopt_attempt,
                "workdir": workdir, "array_tasks": array_tasks or (len(job.rows) if job.is_array else 0),
                "state": job.state}
    path = posixpath.join(workdir, f"job-a{ctx.attempt}.sh")
    command = (f"mkdir -p -- {shlex.quote(workdir)} && cat > {shlex.quote(path)} && "
               f"sbatch --parsable --job-name={shlex.quote(job_name)} {shlex.quote(path)}")
    try:
        result = POOL.run(name, site, command, COMMAND_TIMEOUT_S, stdin=text.encode("utf-8", "surrogatepass"),
                          idempotent=False)
    except SshError as exc:
        raise ExecutorFailure(f"{exc}; sbatch may have run: the next attempt adopts its job if it did") from None
    if result.exit_code != 0:
        raise ExecutorFailure(f"{describe(name, site)} rejected the job: {result.last_error_line()}")
    failpoints.hit_own(ctx.home, AFTER_SBATCH)
    try:
        job_id = slurm.parse_sbatch(result.stdout)
    except ValueError as exc:
        raise ExecutorFailure(f"{describe(name, site)}: {exc}") from None
    return {"job_id": job_id, "job_name": job_name, "adopted": False, "attempt": ctx.attempt, "workdir": workdir,
            "array_tasks": array_tasks, "state": "SUBMITTED"}


def run_slurm_monitor(params: dict[str, Any], ctx: ExecutionContext) -> dict[str, Any]:
    """One check of the job: its outcome if it ended, else :class:`NotYet`; see the module docstring."""
    name, site = _site(params, ctx)
    job_id = str(params.get("job_id", "")).strip()
    if not job_id.isdigit():
        raise ExecutorFailure(f"param 'job_id' must be a SLURM job id (digits), got {params.get('job_id')!r:.80}")
    poll_s = params.get("poll_s", DEFAULT_POLL_S)
    try:
        poll_s = float(poll_s)
    except (TypeError, ValueError):
        raise ExecutorFailure(f"param 'poll_s' must be a number of seconds, got {poll_s!r:.80}") from None
    if not 0.1 <= poll_s <= 3600:
        raise ExecutorFailure(f"param 'poll_s' must be from 0.1 to 3600 seconds, got {poll_s}")
    expected = _int_param(params, "array_tasks", 0, 0, slurm.MAX_COUNT)
    job = _check_job(name, site, job_id, poll_s)
    if job is None:
        raise ExecutorFailure(f"job {job_id} is unknown to squeue and sacct on {describe(name, site)}")
    if not job.terminal or (job.is_array and expected and len(job.rows) < expected):
        raise NotYet(poll_s, slurm.status_line(job))
    ok, reason = slurm.outcome(job)
    if not ok:
        raise ExecutorFailure(reason)
    return {"job_id": job_id, "state": job.state, "exit_code": job.rows[0].exit_code,
            "elapsed": max((row.elapsed for row in job.rows), key=_elapsed_s),
            "array_tasks": len(job.rows) if job.is_array else 0, "states": job.counts()}


def _check_job(name: str, site: SiteInfo, job_id: str, poll_s: float) -> slurm.Job | None:
    """The job as squeue sees it (while slurmctld holds it), else as sacct does; None if neither knows it. A
    transient failure (site, slurmctld or slurmdbd unreachable) raises NotYet: the job runs on meanwhile, and the
    task's timeout bounds the wait. The worker's shared squeue snapshot answers first (``node/hpc/queue_snapshots``:
    one squeue per second for all of this worker's checks on the site)."""
    shared = SNAPSHOTS.job(site, job_id, partial(_query, name, site, job_id, poll_s))
    if shared is not None:
        return shared
    text, rc = _query(name, site, job_id, poll_s, f"squeue -h -r -t all -j {job_id} -O "
                                                  f"{shlex.quote(slurm.SQUEUE_FORMAT)}")
    jobs = slurm.group_jobs(slurm.parse_squeue(text))
    if job_id in jobs:
        return jobs[job_id]
    if rc != 0 and "Invalid job id" not in text:
        _query_failed("squeue", text, name, site, job_id, poll_s)
    return _sacct_job(name, site, job_id, poll_s)


def _sacct_job(name: str, site: SiteInfo, job_id: str, poll_s: float) -> slurm.Job | None:
    """The job as sacct sees it; None if it does not know it."""
    text, rc = _query(name, site, job_id, poll_s, f"sacct -n -P -X -j {job_id} -o {slurm.SACCT_FORMAT}")
    if rc != 0:
        _query_failed("sacct", text, name, site, job_id, poll_s)
    return slurm.group_jobs(slurm.parse_sacct(text)).get(job_id)


def _query(name: str, site: SiteInfo, job_id: str, poll_s: float, command: str) -> tuple[str, int]:
    """``command``'s output (stderr included) and exit code."""
    try:
        result = POOL.run(name, site, f"{command} 2>&1; echo \"@@rc $?\"", COMMAND_TIMEOUT_S)
    except SshError as exc:
        if exc.transient:
            raise NotYet(poll_s, f"job {job_id}: {exc}") from None
        raise ExecutorFailure(str(exc)) from None
    sections = _sections(result.stdout)
    return sections[0] if sections else (result.stdout + result.stderr, result.exit_code or -1)


def _query_failed(program: str, text: str, name: str, site: SiteInfo, job_id: str, poll_s: float) -> NoReturn:
    if any(marker in text for marker in _TRANSIENT_SLURM):
        raise NotYet(poll_s, f"job {job_id}: {program} failed: {_error_line(text)}")
    raise ExecutorFailure(f"{program} failed on {describe(name, site)}: {_error_line(text)}")


def _elapsed_s(text: str) -> int:
    """``[D-]HH:MM:SS`` or ``MM:SS`` in seconds (0 for anything else)."""
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts) or (days and not days.isdigit()):
        return 0
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


def cancel_jobs(home: Path, job_ids: list[str], site_name: str = DEFAULT_SITE) -> list[str]:
    """scancel ``job_ids`` on the site (already ended ones are ignored by SLURM); returns them. Raises
    ExecutorFailure (one line) when the site cannot be used or scancel fails."""
    bad = [j for j in job_ids if not str(j).isdigit()]
    if bad:
        raise ExecutorFailure(f"not SLURM job ids: {bad[:5]}")
    if not job_ids:
        return []
    try:
        site = site_named(load_sites(home), site_name)
    except UsageError as exc:
        raise ExecutorFailure(str(exc)) from None
    result = _run(site_name, site, "scancel -- " + " ".join(str(j) for j in job_ids))
    if result.exit_code != 0 and "Invalid job id" not in result.stderr:
        raise ExecutorFailure(f"scancel failed on {describe(site_name, site)}: {result.last_error_line()}")
    return [str(j) for j in job_ids]


def cancel_experiment_jobs(home: Path, experiment_id: str, site_name: str = DEFAULT_SITE) -> list[str]:
    """scancel every live job of the experiment on the site, found by its name (so also a job whose submit answer
    was lost when its worker died); returns their ids. What the leader calls when it cancels an experiment."""
    try:
        site = site_named(load_sites(home), site_name)
    except UsageError as exc:
        raise ExecutorFailure(str(exc)) from None
    return cancel_jobs(home, _live_jobs(site_name, site, slurm.experiment_prefix(experiment_id)), site_name)


def _live_jobs(name: str, site: SiteInfo, prefix: str) -> list[str]:
    result = _run(name, site, "squeue -h --me -O 'ArrayJobID:|,Name:|'")
    if result.exit_code != 0:
        raise ExecutorFailure(f"squeue failed on {describe(name, site)}: {result.last_error_line()}")
    ids = set()
    for line in result.stdout.splitlines():
        job_id, _, rest = line.partition("|")
        if job_id.strip().isdigit() and rest.rstrip("|").strip().startswith(prefix):
            ids.add(job_id.strip())
    return sorted(ids, key=int)


def undo_slurm_submit(params: dict[str, Any], ctx: ExecutionContext) -> None:
    """The undo of ``slurm_submit`` (its experiment was cancelled): scancel every live job of the task, of any
    attempt, found by name on the task's site. Idempotent: ended jobs are not listed."""
    name, site = _site(params, ctx)
    jobs = _live_jobs(name, site, slurm.task_prefix(ctx.experiment_id, ctx.task))
    if jobs:
        log.info("%s/%s: cancelling job(s) %s", ctx.experiment_id, ctx.task, ", ".join(jobs))
        cancel_jobs(Path(ctx.home), jobs, name)


def run_slurm_cancel(params: dict[str, Any], ctx: ExecutionContext) -> dict[str, Any]:
    """scancel ``job_ids``, or every live job of this experiment; see the module docstring."""
    name, _site_info = _site(params, ctx)
    raw = params.get("job_ids")
    if raw is None:
        return {"cancelled": cancel_experiment_jobs(Path(ctx.home), ctx.experiment_id, name)}
    ids = [str(j).strip() for j in (raw.split(",") if isinstance(raw, str) else raw if isinstance(raw, list)
                                    else [raw]) if str(j).strip()]
    return {"cancelled": cancel_jobs(Path(ctx.home), ids, name)}
