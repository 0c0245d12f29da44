"""Failpoints: a chaos fault freezes one process at a named point of its code, by creating a file.

    failpoints.hit(cfg, "node-2", "leader.before_publish")     # in the code: one os.path.exists while not armed
    failpoints.arm(cfg, "node-2", "leader.before_publish")     # in a chaos fault: node-2's next hit stops it

The file is ``<home>/failpoints/<node_id>/<name>``. A hit removes it (each arming fires once) and sends SIGSTOP
to its own process: every thread stops where it is, holding what it holds (locks, connections, a half-done
sequence of writes), until something sends SIGCONT. What happens then is what the fault is about; a process
that is never continued stays stopped (``chaos_tests.faults`` continues it in every fault's ``undo``, or kills it).

Code that knows only its haorch home, not its process's id (an executor running inside a worker), hits a failpoint
armed for its pid::

    failpoints.hit_own(ctx.home, "worker.after_sbatch")                  # in the executor
    failpoints.arm(cfg, failpoints.process_id(pid), "worker.after_sbatch")  # in a chaos fault that knows the pid
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from node.config import Config

ROOT = "failpoints"


def path(cfg: Config, node_id: str, name: str) -> Path:
    """The file that arms failpoint ``name`` of process ``node_id``."""
    return cfg.home / ROOT / node_id / name


def process_id(pid: int) -> str:
    """The id a failpoint is armed under for the process ``pid`` (see :func:`hit_own`)."""
    return f"pid-{pid}"


def hit(cfg: Config, node_id: str, name: str) -> None:
    """Stop this process (SIGSTOP) if failpoint ``name`` is armed for ``node_id``; otherwise return at once."""
    _hit(os.path.join(cfg.home, ROOT, node_id, name))


def hit_own(home: str | Path, name: str) -> None:
    """Stop this process if failpoint ``name`` is armed for its pid (:func:`process_id`) in ``home``; otherwise
    return at once (also without a home)."""
    if home:
        _hit(os.path.join(home, ROOT, process_id(os.getpid()), name))


def _hit(armed: str) -> None:
    if not os.path.exists(armed):
        return
    try:
        os.remove(armed)
    except FileNotFoundError:  # another thread of this process hit it first: that one stops us all
        return
    os.kill(os.getpid(), signal.SIGSTOP)


def arm(cfg: Config, node_id: str, name: str) -> Path:
    """Arm failpoint ``name`` of ``node_id`` (idempotent); returns the file."""
    armed = path(cfg, node_id, name)
    armed.parent.mkdir(parents=True, exist_ok=True)
    armed.touch()
    return armed


def disarm_all(cfg: Config) -> int:
    """Remove every arming of the state dir (what a crashed chaos run left); returns how many."""
    removed = 0
    for armed in sorted((cfg.home / ROOT).glob("*/*")):
        try:
            armed.unlink()
            removed += 1
        except FileNotFoundError:
            pass  # hit meanwhile
    return removed


def disarm(cfg: Config, node_id: str, name: str) -> bool:
    """Remove the arming of ``name`` for ``node_id``; True if it was armed (not hit yet)."""
    try:
        path(cfg, node_id, name).unlink()
        return True
    except FileNotFoundError:
        return False
