"""Fixtures of the HA tests: one 3-node cluster with 2 workers on the session's real stack, for the module.

The cluster runs with a 1 s ZooKeeper session so that a frozen or crashed leader is replaced quickly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from ha_harness import restore_nodes
from polling import wait_until

from node import cluster
from node.config import Config, with_overrides
from node.experiments import Experiments
from node.load import Load
from node.stores.records import Records

SESSION_TIMEOUT_S = 1.0


@dataclass
class HA:
    cfg: Config
    exps: Experiments
    records: Records
    started_at: float = 0.0
    loads: list[Load] = field(default_factory=list)

    def load(self, rate: float, total: int, threads: int = 2) -> Load:
        made = Load(self.cfg, rate=rate, total=total, threads=threads)
        self.loads.append(made)
        return made

    @property
    def ids(self) -> list[str]:
        """Every experiment the module submitted."""
        return [i for load in self.loads for i in load.ids]


@pytest.fixture(scope="module")
def ha(stack: Config) -> Iterator[HA]:
    cfg = with_overrides(stack, zk_session_timeout_s=SESSION_TIMEOUT_S)
    exps = Experiments(cfg)
    exps.install_builtins()
    cluster.down(cfg)  # a cluster another module left running has other settings (session timeout)
    started = time.time()
    cluster.up(cfg, nodes=3, workers=2, progress=lambda m: print(f"[cluster] {m}", flush=True))
    records = Records(cfg, retry_for_s=30.0)
    try:
        yield HA(cfg, exps, records, started_at=started)
    finally:
        cluster.down(cfg)
        records.close()
        exps.close()


@pytest.fixture
def three_nodes(ha: HA) -> Iterator[None]:
    """Every test starts with 3 running nodes (one leading); a node a failed test left dead is restarted."""
    restore_nodes(ha.cfg)
    wait_until(lambda: sum(r["role"] in ("leader", "standby") for r in cluster.status(ha.cfg)) == 3, 60,
               "3 nodes not up")
    cluster.wait_for_leader(ha.cfg, 30)
    yield
