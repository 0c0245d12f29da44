"""A cluster-wide, strictly increasing epoch counter in one znode.

Usage::

    from election import EpochCounter, make_client

    client = make_client("127.0.0.1:2181", session_timeout_s=2.0, identifier="node-1")
    epochs = EpochCounter(client, "/haorch/epoch")
    epoch = epochs.next()      # e.g. 7: greater than any value next() ever returned, on any client
    epochs.current()           # 7, or more if someone else has incremented since

``next()`` composes kazoo's ``Counter`` recipe: read the znode with its version, write ``value + 1`` with
``set(..., version=...)`` (compare-and-set), and retry on ``BadVersionError`` under the client's command-retry
policy; the znode is created on first use (``ensure_path`` tolerates the ``NodeExistsError`` race between
clients). Each returned value is one this call wrote itself, so values never repeat; the znode is never
deleted, so they never go back. A write whose reply is lost is retried and burns a value: epochs may have gaps.
"""

from __future__ import annotations

import logging

from kazoo.client import KazooClient
from kazoo.recipe.counter import Counter

log = logging.getLogger(__name__)


class EpochCounter:
    """Hands out epochs that increase strictly over the cluster's life (see the module docstring)."""

    def __init__(self, client: KazooClient, path: str = "/haorch/epoch") -> None:
        self.client = client
        self.path = path

    def next(self) -> int:
        """Atomically increment the counter and return the new value."""
        counter = Counter(self.client, self.path, default=0)  # one per call: the recipe keeps per-call state
        counter += 1
        value = counter.post_value
        if not isinstance(value, int):  # pragma: no cover - Counter sets post_value after a successful write
            raise RuntimeError(f"epoch counter at {self.path} returned no value")
        log.info("epoch: next value=%d path=%s", value, self.path)
        return value

    def current(self) -> int:
        """The last value handed out (0 before the first ``next()``)."""
        return Counter(self.client, self.path, default=0).value
