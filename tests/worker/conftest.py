"""Fixtures for the worker tests: every test starts with empty queues and an empty ledger."""

from __future__ import annotations

from collections.abc import Iterator

import pymysql
import pytest
from worker_harness import Bus, running_worker

from node.config import Config
from node.stores.connect import mysql_connect_args
from node.worker.worker import Worker


@pytest.fixture
def bus(stack: Config) -> Iterator[Bus]:
    """A connection to the test broker, with every haorch queue we touch emptied and the ledger cleared."""
    made = Bus(stack)
    made.purge()
    db = pymysql.connect(**mysql_connect_args(stack))
    try:
        with db.cursor() as cur:
            cur.execute("DELETE FROM ledger")
        db.commit()
    finally:
        db.close()
    yield made
    made.close()


@pytest.fixture
def worker(stack: Config, bus: Bus) -> Iterator[Worker]:
    with running_worker(stack) as running:
        yield running
