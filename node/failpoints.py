"""Failpoints: a chaos fault freezes one process at a named point of its code, by creating a file.

    failpoints.hit(cfg, "node-2", "leader.before_publish")     # in the code: one os.path.exists while not armed
    failpoints.arm(cfg, "node-2", "leader.before_publish")     # in a chaos fault: node-2's next hit stops it

The file is ``<home>/failpoints/<node_id>/<name>``. A hit removes it (each arming fires once) and sends SIGSTOP
to its own process: every thread stops where it is, holding what it holds (locks, connections, a half-done
sequence of writes), until something sends SIGCONT. What happens then is what the fault is about; a process
that is never continued stays stopped (``chaos_tests.faults`` continues it in every fault's ``undo``).
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


def hit(cfg: Config, node_id: str, name: str) -> None:
    """Stop this process (SIGSTOP) if failpoint ``name`` is armed for ``node_id``; otherwise return at once."""
    armed = os.path.join(cfg.home, ROOT, node_id, name)
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
