"""The executors a worker runs tasks with: a name -> function registry, one per name of ``KNOWN_EXECUTORS``.

An executor is ``fn(params, ctx) -> dict``: it returns the task's result (a JSON object) or raises
:class:`ExecutorFailure`, whose message becomes the response's ``error``. Params may arrive as strings (from
``haorch submit --param K=V``), so numbers are converted. Executors just run: the worker enforces timeouts::

    run = get_executor("sleep", shell_enabled=cfg.shell_executor_enabled)
    run({"ms": 20}, ExecutionContext("exp-1", "work_3", attempt=1, seed=0))   # {"slept_ms": 20}

Built-ins:

- ``noop``: returns ``{}``.
- ``sleep``: sleeps ``ms`` milliseconds (default 0), returns ``{"slept_ms": ms}``.
- ``fail``: fails attempts ``1..first_n``, and fails when a deterministic draw in [0, 1) is below
  ``probability``; with neither param, every attempt fails. The draw is sha256 of
  ``seed:experiment_id:task:attempt``, so a run with the same seed fails the same attempts on any worker.
- ``shell``: runs ``cmd`` and returns ``{"exit_code", "stdout_tail"}``; a non-zero exit fails the task. A list is
  run as argv; a string is split like a shell would and run directly, unless it uses shell syntax (pipes,
  redirections, ``$``, globs, ``~``, ``;``, ``&&``, newlines), then it runs under ``/bin/sh -c``. Off unless
  ``shell_executor_enabled = true``, because it runs anything a template says.
- ``wait_file``: a sensor: succeeds with ``{"path", "size"}`` once the absolute ``path`` exists; until then it raises
  :class:`NotYet` (re-checked every ``poll_s``, default 1 s, without holding a worker slot meanwhile).
- ``stage_in``, ``stage_out``, ``slurm_submit``, ``slurm_monitor``, ``slurm_cancel``: data and SLURM jobs on an HPC
  site over SSH (``node/worker/hpc_executors.py``); the undo of ``slurm_submit`` scancels the task's live jobs.
- ``mark``: evidence of exactly-once execution for chaos runs. Sleeps ``seconds`` (default 0), then creates the
  marker file ``<mark_dir>/<experiment_id>.<task>.<attempt>`` exclusively (``O_CREAT | O_EXCL``); if that attempt
  left its marker already, it creates ``<marker>.twice.<pid>.<time_ns>`` instead, and succeeds either way: the
  files count the executions, whatever the ledger says. ``mark_dir`` must be an absolute path of an existing
  directory under the worker's haorch home (``ExecutionContext.home``), so a template cannot make a worker write
  anywhere else. A worker killed during the sleep leaves no marker; one
  killed after it leaves a marker whose ledger row may have no end (a re-run then leaves a ``.twice`` file).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.model.executors import KNOWN_EXECUTORS

log = logging.getLogger(__name__)

STDOUT_TAIL_CHARS = 2000
_SHELL_SYNTAX = set("|&;<>()$`*?[]~\n")


@dataclass(frozen=True)
class ExecutionContext:
    """Which attempt of which task is running; ``seed`` makes random behaviour reproducible."""

    experiment_id: str
    task: str
    attempt: int
    seed: int
    home: str = ""  # the worker's haorch home (state dir); empty: none (``mark`` refuses to run)


class ExecutorFailure(Exception):
    """The task failed; the message (one line) is reported as the response's ``error``."""


class NotYet(Exception):
    """The task waits on something outside haorch (a SLURM job): check again in ``recheck_after_s`` seconds.

    The worker answers the attempt as *waiting* without ending it, and frees its slot; the leader dispatches the
    same attempt again when the re-check is due, until it ends or the task's ``timeout_s`` (counted from the
    attempt's first dispatch) has passed. The check must therefore be idempotent."""

    def __init__(self, recheck_after_s: float, status: str) -> None:
        super().__init__(status)
        self.recheck_after_s = recheck_after_s
        self.status = status


Executor = Callable[[dict[str, Any], ExecutionContext], dict[str, Any]]


def run_noop(params: dict[str, Any], ctx: ExecutionContext) -> dict[str, Any]:
    """Do nothing, successfully."""
    return {}


def run_sleep(params: dict[str, Any], ctx: ExecutionContext) -> dict[str, Any]:
    """Sleep ``params["ms"]`` milliseconds."""
    ms = _param(params, "ms", int, 0)
    if ms < 0:
        raise ExecutorFailure(f"param 'ms' must be >= 0, got {ms}")
    time.sleep(ms / 1000)
    return {"slept_ms": ms}


def run_fail(params: dict[str, Any], ctx: ExecutionContext) -> dict[str, Any]:
    """Fail the first ``first_n`` attempts and/or with a reproducible ``probability``."""
    first_n = _param(params, "first_n", int, None)
    probability = _param(params, "probability", float, None)
    if first_n is None and probability is None:
        raise ExecutorFailure(f"injected failure (attempt {ctx.attempt}, always)")
    if first_n is not None and ctx.attempt <= first_n:
        raise ExecutorFailure(f"injected failure (attempt {ctx.attempt} of the first {first_n})")
    if probability is not None:
        draw = failure_draw(ctx)
        if draw < probability:
            raise ExecutorFailure(f"injected failure (attempt {ctx.attempt}: draw {draw:.4f} < {probability})")
    return {}


def failure_draw(ctx: ExecutionContext) -> float:
    """A number in [0, 1) fixed by (seed, experiment, task, attempt), equal on every machine and run."""
    key = f"{ctx.seed}:{ctx.experiment_id}:{ctx.task}:{ctx.attempt}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64


def run_shell(params: dict[str, Any], ctx: ExecutionContext) -> dict[str, Any]:
    """Run ``params["cmd"]``; fail on a non-zero exit with the last line of stderr."""
    cmd = params.get("cmd")
    if isinstance(cmd, list) and cmd and all(isinstance(arg, str) for arg in cmd):
        argv = cmd
    elif isinstance(cmd, str) and cmd.strip():
        argv = ["/bin/sh", "-c", cmd] if _SHELL_SYNTAX & set(cmd) else shlex.split(cmd)
    else:
        raise ExecutorFailure("param 'cmd' must be a command string or a list of arguments")
    log.debug("%s/%s attempt %d runs %s", ctx.experiment_id, ctx.task, ctx.attempt, argv)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise ExecutorFailure(f"cannot run {argv[0]!r}: {exc.strerror}") from None
    if done.returncode != 0:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no stderr")
        raise ExecutorFailure(f"command exited with {done.returncode}: {last.strip()[:200]}")
    return {"exit_code": done.returncode, "stdout_tail": done.stdout[-STDOUT_TAIL_CHARS:]}


def run_mark(params: dict[str, Any], ctx: ExecutionContext) -> dict[str, Any]:
    """Sleep ``params["seconds"]``, then leave this attempt's marker file (or a ``.twice`` file) in ``mark_dir``."""
    seconds = _param(params, "seconds", float, 0.0)
    if not math.isfinite(seconds) or seconds < 0:
        raise ExecutorFailure(f"param 'seconds' must be a finite number >= 0, got {seconds}")
    directory = _mark_dir(params.get("mark_dir"), ctx.home)
    if os.sep in ctx.experiment_id:
        raise ExecutorFailure(f"experiment id {ctx.experiment_id!r} cannot name a marker file")
    time.sleep(seconds)
    marker = os.path.join(directory, f"{ctx.experiment_id}.{ctx.task}.{ctx.attempt}")
    twice = False
    try:
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            twice = True
            marker = f"{marker}.twice.{os.getpid()}.{time.time_ns()}"
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, f"pid={os.getpid()} at={time.time():.6f}\n".encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise ExecutorFailure(f"cannot create marker {marker!r}: {exc.strerror}") from None
    if twice:
        log.warning("%s/%s attempt %d executed again: %s", ctx.experiment_id, ctx.task, ctx.attempt, marker)
    return {"marker": os.path.basename(marker), "twice": twice, "slept_s": seconds}


def _mark_dir(raw: object, home: str) -> str:
    """``raw`` resolved (symlinks, ``..``) if it is an absolute path strictly under the worker's haorch home."""
    if not isinstance(raw, str) or not os.path.isabs(raw):
        raise ExecutorFailure(f"param 'mark_dir' must be an absolute path under the haorch home, got {raw!r:.200}")
    if not home:
        raise ExecutorFailure("this worker has no haorch home to keep markers under")
    home = os.path.realpath(home)
    real = os.path.realpath(raw)
    if real == home or os.path.commonpath([home, real]) != home:
        raise ExecutorFailure(f"param 'mark_dir' {raw!r:.200} is not under the haorch home {home}")
    return real


def run_wait_file(params: dict[str, Any], ctx: ExecutionContext) -> dict[str, Any]:
    """A sensor: succeed once the absolute ``path`` exists, checking every ``poll_s`` seconds (default 1) without
    holding a worker slot in between (:class:`NotYet`); the task's ``timeout_s`` bounds the wait."""
    path = params.get("path")
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ExecutorFailure(f"param 'path' must be an absolute path, got {path!r:.200}")
    poll_s = _param(params, "poll_s", float, 1.0)
    if not 0 < poll_s <= 3600:
        raise ExecutorFailure(f"param 'poll_s' must be within (0, 3600], got {poll_s}")
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise NotYet(poll_s, f"{path} does not exist yet") from None
    except OSError as exc:
        raise ExecutorFailure(f"cannot stat {path!r:.200}: {exc.strerror}") from None
    return {"path": path, "size": size}


def _hpc(name: str) -> Any:
    """The function ``name`` of ``node/worker/hpc_executors.py``, imported at its first call: that module imports
    this one (and paramiko, which a worker without HPC tasks never loads)."""

    def run(params: dict[str, Any], ctx: ExecutionContext) -> Any:
        from node.worker import hpc_executors

        return getattr(hpc_executors, name)(params, ctx)

    run.__name__ = name
    return run


#: undo functions of the executors in ``UNDO_EXECUTORS`` (same keys): ``undo(params, ctx)`` reverses what the task
#: may have started outside haorch, for any of its attempts; it must be idempotent (a redelivery runs it again)
UNDOS: dict[str, Callable[[dict[str, Any], ExecutionContext], None]] = {
    "slurm_submit": _hpc("undo_slurm_submit")}

EXECUTORS: dict[str, Executor] = {"noop": run_noop, "sleep": run_sleep, "fail": run_fail, "shell": run_shell,
                                  "mark": run_mark, "wait_file": run_wait_file, "stage_in": _hpc("run_stage_in"),
                                  "stage_out": _hpc("run_stage_out"), "slurm_submit": _hpc("run_slurm_submit"),
                                  "slurm_monitor": _hpc("run_slurm_monitor"), "slurm_cancel": _hpc("run_slurm_cancel")}


def get_executor(name: str, shell_enabled: bool) -> Executor:
    """The executor called ``name``; :class:`ExecutorFailure` if it is unknown or disabled here."""
    if name not in EXECUTORS:
        raise ExecutorFailure(f"unknown executor {name!r} (known: {', '.join(KNOWN_EXECUTORS)})")
    if name == "shell" and not shell_enabled:
        raise ExecutorFailure("shell executor is disabled; set shell_executor_enabled = true in haorch.toml")
    return EXECUTORS[name]


def _param(params: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """``params[key]`` as ``kind`` (strings from the CLI are converted), or ``default`` if absent."""
    value = params.get(key, default)
    if value is default:
        return value
    if not isinstance(value, bool):
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    raise ExecutorFailure(f"param {key!r} must be {kind.__name__}, got {value!r}")
