"""Shared fixtures: one real stack for the whole test session, in its own state dir and port range.

The suite's stack lives in ``.haorch-test`` (ports from 18100) so that it never touches a user's ``.haorch``
stack. It is purged and started at the start of the session and stopped at the end; nothing is mocked.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.config import Config, load_config
from node.paths import REPO_ROOT

TEST_HOME = Path(os.environ.get("HAORCH_TEST_HOME", REPO_ROOT / ".haorch-test"))
TEST_PORT_BASE = int(os.environ.get("HAORCH_TEST_PORT_BASE", "18100"))


def _progress(message: str) -> None:
    print(f"[stack] {message}", flush=True)


@pytest.fixture(scope="session")
def test_config() -> Config:
    """Config of the test stack (not started)."""
    os.environ["HAORCH_HOME"] = str(TEST_HOME)
    os.environ["HAORCH_PORT_BASE"] = str(TEST_PORT_BASE)
    return load_config(TEST_HOME)


@pytest.fixture(scope="session")
def stack(test_config: Config):
    """The real stack (ZooKeeper x3, RabbitMQ, MariaDB, Neo4j, Prometheus), fresh for this session."""
    from node.stack import manager

    manager.down(test_config, purge=True)
    manager.up(test_config, progress=_progress)
    os.environ["HAORCH_TEST_ZK_HOSTS"] = test_config.zk_hosts
    yield test_config
    manager.down(test_config, progress=_progress)
