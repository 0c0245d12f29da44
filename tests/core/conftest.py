"""Fixtures for the orchestrator core tests: a real cluster (1 node, 2 workers) on the session's test stack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from core_harness import CLUSTER_ENV, WORKERS, free_worker_numbers, start_workers, unique

from node import cluster as cluster_ops
from node.config import Config, load_config
from node.experiments import Experiments


@pytest.fixture(scope="module")
def cluster(stack: Config) -> Iterator[Config]:
    """``node.cluster.up(nodes=1, workers=2)`` with a fast timeout grace and sweep; torn down after the module.

    Yields the config as the cluster processes see it (the environment carries the settings)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CLUSTER_ENV.items():
            mp.setenv(key, value)
        cfg = load_config(stack.home)
        if free_worker_numbers(cfg, 2) == [1, 2]:
            cluster_ops.up(cfg, nodes=1, workers=2, wait_s=120.0)
            WORKERS[:] = [1, 2]
        else:  # worker-1's /metrics port is taken by another stack on this machine: use free numbers
            cluster_ops.up(cfg, nodes=1, workers=0, wait_s=120.0)
            WORKERS[:] = free_worker_numbers(cfg, 2)
            start_workers(cfg)
        try:
            yield cfg
        finally:
            cluster_ops.down(cfg)


@pytest.fixture
def workers(cluster: Config) -> Iterator[Config]:
    """Makes sure both workers run when the test starts and when it ends (tests may stop them)."""
    start_workers(cluster)
    yield cluster
    start_workers(cluster)


@pytest.fixture(scope="module")
def slow_type(cluster: Config, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A type whose one task sleeps 10 s: an experiment of it is still running when the test cancels it."""
    type_ = unique("slow").replace("-", "_")
    path = tmp_path_factory.mktemp("templates") / "slow.yaml"
    path.write_text(yaml.safe_dump({"type": type_, "tasks": [
        {"name": "nap", "kind": "job_submission", "executor": "sleep", "params": {"ms": 10_000}}]}))
    with Experiments(cluster) as exps:
        exps.register(path)
    return type_
