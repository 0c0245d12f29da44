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

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.spec import Basic
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from node.config import Config
from node.errors import ServiceError
from node.stack.rabbitmq import amqp_parameters
from node.stores.queues import DEAD, declare_topology

log = logging.getLogger(__name__)

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)

#: exceptions that mean "the broker or the connection went away": callers reconnect
CONNECTION_ERRORS = (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError,
                     pika.exceptions.StreamLostError, ConnectionError, OSError)


def connect(cfg: Config, name: str, retry_for_s: float = 60.0, heartbeat_s: int | None = None) -> BlockingConnection:
    """Open a connection, retrying with exponential backoff for up to ``retry_for_s`` seconds."""
    params = amqp_parameters(cfg, heartbeat_s=heartbeat_s, name=name)
    try:
        for attempt in Retrying(stop=stop_after_delay(retry_for_s), wait=wait_exponential(0.1, max=2.0),
                                retry=retry_if_exception_type(CONNECTION_ERRORS), reraise=True):
            with attempt:
                return pika.BlockingConnection(params)
    except CONNECTION_ERRORS as exc:
        raise ServiceError(f"rabbitmq at 127.0.0.1:{cfg.rabbit_port} unreachable for {retry_for_s:.0f} s "
                           f"({type(exc).__name__})") from None
    raise AssertionError("unreachable")


class BatchPublisher:
    """Publishes batches of persistent messages and waits once per batch for the broker's confirms."""

    def __init__(self, conn: BlockingConnection, confirm_timeout_s: float = 30.0) -> None:
        self.conn = conn
        self.confirm_timeout_s = confirm_timeout_s
        self.channel: BlockingChannel = conn.channel()
        # pika's blocking channel confirms message by message; its asynchronous channel (``_impl``) lets us
        # pipeline a batch and count the broker's acks ourselves.
        self._impl = self.channel._impl  # noqa: SLF001
        self._published = 0
        self._acked = 0
        self._nacked = 0
        selected: list[bool] = []
        self._impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _f: selected.append(True))
        self._wait(lambda: bool(selected), "confirm.select")

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        upto = method.delivery_tag if method.multiple else None
        if upto is None:
            count = 1
        else:
            count = upto - (self._acked + self._nacked)
        if isinstance(method, Basic.Nack):
            self._nacked += count
        else:
            self._acked += count

    def _wait(self, done, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + self.confirm_timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise ServiceError(f"rabbitmq: no {what} within {self.confirm_timeout_s:.0f} s")
            self.conn.process_data_events(time_limit=0.001)

    def publish_batch(self, queue: str, bodies: Iterable[bytes],
                      properties: pika.BasicProperties = PERSISTENT) -> int:
        """Publish every body to ``queue`` and return once all are confirmed; raise if any was nacked."""
        nacked_before = self._nacked
        count = 0
        for body in bodies:
            self._impl.basic_publish(exchange="", routing_key=queue, body=body, properties=properties)
            count += 1
        if not count:
            return 0
        self._published += count
        self._wait(lambda: self._acked + self._nacked >= self._published, "publisher confirms")
        if self._nacked != nacked_before:
            raise ServiceError(f"rabbitmq: broker refused {self._nacked - nacked_before} of {count} messages "
                               f"to {queue}")
        return count


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
        self.channel: BlockingChannel = conn.channel()
        self.channel.basic_qos(prefetch_count=prefetch)
        self.queues = queues
        self._buffer: list[Delivery] = []
        self._tags: list[str] = []

    def start(self) -> None:
        """Begin consuming every queue (idempotent)."""
        if self._tags:
            return
        for queue in self.queues:
            self._tags.append(self.channel.basic_consume(queue, self._make_callback(queue)))

    def _make_callback(self, queue: str):  # type: ignore[no-untyped-def]
        def on_message(_ch, method, props, body):  # type: ignore[no-untyped-def]
            self._buffer.append(Delivery(queue, method.delivery_tag, body, method.redelivered,
                                         dict(props.headers or {})))
        return on_message

    def stop(self) -> None:
        """Cancel the consumers; unacked deliveries go back to their queues when the channel closes."""
        for tag in self._tags:
            try:
                self.channel.basic_cancel(tag)
            except CONNECTION_ERRORS:
                pass
        self._tags = []

    def next_batch(self, max_n: int, max_wait_s: float, linger_s: float = 0.002) -> list[Delivery]:
        """Up to ``max_n`` deliveries: waits up to ``max_wait_s`` for the first, then ``linger_s`` for more."""
        deadline = time.monotonic() + max_wait_s
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
        self.channel.basic_ack(delivery_tag=tag, multiple=True)

    def ack(self, tag: int) -> None:
        self.channel.basic_ack(delivery_tag=tag)


def dead_letter(publisher: BatchPublisher, delivery: Delivery, reason: str) -> None:
    """Park a message that cannot be processed on ``haorch.dead`` with the reason; the caller acks the original."""
    props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, headers={
        "x-haorch-reason": reason[:500], "x-haorch-source-queue": delivery.queue})
    publisher.publish_batch(DEAD, [delivery.body], properties=props)
    log.warning("dead-lettered queue=%s reason=%s", delivery.queue, reason)


def ensure_topology(cfg: Config, conn: BlockingConnection) -> None:
    """Declare the queues on an open connection (a restarted broker keeps them: they are durable)."""
    channel = conn.channel()
    try:
        declare_topology(cfg, channel)
    finally:
        channel.close()
