"""One cgroup (v2) per lab host: it holds every process started on the host, so a host crash is one write to
``cgroup.kill`` and nothing the host forked survives it.

cgroup v2 is mounted at ``/sys/fs/cgroup`` (unified hierarchy) or, on hybrid systems, at
``/sys/fs/cgroup/unified``; no controller is enabled, the groups only group. ``remove`` kills what is left and
deletes the directories.
"""

from __future__ import annotations

import time
from pathlib import Path

from node.errors import SetupError

ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


def cgroup_root() -> Path:
    for root in ROOTS:
        if (root / "cgroup.procs").exists() and (root / "cgroup.max.depth").exists():
            return root
    raise SetupError("lab: no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")


def group_path(prefix: str, host: str) -> Path:
    return cgroup_root() / f"{prefix}-lab" / host


def create(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def members(path: Path) -> list[int]:
    """PIDs in the cgroup (and its children): empty when it does not exist."""
    pids: list[int] = []
    if not path.is_dir():
        return pids
    for procs in path.rglob("cgroup.procs"):
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except OSError:
            continue
    return sorted(set(pids))


def kill(path: Path, timeout_s: float = 10.0) -> int:
    """SIGKILL every process of the cgroup at once; returns how many there were. Waits until it is empty."""
    found = len(members(path))
    if found and path.is_dir():
        (path / "cgroup.kill").write_text("1\n")
        deadline = time.monotonic() + timeout_s
        while members(path) and time.monotonic() < deadline:
            time.sleep(0.02)
    return found


def remove(path: Path) -> None:
    """Kill what is left, then delete the cgroup and its now empty parent."""
    if not path.is_dir():
        return
    kill(path)
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
        child.rmdir()
    path.rmdir()
    try:
        path.parent.rmdir()
    except OSError:  # other hosts' groups are still there
        pass
