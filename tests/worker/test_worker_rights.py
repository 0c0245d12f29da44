"""The workers' own MariaDB and RabbitMQ users may do what a worker does and nothing else (real servers)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pika
import pika.exceptions
import pymysql
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from polling import wait_until

from node.config import Config
from node.stores.connect import amqp_parameters, mysql_connect_args
from node.stores.ledger import Finish, Ledger, Start
from node.stores.queues import DEAD, QUORUM, REQUESTS, RESPONSES, SUBMISSIONS, WORKER_EXCHANGE
from node.stores.rabbit import BatchPublisher, connect

DENIED = {1142, 1143, 1044}  # table, column and database access denied


def denied(cur, sql: str) -> int:
    with pytest.raises(pymysql.err.MySQLError) as caught:
        cur.execute(sql)
    return caught.value.args[0]


def test_the_worker_database_user_reaches_the_ledger_and_nothing_else(stack: Config):
    ledger = Ledger(stack, role="worker")  # what a worker does: claim, record the end, read, release
    key = (f"rights-{time.time_ns()}", "t", 1)
    try:
        row_id = ledger.claim([Start(*key, "worker-rights", 1, time.time())])[key]
        ledger.finish([Finish(row_id, time.time(), "success", {"ok": True}, None)])
        assert ledger.rows([key])[key].outcome == "success"
        ledger.release(list(ledger.claim([Start(*key[:2], 2, "worker-rights", 1, time.time())]).values()))
    finally:
        ledger.close()
    db = pymysql.connect(**mysql_connect_args(stack, role="worker"))
    try:
        with db.cursor() as cur:
            for sql in ("SELECT * FROM experiments LIMIT 1", "SELECT * FROM transitions LIMIT 1",
                        "SELECT * FROM fence", "UPDATE fence SET epoch = epoch + 1",
                        "INSERT INTO transitions (experiment_id) VALUES ('x')",
                        "DROP TABLE ledger", "ALTER TABLE ledger ADD COLUMN x INT", "CREATE TABLE x (a INT)",
                        "SELECT * FROM mysql.user"):
                assert denied(cur, sql) in DENIED, sql
    finally:
        db.rollback()
        db.close()


def refused(cfg: Config, action: Callable[[BlockingChannel], object]) -> None:
    """``action(channel)`` on a fresh worker connection must be refused by the broker (403 ACCESS_REFUSED)."""
    conn = pika.BlockingConnection(amqp_parameters(cfg, heartbeat_s=0, name="rights-test", role="worker"))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
            action(conn.channel())
        assert caught.value.reply_code == 403, caught.value
    finally:
        if conn.is_open:
            conn.close()


def test_the_worker_broker_user_consumes_requests_and_publishes_only_responses_and_dead_letters(stack: Config):
    conn = connect(stack, "rights-test", role="worker")  # checks the topology passively: allowed
    try:
        channel = conn.channel()
        channel.basic_consume(REQUESTS, lambda *_: None)  # read on haorch.requests
        channel.close()
        publisher = BatchPublisher(conn, exchange=WORKER_EXCHANGE)
        assert publisher.publish_batch(RESPONSES, []) == 0
    finally:
        conn.close()
    refused(stack, lambda ch: ch.basic_consume(RESPONSES, lambda *_: None))
    refused(stack, lambda ch: ch.basic_consume(SUBMISSIONS, lambda *_: None))
    refused(stack, lambda ch: ch.basic_get(DEAD))
    refused(stack, lambda ch: ch.queue_purge(RESPONSES))
    refused(stack, lambda ch: ch.queue_delete(REQUESTS))
    refused(stack, lambda ch: ch.queue_declare("rights-test-own", durable=True, arguments=QUORUM))
    refused(stack, lambda ch: (ch.confirm_delivery(), ch.basic_publish("", REQUESTS, b"{}")))  # the default exchange


def test_the_worker_exchange_routes_to_responses_and_dead_letters_only(stack: Config):
    admin = pika.BlockingConnection(amqp_parameters(stack, heartbeat_s=0, name="rights-admin"))
    worker = connect(stack, "rights-worker", role="worker")
    try:
        channel = admin.channel()
        for queue in (REQUESTS, RESPONSES, SUBMISSIONS, DEAD):
            channel.queue_purge(queue)
        publisher = BatchPublisher(worker, exchange=WORKER_EXCHANGE)
        for queue in (REQUESTS, RESPONSES, SUBMISSIONS, DEAD):
            publisher.publish_batch(queue, [b"rights-test"])  # confirmed either way: unroutable is dropped

        def depths() -> dict[str, int]:
            return {queue: channel.queue_declare(queue, passive=True).method.message_count
                    for queue in (REQUESTS, RESPONSES, SUBMISSIONS, DEAD)}

        wanted = {REQUESTS: 0, RESPONSES: 1, SUBMISSIONS: 0, DEAD: 1}
        wait_until(lambda: depths() == wanted, 5.0, f"queue depths {wanted}")
        time.sleep(0.2)  # nothing else arrives late
        assert depths() == wanted
        for queue in (RESPONSES, DEAD):
            channel.queue_purge(queue)
    finally:
        worker.close()
        admin.close()
