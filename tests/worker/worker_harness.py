"""Helpers for the worker tests: publish requests and collect responses over the real broker, run a worker in a
thread, read the ledger."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pika
import pymysql
from fakes.responses import responses_in
from pika.adapters.blocking_connection import BlockingChannel

from node.config import Config
from node.model.messages import TaskRequest, TaskResponse
from node.stores.connect import amqp_parameters, mysql_connect_args
from node.stores.queues import DEAD, REQUESTS, RESPONSES
from node.stores.rabbit import BatchPublisher
from node.worker.worker import Worker


class Bus:
    """The test's own AMQP connection: publish requests, collect responses, read the dead-letter queue."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.conn = pika.BlockingConnection(amqp_parameters(cfg, heartbeat_s=0, name="worker-tests"))
        self.channel: BlockingChannel = self.conn.channel()
        self.publisher = BatchPublisher(self.conn)

    def purge(self) -> None:
        for queue in (REQUESTS, RESPONSES, DEAD):
            self.channel.queue_purge(queue)

    def publish(self, *bodies: bytes) -> None:
        self.publisher.publish_batch(REQUESTS, list(bodies))

    def responses(self, n: int, timeout_s: float = 10.0, extra_s: float = 0.0) -> list[TaskResponse]:
        """At least ``n`` responses (fewer if ``timeout_s`` runs out), plus whatever arrives ``extra_s`` later."""
        taken = self.take(RESPONSES, n, timeout_s, extra_s, weight=lambda body: len(responses_in(body)))
        return responses_in(*(body for _props, body in taken))

    def take(self, queue: str, n: int, timeout_s: float = 10.0, extra_s: float = 0.0,
             weight: Callable[[bytes], int] = lambda _body: 1) -> list[tuple]:
        """Messages of ``queue`` until they weigh ``n`` (one each unless ``weight`` says), or ``timeout_s``."""
        got: list[tuple] = []
        weighed = 0
        deadline = time.monotonic() + timeout_s
        for method, props, body in self.channel.consume(queue, inactivity_timeout=0.05):
            if method is not None:
                got.append((props, body))
                weighed += weight(body)
                self.channel.basic_ack(method.delivery_tag)
            now = time.monotonic()
            if weighed >= n and deadline > now + extra_s:
                deadline = now + extra_s
            if now >= deadline:
                break
        self.channel.cancel()  # what arrived but was not taken goes back to the queue
        return got

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


@contextmanager
def running_worker(cfg: Config, worker_id: str = "worker-test", concurrency: int = 4) -> Iterator[Worker]:
    """A :class:`Worker` serving in a thread of the test process; stopped (and checked stopped) on exit."""
    worker = Worker(cfg, worker_id, concurrency)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name=worker_id, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive(), "worker did not stop within 15 s of its stop event"


def request(experiment_id: str | None = None, task: str = "t", executor: str = "noop", params: dict | None = None,
            timeout_s: float = 5.0, attempt: int = 1, kind: str | None = None) -> TaskRequest:
    return TaskRequest(experiment_id=experiment_id or f"exp-{uuid.uuid4().hex[:12]}", task=task,
                       kind=kind or executor, executor=executor, params=params or {}, timeout_s=timeout_s,
                       attempt=attempt, epoch=3, dispatched_at=time.time())


def ledger_rows(cfg: Config, experiment_id: str | None = None) -> list[dict]:
    """Ledger rows (of one experiment, or all) as dicts, in id order."""
    db = pymysql.connect(**mysql_connect_args(cfg), cursorclass=pymysql.cursors.DictCursor)
    try:
        with db.cursor() as cur:
            if experiment_id is None:
                cur.execute("SELECT * FROM ledger ORDER BY id")
            else:
                cur.execute("SELECT * FROM ledger WHERE experiment_id = %s ORDER BY id", (experiment_id,))
            return list(cur.fetchall())
    finally:
        db.close()



