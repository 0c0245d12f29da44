"""CPU used by each program of a stack over a benchmark's busy window, from ``/proc`` (process runtime).

    with CpuSampler(cfg) as cpu:
        ...                                   # the load
    t0, t1, used = cpu.between(first, last)   # CPU seconds by kind between the samples nearest inside the window

Programs are grouped by kind, the first part of their name (``node-1`` -> ``node``, ``rabbitmq-epmd`` ->
``rabbitmq``). Programs that start after the first sample of the window are left out of it.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

from node.config import Config
from node.runtime.process import cpu_seconds
from node.runtime.programs import names, recorded

Sample = tuple[float, dict[str, float]]  # (wall time, CPU seconds so far by program name)


#: how often the processes of every program are looked up again (each look reads every ``/proc/*/stat``: at every
#: sample, that took a fifth of a core of the two a throughput benchmark measures); those of a program whose pid
#: changed (started, restarted) are looked up at once
MEMBERS_S = 2.0


class CpuSampler:
    """Samples every ``interval_s`` on a thread of its own while inside its ``with`` block."""

    def __init__(self, cfg: Config, interval_s: float = 0.2) -> None:
        self.cfg = cfg
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._members: dict[str, tuple[int | None, list[int]]] = {}  # name -> (its pid, its processes)
        self._members_at = time.monotonic()

    def _sample(self) -> Sample:
        again = time.monotonic() - self._members_at >= MEMBERS_S
        if again:
            self._members_at = time.monotonic()
        used = {}
        for name in names(self.cfg):
            program = recorded(self.cfg, name)
            pid = program.pid()
            if again or name not in self._members or self._members[name][0] != pid:  # started, restarted
                self._members[name] = (pid, program.pids())
            seconds = cpu_seconds(self._members[name][1])
            if seconds is not None:
                used[name] = seconds
        return time.time(), used

    def _run(self) -> None:
        while True:
            self.samples.append(self._sample())
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float) -> tuple[float, float, dict[str, float]]:
        """``(t0, t1, used)``: the first and last samples within ``[start, end]`` (wall time) and the CPU seconds
        each kind of program used between them; ``(start, start, {})`` when fewer than two samples fall inside."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return start, start, {}
        (t0, first), (t1, last) = inside[0], inside[-1]
        used: dict[str, float] = {}
        for name, seconds in last.items():
            if name in first:
                kind = name.split("-")[0]
                used[kind] = used.get(kind, 0.0) + seconds - first[name]
        return t0, t1, used
