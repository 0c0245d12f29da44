"""The steady load of chaos runs and the failover benchmark: the four built-in types in turn, at a chosen rate,
bounded in count (``limit``) and in time (``max_s``).

    load = SteadyLoad(cfg, "chaos-ab12-", rate=10, limit=400, max_s=120).start()
    ...                          # inject faults
    load.stop()                  # no new batch; waits (bounded) for the batch in progress
    load.ids                     # every id whose submission began; each is retried until it went through

It is :class:`node.load.Load` (batches submitted on a background thread, a failed batch retried with the same
ids because submitting is idempotent) with ids that all start with ``prefix`` (so SQL can select a run with
``LIKE 'prefix%'``) and a time bound. The submission timeline is in MariaDB (``experiments.created_at``).
"""

from __future__ import annotations

import time

from node.config import Config
from node.experiments import BUILTIN_TYPES, Experiments
from node.load import Load

TYPES = BUILTIN_TYPES


class SteadyLoad(Load):
    """Submits ``per_tick`` experiments every ``period_s`` (or at ``rate`` per second) until ``limit`` experiments,
    ``max_s`` seconds, or ``stop()``."""

    def __init__(self, cfg: Config, prefix: str, per_tick: int = 2, period_s: float = 0.25, limit: int = 5000,
                 rate: float | None = None, max_s: float | None = None, types: tuple[str, ...] = TYPES) -> None:
        super().__init__(cfg, rate=rate or per_tick / period_s, total=limit, types=types, batch=per_tick,
                         prefix=prefix)
        self.max_s = max_s

    def _next_batch(self) -> tuple[str, list[str]] | None:
        if self.max_s is not None and time.monotonic() - self._t0 > self.max_s:
            return None
        with self._lock:
            if self._stop.is_set() or len(self.ids) >= self.total:
                return None
            type_ = self.types[next(self._counter) % len(self.types)]
            size = min(self.batch, self.total - len(self.ids))
            ids = [f"{self.prefix}{len(self.ids) + i:05d}" for i in range(size)]
            self.ids += ids
            return type_, ids

    def start(self) -> "SteadyLoad":
        with Experiments(self.cfg) as exps:   # submit_many needs the templates (idempotent)
            exps.install_builtins()
        super().start()
        return self

    def stop(self, timeout_s: float = 30.0) -> bool:  # type: ignore[override]
        """No new batch; wait up to ``timeout_s`` for the one in progress. True when the submitters finished."""
        super().stop()
        return self.join(timeout_s)

    def wait_done(self, timeout_s: float) -> bool:
        """Let the load reach its limit (or time bound) by itself; True when it finished within ``timeout_s``."""
        return self.join(timeout_s)
