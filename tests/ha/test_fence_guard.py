"""The fence guard: a new leader's fence raise is not held up by an older leader frozen mid-transaction.

Played on a Fence node of its own (not the cluster's ``leader`` fence), with two real Neo4j connections: the
"old leader" writes the fence node in an open transaction and never commits, as a SIGSTOPped leader would.
"""

from __future__ import annotations

import time
import uuid

import neo4j.exceptions
import pytest

from node.config import Config
from node.leader.fence_guard import FenceGuard
from node.stores.connect import neo4j_driver

pytestmark = pytest.mark.stack


def test_guard_terminates_an_older_leaders_transaction_that_holds_the_fence(stack: Config) -> None:
    name = f"guard-test-{uuid.uuid4().hex[:8]}"
    with neo4j_driver(stack) as old, neo4j_driver(stack) as new:
        old.execute_query("CREATE (:Fence {name: $name, epoch: 1})", name=name)
        try:
            with old.session() as session:
                frozen = session.begin_transaction()
                frozen.run("MATCH (f:Fence {name: $name}) SET f.last_write_epoch = 1", name=name).consume()
                started = time.monotonic()
                with FenceGuard(new, epoch=2, interval_s=0.1) as guard:
                    new.execute_query("MATCH (f:Fence {name: $name}) SET f.epoch = $epoch", name=name, epoch=2)
                waited = time.monotonic() - started
                assert guard.terminated, "the raise went through without terminating the holder?"
                with pytest.raises(neo4j.exceptions.Neo4jError):  # the older leader's work is gone
                    frozen.run("MATCH (f:Fence {name: $name}) SET f.stale = true", name=name).consume()
                    frozen.commit()
            print(f"\nraise unblocked after {waited * 1000:.0f} ms by terminating {guard.terminated}")
            records, _, _ = new.execute_query("MATCH (f:Fence {name: $name}) RETURN f.epoch AS e, f.stale AS s",
                                              name=name)
            assert (records[0]["e"], records[0]["s"]) == (2, None)
        finally:
            new.execute_query("MATCH (f:Fence {name: $name}) DETACH DELETE f", name=name)


def test_guard_leaves_transactions_alone_when_nothing_blocks(stack: Config) -> None:
    name = f"guard-test-{uuid.uuid4().hex[:8]}"
    with neo4j_driver(stack) as driver:
        try:
            with FenceGuard(driver, epoch=7, interval_s=0.05) as guard:
                driver.execute_query("MERGE (f:Fence {name: $name}) SET f.epoch = $epoch", name=name, epoch=7)
                time.sleep(0.3)
            assert guard.terminated == []
        finally:
            driver.execute_query("MATCH (f:Fence {name: $name}) DETACH DELETE f", name=name)
