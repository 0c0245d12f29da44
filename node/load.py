"""A bounded background load of experiments of mixed types, for the demo, the HA tests, chaos runs and the
failover benchmark.

    load = Load(cfg, rate=20, total=400).start()     # submits in batches on its own threads
    ...                                              # kill things
    load.join()                                      # every batch submitted (retried through outages)
    Experiments(cfg).wait(load.ids, timeout_s=60)

A batch that fails (a store restarting, a lost connection) is retried with the same ids until it goes through
— submitting is idempotent on the id — so ``ids`` is exactly the set of experiments that must complete.

:class:`SteadyLoad` is the load of chaos runs and the failover benchmark: ids that all start with ``prefix`` (so
SQL can select a run with ``LIKE 'prefix%'``), bounded in count and in time, the built-in types installed first
(other types are registered by the caller; ``params`` go with every submission)::

    load = SteadyLoad(cfg, "chaos-ab12-", rate=10, limit=400, max_s=120).start()
    ...                          # inject faults
    load.stop()                  # no new batch; waits (bounded) for the batch in progress
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable

from node.config import Config
from node.experiments import BUILTIN_TYPES, Experiments

log = logging.getLogger(__name__)


class Load:
    """``total`` experiments at about ``rate`` per second (at most), types taken in turn, ``threads`` submitters;
    no new batch after ``max_s`` seconds when given. Every experiment is submitted with ``params`` (each type
    must declare them)."""

    def __init__(self, cfg: Config, rate: float, total: int, types: tuple[str, ...] = BUILTIN_TYPES,
                 batch: int = 4, threads: int = 1, prefix: str | None = None,
                 gate: Callable[[], bool] | None = None, max_s: float | None = None,
                 params: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.rate = rate
        self.total = total
        self.types = types
        self.params = dict(params or {})
        self.batch = batch
        self.prefix = prefix or uuid.uuid4().hex[:6]
        self.gate = gate                  # when given, a batch waits until gate() is true (back-pressure)
        self.max_s = max_s
        self.ids: list[str] = []          # ids whose submission has begun (each one completes or is retried)
        self.done = 0                     # experiments whose submission returned
        self.errors = 0                   # failed submission attempts (retried)
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._stop = threading.Event()
        self._t0 = 0.0
        self._t_end: float | None = None
        self._threads = [threading.Thread(target=self._run, name=f"load-{i}", daemon=True) for i in range(threads)]

    def start(self) -> Load:
        self._t0 = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> bool:
        """Start no new batch (the one in progress still completes). True when the submitters finished already."""
        self._stop.set()
        return self.finished

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the submitters; True when they all finished."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    @property
    def finished(self) -> bool:
        return not any(t.is_alive() for t in self._threads)

    @property
    def elapsed_s(self) -> float:
        """Seconds from start to the last submission (or to now while submitting)."""
        end = self._t_end if self.finished and self._t_end is not None else time.monotonic()
        return end - self._t0

    def _id(self, type_: str, index: int) -> str:
        """The id of the ``index``-th experiment of the load."""
        return f"{type_}-{self.prefix}-{index}"

    def _next_batch(self) -> tuple[str, list[str]] | None:
        if self.max_s is not None and time.monotonic() - self._t0 > self.max_s:
            return None
        with self._lock:
            if self._stop.is_set() or len(self.ids) >= self.total:
                return None
            n = next(self._counter)
            type_ = self.types[n % len(self.types)]
            size = min(self.batch, self.total - len(self.ids))
            ids = [self._id(type_, len(self.ids) + i) for i in range(size)]
            self.ids += ids
            return type_, ids

    def _pace(self) -> None:
        """Sleep until submitting the next batch keeps us at or under ``rate``."""
        with self._lock:
            due = self._t0 + len(self.ids) / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)
        while self.gate is not None and not self._stop.is_set() and not self.gate():
            self._stop.wait(0.1)

    def _run(self) -> None:
        exps: Experiments | None = None
        try:
            while True:
                self._pace()
                work = self._next_batch()
                if work is None:
                    return
                type_, ids = work
                while True:
                    try:
                        if exps is None:
                            exps = Experiments(self.cfg)
                        exps.submit_many(type_, ids, params=self.params)
                        break
                    except Exception as exc:  # noqa: BLE001 - any outage: retry the same ids (idempotent)
                        with self._lock:
                            self.errors += 1
                            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                        log.warning("load: submit failed (%s); retrying", self.last_error)
                        if exps is not None:
                            exps.close()
                            exps = None
                        time.sleep(0.5)
                with self._lock:
                    self.done += len(ids)
        finally:
            self._t_end = time.monotonic()
            if exps is not None:
                exps.close()


class SteadyLoad(Load):
    """Submits ``per_tick`` experiments every ``period_s`` (or at ``rate`` per second) until ``limit`` experiments,
    ``max_s`` seconds, or ``stop()``; every id is ``prefix`` and a five-digit number."""

    def __init__(self, cfg: Config, prefix: str, per_tick: int = 2, period_s: float = 0.25, limit: int = 5000,
                 rate: float | None = None, max_s: float | None = None,
                 types: tuple[str, ...] = BUILTIN_TYPES, params: dict[str, str] | None = None) -> None:
        super().__init__(cfg, rate=rate or per_tick / period_s, total=limit, types=types, batch=per_tick,
                         prefix=prefix, max_s=max_s, params=params)

    def _id(self, type_: str, index: int) -> str:
        return f"{self.prefix}{index:05d}"

    def start(self) -> SteadyLoad:
        with Experiments(self.cfg) as exps:   # submit_many needs the templates (idempotent)
            exps.install_builtins()
        super().start()
        return self

    def stop(self, timeout_s: float = 30.0) -> bool:
        """No new batch; wait up to ``timeout_s`` for the one in progress. True when the submitters finished."""
        super().stop()
        return self.join(timeout_s)

    def wait_done(self, timeout_s: float) -> bool:
        """Let the load reach its limit (or time bound) by itself; True when it finished within ``timeout_s``."""
        return self.join(timeout_s)
