"""RabbitMQ for the leader and the workers: connect with retries, publish with per-batch confirms, consume batches.

pika's ``BlockingChannel.basic_publish`` waits for the broker's confirm of each message before returning (about
1.5k messages/s on a quorum queue here). :class:`BatchPublisher` publishes a whole batch on the underlying
asynchronous channel and then waits once for all its confirms (10x faster), which is what the leader loop needs:
"publish newly ready tasks, persistent, publisher confirms, then ack the consumed batch".

    conn = connect(cfg, "node-1")
    publisher = BatchPublisher(conn)
    publisher.publish_batch(REQUESTS, [body1, body2])       # returns once the broker confirmed both
    consumer = BatchConsumer(conn, [RESPONSES], prefetch=400)
    batch = consumer.next_batch(max_n=200, max_wait_s=0.005)
    consumer.ack_through(batch[-1].tag)
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.spec import Basic

from node.config import Config
from node.errors import DependencyError
from node.retry import CONNECT, RetryPolicy, Stop, call
from node.stores.connect import Role, amqp_parameters
from node.stores.failures import RABBITMQ_ERRORS, rabbitmq_boundary
from node.stores.queues import DEAD, check_worker_topology, declare_topology

if TYPE_CHECKING:
    from node.stores.ports import Publisher

log = logging.getLogger(__name__)

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)

def connect(cfg: Config, name: str, policy: RetryPolicy = CONNECT, heartbeat_s: int | None = None,
            stop: Stop | None = None, on_failure: Callable[[BaseException], None] | None = None,
            role: Role = "orchestrator") -> BlockingConnection:
    """Open a connection as ``role`` and declare the queues on it (a restarted broker keeps them: they are durable;
    a worker, which may not declare, checks they exist), retrying under ``policy`` until ``stop``; DependencyError
    when it gives up."""
    params = amqp_parameters(cfg, heartbeat_s=heartbeat_s, name=name, role=role)
    boundary = rabbitmq_boundary(cfg)

    def once() -> BlockingConnection:
        with boundary:
            conn = pika.BlockingConnection(params)
            try:
                channel = conn.channel()
                if role == "worker":
                    check_worker_topology(channel)
                else:
                    declare_topology(cfg, channel)
                channel.close()
            except BaseException:
                if conn.is_open:
                    conn.close()
                raise
            return conn

    return call(policy, once, what=f"{name}: rabbitmq", stop=stop, on_failure=on_failure)


def pump(conn: BlockingConnection, seconds: float = 0.0) -> None:
    """Serve the connection's events (heartbeats, confirms, deliveries) for ``seconds``, or only those pending;
    DependencyError once the connection is gone."""
    # pika raises ValueError("Timeout closed before call") from a connection that died unnoticed
    with rabbitmq_boundary(conn, extra=(ValueError,)):
        if seconds > 0:
            conn.sleep(seconds)
        else:
            conn.process_data_events(time_limit=0)


class BatchPublisher:
    """Publishes batches of persistent messages and waits once per batch for the broker's confirms; each queue is
    reached through ``exchange`` under its own name (the default exchange routes to every queue; a worker's
    ``haorch.worker`` only to the queues it may write)."""

    def __init__(self, conn: BlockingConnection, confirm_timeout_s: float = 30.0, exchange: str = "") -> None:
        self.conn = conn
        self.confirm_timeout_s = confirm_timeout_s
        self.exchange = exchange
        self._boundary = rabbitmq_boundary(conn)
        with self._boundary:
            self.channel: BlockingChannel = conn.channel()
            # pika's blocking channel confirms message by message; its asynchronous channel (``_impl``) lets us
            # pipeline a batch and count the broker's acks ourselves.
            self._impl = self.channel._impl  # noqa: SLF001
            self._published = 0
            self._acked = 0
            self._nacked = 0
            selected: list[bool] = []
            self._impl.confirm_delivery(ack_nack_callback=self._on_confirm,
                                        callback=lambda _f: selected.append(True))
            self._wait(lambda: bool(selected), "confirm.select")

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        upto = method.delivery_tag if method.multiple else None
        count = 1 if upto is None else upto - (self._acked + self._nacked)
        if isinstance(method, Basic.Nack):
            self._nacked += count
        else:
            self._acked += count

    def _wait(self, done, what: str) -> None:
        deadline = time.monotonic() + self.confirm_timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise self._failure(f"no {what} within {self.confirm_timeout_s:.0f} s")
            self.conn.process_data_events(time_limit=0.001)

    def publish_batch(self, queue: str, bodies: Iterable[bytes],
                      properties: pika.BasicProperties = PERSISTENT) -> int:
        """Publish every body to ``queue`` and return once all are confirmed; DependencyError if the connection
        fails, the confirms do not come or the broker refused (nacked) any."""
        nacked_before = self._nacked
        count = 0
        with self._boundary:
            for body in bodies:
                self._impl.basic_publish(exchange=self.exchange, routing_key=queue, body=body, properties=properties)
                count += 1
            if not count:
                return 0
            self._published += count
            self._wait(lambda: self._acked + self._nacked >= self._published, "publisher confirms")
        if self._nacked != nacked_before:
            raise self._failure(f"broker refused {self._nacked - nacked_before} of {count} messages to {queue}")
        return count

    def waiting(self, queue: str) -> int:
        """Messages ready in ``queue`` (delivered but unacknowledged ones not counted): one passive declare."""
        with self._boundary:
            return self.channel.queue_declare(queue, passive=True).method.message_count

    def _failure(self, cause: str) -> DependencyError:
        return DependencyError(self._boundary.service, self._boundary.endpoint, cause)


@dataclass
class Delivery:
    """One consumed message."""

    queue: str
    tag: int
    body: bytes
    redelivered: bool
    headers: dict = field(default_factory=dict)


class BatchConsumer:
    """Consumes from one or more queues on one channel and hands out batches; acks cumulatively."""

    def __init__(self, conn: BlockingConnection, queues: list[str], prefetch: int) -> None:
        self.conn = conn
        self._boundary = rabbitmq_boundary(conn)
        with self._boundary:
            self.channel: BlockingChannel = conn.channel()
            self.channel.basic_qos(prefetch_count=prefetch)
        self.queues = queues
        self.prefetch = prefetch
        self._buffer: list[Delivery] = []
        self._tags: list[str] = []

    def start(self) -> None:
        """Begin consuming every queue (idempotent)."""
        if self._tags:
            return
        with self._boundary:
            for queue in self.queues:
                self._tags.append(self.channel.basic_consume(queue, self._make_callback(queue)))

    def _make_callback(self, queue: str):
        def on_message(_ch, method, props, body):
            self._buffer.append(Delivery(queue, method.delivery_tag, body, method.redelivered,
                                         dict(props.headers or {})))
        return on_message

    def set_prefetch(self, prefetch: int) -> None:
        """Consume with a new prefetch limit from now on. RabbitMQ applies a consumer's limit when it subscribes,
        so the consumers are cancelled and subscribed again: deliveries already handed out stay this channel's
        (acknowledged as usual); ones pika had not dispatched yet are requeued by it."""
        if prefetch == self.prefetch:
            return
        with self._boundary:
            self.channel.basic_qos(prefetch_count=prefetch)
        self.prefetch = prefetch
        if self._tags:
            self.stop()
            self.start()

    def stop(self) -> None:
        """Cancel the consumers; unacked deliveries go back to their queues when the channel closes."""
        for tag in self._tags:
            with contextlib.suppress(*RABBITMQ_ERRORS):
                self.channel.basic_cancel(tag)
        self._tags = []

    def close(self) -> None:
        """Stop consuming and close the channel: every unacknowledged delivery goes back to its queue."""
        self.stop()
        self.channel.close()

    def next_batch(self, max_n: int, max_wait_s: float, linger_s: float = 0.002) -> list[Delivery]:
        """Up to ``max_n`` deliveries: waits up to ``max_wait_s`` for the first, then ``linger_s`` for more."""
        deadline = time.monotonic() + max_wait_s
        with self._boundary:
            while not self._buffer and time.monotonic() < deadline:
                self.conn.process_data_events(time_limit=min(0.05, max(0.0, deadline - time.monotonic())))
            if self._buffer and len(self._buffer) < max_n:
                linger_until = time.monotonic() + linger_s
                while len(self._buffer) < max_n and time.monotonic() < linger_until:
                    before = len(self._buffer)
                    self.conn.process_data_events(time_limit=0)
                    if len(self._buffer) == before:
                        time.sleep(0.0005)
        batch, self._buffer = self._buffer[:max_n], self._buffer[max_n:]
        return batch

    def ack_through(self, tag: int) -> None:
        """Acknowledge every delivery on this channel up to and including ``tag``."""
        with self._boundary:
            self.channel.basic_ack(delivery_tag=tag, multiple=True)

    def ack(self, tag: int) -> None:
        with self._boundary:
            self.channel.basic_ack(delivery_tag=tag)


def dead_letter(publisher: Publisher, delivery: Delivery, reason: str) -> None:
    """Park a message that cannot be processed on ``haorch.dead`` with the reason (made one encodable line);
    the caller acks the original."""
    reason = " ".join(reason.split())[:500].encode("utf-8", "backslashreplace").decode("utf-8")
    props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, headers={
        "x-haorch-reason": reason, "x-haorch-source-queue": delivery.queue})
    publisher.publish_batch(DEAD, [delivery.body], properties=props)
    log.warning("dead-lettered queue=%s reason=%s", delivery.queue, reason)

