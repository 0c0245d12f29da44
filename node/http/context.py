"""What the HTTP app's handlers share: the config, the owner's probes, and per-thread store connections.

FastAPI runs the (sync) handlers in a thread pool; a :class:`Records` or an :class:`Experiments` is not shared
between threads, so each pool thread opens its own on first use and keeps it until the server stops
(:meth:`AppContext.close`). Tokens and Audit are one object each for the process (the token cache must be shared),
reading the calling thread's Records.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from node.access.audit import Audit
from node.access.tokens import Tokens
from node.config import Config
from node.experiments import Experiments
from node.metrics import NODE_REGISTRY
from node.stores.records import Records

Probe = Callable[[], tuple[bool, dict[str, Any]]]


@dataclass
class AppContext:
    """``healthz``/``readyz``: the owner's probes; ``api``: serve ``/api`` (nodes) or only the probes and
    ``/metrics`` (workers); ``node_id``: the node named in audit rows; ``registry``: the metrics /metrics
    exports."""

    cfg: Config
    healthz: Probe
    readyz: Probe
    api: bool = True
    node_id: str = ""
    registry: CollectorRegistry = NODE_REGISTRY  # what /metrics exports (a worker's: WORKER_REGISTRY)
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _tokens: Tokens | None = field(default=None, repr=False)
    _audit: Audit | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _opened: list[Experiments] = field(default_factory=list, repr=False)  # every thread's, for close()

    def experiments(self) -> Experiments:
        """The calling thread's Experiments (its connections opened lazily)."""
        if not hasattr(self._local, "experiments"):
            self._local.experiments = Experiments(self.cfg)
            with self._lock:
                self._opened.append(self._local.experiments)
        experiments: Experiments = self._local.experiments
        return experiments

    def close(self) -> None:
        """Close every thread's store connections, once the server has stopped (a handler still running past its
        graceful period then fails with a lost dependency, as on any store outage)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for experiments in opened:
            experiments.close()

    def records(self) -> Records:
        """The calling thread's Records (that of its Experiments)."""
        return self.experiments().records

    def tokens(self) -> Tokens:
        """The process's Tokens (and token cache)."""
        with self._lock:
            if self._tokens is None:
                self._tokens = Tokens(self.records)
            return self._tokens

    def audit(self) -> Audit:
        """The process's Audit."""
        with self._lock:
            if self._audit is None:
                self._audit = Audit(self.records)
            return self._audit
