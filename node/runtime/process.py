"""A background process that haorch started, tracked by a pid file so it can be found and stopped later.

Each managed process is its own session (process group leader), writes stdout/stderr to its log file and
outlives the command that started it. ``stop()`` signals exactly the recorded PID (checking that it is still
the process we started, by its start time), never anything found by name::

    proc = ManagedProcess("mariadb", run_dir, log_dir)
    proc.start(["mariadbd", ...], env=env)
    proc.alive()        # True
    proc.stop()         # SIGTERM, then SIGKILL after the grace period
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from node.runtime.placement import Placement

log = logging.getLogger(__name__)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of /proc/PID/stat times
START_MARKER = b"\n--- haorch start"


def start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of ``pid``, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after_name = stat.rsplit(")", 1)[1].split()
    if after_name[0] in ("Z", "X"):
        _reap(pid)
        return None
    return int(after_name[19])


def _reap(pid: int) -> None:
    """Collect a zombie child of ours so it stops looking alive."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (R, S, T, Z, ...), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs and is not a zombie."""
    return start_time(pid) is not None


def _live_stats() -> Iterator[tuple[int, list[str]]]:
    """``(pid, fields)`` of every process that is not a zombie: ``fields`` are those of ``/proc/PID/stat`` after the
    command name (state, ppid, pgrp, ..., start time at 19)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            yield int(stat.parent.name), fields


def group_members(pgid: int) -> list[int]:
    """Live PIDs in process group ``pgid`` (a managed process and whatever it forked)."""
    return [pid for pid, fields in _live_stats() if int(fields[2]) == pgid]


def children(parent: int) -> list[tuple[int, int]]:
    """The live children of ``parent`` with their start times (a PID alone could be reused by the time it is
    signalled: compare with :func:`start_time` first)."""
    return [(pid, int(fields[19])) for pid, fields in _live_stats() if int(fields[1]) == parent]


def rss_bytes(pids: list[int]) -> int | None:
    """Resident memory of ``pids`` in bytes (None when they are all gone)."""
    total = None
    for member in pids:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total = (total or 0) + int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def cpu_seconds(pids: list[int]) -> float | None:
    """CPU time (user + system, every thread) that ``pids`` have used so far, in seconds (None when all are gone)."""
    total = None
    for member in pids:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total = (total or 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


@dataclass
class ManagedProcess:
    """One process started by haorch, recorded in ``<run_dir>/<name>.pid``."""

    name: str
    run_dir: Path
    log_dir: Path
    placement: Placement | None = None  # a lab host it runs on (node/runtime/placement.py); None: this machine

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """PID of the live process we started, or None (a stale pid file is removed)."""
        try:
            record = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        pid, started = int(record["pid"]), record.get("start_time")
        now = start_time(pid)
        if now is None or (started is not None and now != started):
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def alive(self) -> bool:
        return self.pid() is not None

    def start(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        """Start ``argv`` in the background (own session, output appended to the log file); ``env`` adds to
        this process's environment."""
        env = {**os.environ, **env} if env else None
        if self.placement is not None:
            argv = self.placement.argv(argv)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            out.write(START_MARKER + f" {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, cwd=cwd, start_new_session=True, close_fds=True)
        self.adopt(proc.pid)
        log.info("process started name=%s pid=%d", self.name, proc.pid)
        return proc.pid

    def adopt(self, pid: int) -> None:
        """Record ``pid`` as this process (for daemons that fork, e.g. when the real PID is known later)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = {"pid": pid, "start_time": start_time(pid)}
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.pid_file)

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to the recorded process; False when it is not running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, sig)
        return True

    def kill(self) -> bool:
        """SIGKILL the process and everything it forked."""
        return self.kill_group(signal.SIGKILL)

    def freeze(self) -> bool:
        """SIGSTOP the process group (a frozen program: its sockets stay open)."""
        return self.kill_group(signal.SIGSTOP)

    def thaw(self) -> bool:
        return self.kill_group(signal.SIGCONT)

    def frozen(self) -> bool:
        """True when some process of the group is stopped (state T)."""
        return any(_state(member) in ("T", "t") for member in self.pids())

    def pids(self) -> list[int]:
        """The live process and everything it forked (its process group)."""
        pid = self.pid()
        return (group_members(pid) or [pid]) if pid else []

    def run(self, argv: list[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a one-off command of this program's kind (a client, an init tool) and capture its output; on a lab
        host, inside its network namespace."""
        if self.placement is not None:
            argv = self.placement.argv(argv, in_cgroup=False)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)

    def output_since_start(self, max_bytes: int = 65536) -> bytes:
        """What the process printed since its latest start (the last ``max_bytes`` of its log at most)."""
        try:
            with open(self.log_file, "rb") as log_:
                log_.seek(0, 2)
                log_.seek(max(0, log_.tell() - max_bytes))
                tail = log_.read()
        except OSError:
            return b""
        return tail.rsplit(START_MARKER, 1)[-1]

    def log_command(self, lines: int, follow: bool) -> list[str]:
        """The command that prints the last ``lines`` of the log (and follows it)."""
        return ["tail", "-n", str(lines)] + (["-F"] if follow else []) + [str(self.log_file)]

    def info(self) -> dict[str, object]:
        """Runtime-specific status fields (none for a process)."""
        return {}

    def kill_group(self, sig: int) -> bool:
        """Send ``sig`` to the process and everything it forked (its process group)."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return False
        return True

    def stop(self, grace_s: float = 20.0) -> bool:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; leftovers of its process group go the same way.
        Returns True if something was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        for sig in (signal.SIGCONT, signal.SIGTERM):  # a frozen process cannot handle SIGTERM
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
        if not wait_gone(pid, grace_s):
            log.warning("process did not stop on SIGTERM name=%s pid=%d: SIGKILL", self.name, pid)
            _killpg(pid, signal.SIGKILL)
            wait_gone(pid, 5.0)
        if group_members(pid):
            _killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5.0
            while group_members(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            _killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        log.info("process stopped name=%s pid=%d", self.name, pid)
        return True


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait until ``pid`` has exited; True if it did within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)
