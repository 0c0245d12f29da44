"""Fixture of the observability tests: a 2-node cluster with a worker, work and one real failover, scraped by the
session stack's Prometheus.

``run`` (module scope) starts the cluster (``cluster.up`` publishes the file_sd targets Prometheus scrapes),
submits chain experiments from a background thread, SIGKILLs the leader while work flows (once it has completed
some), waits for the standby to
lead with a newer epoch and to advance work (that is when it observes the takeover phases), restarts the killed
node as a standby and waits until Prometheus scrapes every target again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from polling import wait_until

from node import cluster
from node.config import Config
from node.experiments import Experiments
from node.stack.prometheus import prometheus_query


@dataclass
class Run:
    cfg: Config
    started_at: float
    old_leader: dict
    new_leader: dict
    ids: list[str] = field(default_factory=list)


class Submitter(threading.Thread):
    """Submits ``batch`` chain experiments every ``every_s`` until stopped or ``limit`` are submitted."""

    def __init__(self, cfg: Config, prefix: str, batch: int = 5, every_s: float = 0.2, limit: int = 150) -> None:
        super().__init__(name="submitter", daemon=True)
        self.cfg, self.prefix, self.batch, self.every_s, self.limit = cfg, prefix, batch, every_s, limit
        self.ids: list[str] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            with Experiments(self.cfg) as exps:
                while not self.stop.is_set() and n < self.limit:
                    ids = [f"{self.prefix}-{n + i}" for i in range(self.batch)]
                    exps.submit_many("chain", ids)
                    self.ids += ids
                    n += self.batch
                    self.stop.wait(self.every_s)
        except BaseException as exc:  # noqa: BLE001 - reported by the fixture
            self.error = exc


def all_targets_up(cfg: Config) -> bool:
    rows = prometheus_query(cfg, 'up{job=~"haorch-node|haorch-worker"}')
    names = {r["metric"].get("haorch_id") for r in rows if r["value"][1] == "1"}
    return {"node-1", "node-2", "worker-1"} <= names


@pytest.fixture(scope="module")
def run(stack: Config) -> Iterator[Run]:
    cfg = stack
    started = time.time()
    with Experiments(cfg) as exps:
        exps.install_builtins()
    cluster.up(cfg, nodes=2, workers=1, progress=lambda m: print(f"[cluster] {m}", flush=True))
    try:
        wait_until(lambda: all_targets_up(cfg), 60, "Prometheus to scrape both nodes and the worker")
        submitter = Submitter(cfg, f"obs-{int(started)}")
        submitter.start()
        with Experiments(cfg) as exps:  # the leader advances work (warm) before it dies
            wait_until(lambda: exps.records.state_counts().get("COMPLETED", 0) >= 5, 180,
                       "the first leader to complete experiments")
        time.sleep(2.0)  # a few scrapes with one leader and work flowing
        old = cluster.kill_leader(cfg, "KILL")
        new = cluster.wait_for_leader(cfg, 60, newer_than=old["epoch"] or 0)
        print(f"[obs] {old['node_id']} (epoch {old['epoch']}) killed; {new['node_id']} leads epoch {new['epoch']}",
              flush=True)
        time.sleep(4.0)  # the new leader advances work; the dead node's target stays down a few evaluations
        submitter.stop.set()
        submitter.join(10)
        assert submitter.error is None, f"submitting failed: {submitter.error!r}"
        with Experiments(cfg) as exps:
            exps.wait(submitter.ids, timeout_s=180)
        cluster.start_node(cfg, int(old["node_id"].split("-")[1]))  # back as a standby
        cluster.publish_targets(cfg)
        wait_until(lambda: all_targets_up(cfg), 60, "Prometheus to scrape every target again")
        time.sleep(3.0)  # a few more scrapes and rule evaluations
        yield Run(cfg, started, old, new, submitter.ids)
    finally:
        cluster.down(cfg)
