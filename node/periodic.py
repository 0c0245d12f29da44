"""Run an action every ``interval_s`` in a daemon thread for as long as a ``with`` block runs.

    with Periodic(guard.sweep, 0.2, "fence-guard"):
        raise_fence()          # may block; the sweeps unblock it

The first run comes after one interval (the usual case, a block that finishes at once, costs nothing). An action's
exception is logged and the next run goes on: these are best-effort helpers beside the real work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """See the module docstring."""

    def __init__(self, action: Callable[[], object], interval_s: float, name: str) -> None:
        self.action = action
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def __enter__(self) -> Periodic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.action()
            except Exception as exc:  # noqa: BLE001 - best effort: the guarded work reports real failures
                log.debug("%s: run failed (%s)", self._thread.name, exc)
