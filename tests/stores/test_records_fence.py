"""The MariaDB fence: stale writers are rejected, and a frozen older leader cannot block a new leader's raise."""

import time

import pymysql
import pytest

from node.errors import FencedError
from node.stores.connect import mysql_connect_args
from node.stores.records import Records

pytestmark = pytest.mark.stack


def test_a_write_below_the_fence_is_rejected(stack):
    records = Records(stack)
    base = records.fence_epoch()
    records.raise_fence(base + 2, "newer", time.time())
    with pytest.raises(FencedError, match="mariadb fence is at epoch"):
        records.write_batch(base + 1, "older", [("x", "t", None, "SUCCEEDED", 1, None)], {}, time.time())
    records.close()


def test_a_leader_frozen_inside_a_fenced_transaction_does_not_block_the_next_raise(stack):
    records = Records(stack)
    base = records.fence_epoch()
    records.raise_fence(base + 1, "old", time.time())
    frozen = pymysql.connect(**mysql_connect_args(stack))
    cursor = frozen.cursor()
    Records._check_fence(cursor, base + 1)  # holds the fence row lock, as a SIGSTOPped leader mid-batch would
    started = time.monotonic()
    Records(stack).raise_fence(base + 2, "new", time.time())
    took = time.monotonic() - started
    print(f"\nraise past a frozen fenced transaction: {took:.2f} s")
    assert records.fence_epoch() == base + 2
    assert took < 10, "the blocker must be killed, not waited out (innodb_lock_wait_timeout is 50 s)"
    with pytest.raises(pymysql.err.OperationalError):
        cursor.execute("SELECT 1")
    records.close()


def test_an_epoch_raised_by_one_node_is_not_taken_by_another(stack):
    """ZooKeeper hands each epoch out once; a fence raised by hand (as these tests do) must not let a second node
    act in the same epoch: it steps down and is re-elected with a higher one. The holder may raise it again (a
    retried takeover)."""
    records = Records(stack)
    epoch = records.fence_epoch() + 1
    records.raise_fence(epoch, "holder", time.time())
    records.raise_fence(epoch, "holder", time.time())
    with pytest.raises(FencedError):
        records.raise_fence(epoch, "other", time.time())
    records.close()
