"""RabbitMQ for the leader and the workers: connect with retries, publish with per-batch confirms, consume batches.

pika's ``BlockingChannel.basic_publish`` waits for the broker's confirm of each message before returning (about
1.5k messages/s on a quorum queue here). :class:`BatchPublisher` publishes a whole batch on the underlying
asynchronous channel and then waits once for all its confirms (10x faster), which is what the leader loop needs:
"publish newly ready tasks, persistent, publisher confirms, then ack the consumed batch".

In a cluster (the ``ha`` topology) a publisher outlives the death of a queue's leader node: the messages the
broker refused are published again on a new channel (see :class:`BatchPublisher`), and a connection lost with its
node is reopened by the caller through :func:`connect`, which tries the next node first.

    conn = connect(cfg, "node-1")
    publisher = BatchPublisher(conn)
    publisher.publish_batch(REQUESTS, [body1, body2])       # returns once the broker confirmed both
    consumer = BatchConsumer(conn, [RESPONSES], prefetch=400)
    batch = consumer.next_batch(max_n=200, max_wait_s=0.005)
    consumer.ack_through(batch[-1].tag)
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.spec import Basic

from node.config import Config
from node.errors import DependencyError
from node.retry import CONNECT, RetryPolicy, Stop, call
from node.stores.connect import Role, amqp_parameters, healthy_first, member_hosts, suspected, trusted
from node.stores.failures import RABBITMQ_ERRORS, rabbitmq_boundary
from node.stores.queues import DEAD, check_worker_topology, declare_topology

if TYPE_CHECKING:
    from node.stores.ports import Publisher

log = logging.getLogger(__name__)

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
NACK_FIRST_PAUSE_S = 0.2  # before refused messages are published again on a new channel; doubled each time
NACK_MAX_PAUSE_S = 2.0
# messages without a confirm this long are published again on a new channel: a channel that published while the
# queue's leader node was being cut off stays bound to that leader (RabbitMQ 3.10) and confirms nothing until the
# cut-off node is back — measured in the lab: 13.5 s, while the queue had a new leader 6.9 s after the cut
RESEND_UNCONFIRMED_S = 3.0
# a consumer lingering for more deliveries stops after this long without one: the messages of a burst arrive
# microseconds apart (a lone message, each hop of an idle chain, does not linger at all: see next_batch)
QUIET_S = 0.0003


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
            conn = pika.BlockingConnection(_next_first(params))
            _connected(conn, params)
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


# per broker (its endpoints): the endpoint this process connected to last
_last_endpoint: dict[tuple[tuple[str, int], ...], int] = {}


def _next_first(params: list[pika.ConnectionParameters]) -> list[pika.ConnectionParameters]:
    """``params`` (a cluster's nodes) starting after the one this process connected to last (pika tries them in
    order): a client whose node died, or stopped answering, reconnects to the next node at once instead of waiting
    for that one to fail again."""
    endpoints = tuple((p.host, p.port) for p in params)
    member_hosts(host for host, _ in endpoints)
    start = (_last_endpoint.get(endpoints, -1) + 1) % len(params)
    rotated = params[start:] + params[:start]
    return [rotated[i] for i in healthy_first([p.host for p in rotated], list(range(len(rotated))))]


def _connected(conn: BlockingConnection, params: list[pika.ConnectionParameters]) -> None:
    """Remember the endpoint ``conn`` reached (pika has no public accessor for it)."""
    reached = conn._impl.params  # noqa: SLF001
    endpoints = [(p.host, p.port) for p in params]
    _last_endpoint[tuple(endpoints)] = endpoints.index((reached.host, reached.port))
    trusted(reached.host)


def leave_if_suspect(conn: BlockingConnection) -> None:
    """DependencyError if ``conn``'s host is suspect: another connection of this process to it went silent, so it is
    likely cut off, and reconnecting to another member now beats waiting for this connection to time out too."""
    params = conn._impl.params  # noqa: SLF001
    if suspected(params.host):
        raise DependencyError("rabbitmq", f"{params.host}:{params.port}", "its host went silent")


def pump(conn: BlockingConnection, seconds: float = 0.0) -> None:
    """Serve the connection's events (heartbeats, confirms, deliveries) for ``seconds``, or only those pending;
    DependencyError once the connection is gone — or its host is suspect (``node/stores/connect.py``: another
    connection of this process to it went silent), so that the caller reconnects to another member now instead of
    waiting for this connection to time out too."""
    leave_if_suspect(conn)
    # pika raises ValueError("Timeout closed before call") from a connection that died unnoticed
    with rabbitmq_boundary(conn, extra=(ValueError,)):
        if seconds > 0:
            conn.sleep(seconds)
        else:
            conn.process_data_events(time_limit=0)


def _coalesce_output(conn: BlockingConnection) -> None:
    """Join what pika buffered for the socket into one chunk. pika buffers every frame apart (three per message:
    method, header, body) and sends each with a send() of its own once the socket is writable: a batch of 200
    messages was 600 system calls and as many TCP segments for the broker to take in (TCP_NODELAY), which cost this
    process and the broker more than the messages themselves. Nothing has been sent of the joined frames yet, and
    pika requeues what a partial send leaves, so the bytes on the wire are the same."""
    buffers = conn._impl._transport._tx_buffers  # noqa: SLF001 - pika 1.3 (pinned) has no public batching
    if len(buffers) > 1:
        joined = b"".join(buffers)
        buffers.clear()
        buffers.append(joined)


@dataclass(eq=False)
class Sent:
    """One batch published and not settled yet (:meth:`BatchPublisher.publish_async`): its messages, the channel they
    went out on, the tags still unconfirmed (tag -> index) and the indexes the broker refused."""

    queue: str
    messages: list[bytes]
    properties: pika.BasicProperties
    deadline: float  # monotonic: the broker must have confirmed all by then
    impl: Any = None  # the pika channel (its asynchronous side)
    outstanding: dict[int, int] = field(default_factory=dict)
    refused: list[int] = field(default_factory=list)
    resend_at: float = 0.0


class BatchPublisher:
    """Publishes batches of persistent messages and waits once per batch for the broker's confirms; each queue is
    reached through ``exchange`` under its own name (the default exchange routes to every queue; a worker's
    ``haorch.worker`` only to the queues it may write).

    ``publish_batch`` returns once the broker confirmed the batch. ``publish_async`` returns at once and
    ``settle`` waits for that batch's confirms later, so that a caller can do other work meanwhile (the leader
    advances its next batch); several batches may be outstanding, each settled on its own, in any order.

    Messages the broker refuses (nacks), or does not confirm within RESEND_UNCONFIRMED_S, are published again on a
    new channel, after 0.2 s and then twice as long each time (up to 2 s), until ``confirm_timeout_s``: RabbitMQ
    3.10 nacks, or leaves unconfirmed, every publish of a channel whose first publish came just after a quorum
    queue's leader node died or was cut off, until that node is back, while a new channel reaches the new leader. A
    message published again may reach its queue twice (its consumers dedupe by message id, the workers by the
    ledger); so are the unconfirmed messages of other outstanding batches whose channel was replaced meanwhile."""

    def __init__(self, conn: BlockingConnection, confirm_timeout_s: float = 30.0, exchange: str = "") -> None:
        self.conn = conn
        self.confirm_timeout_s = confirm_timeout_s
        self.exchange = exchange
        self.resent = 0  # messages published again after the broker refused them
        self._boundary = rabbitmq_boundary(conn)
        with self._boundary:
            self._open_channel(time.monotonic() + confirm_timeout_s)

    def _open_channel(self, deadline: float) -> None:
        """A new channel in confirm mode (its delivery tags count from 1); outstanding batches of the old one are
        published again when settled."""
        self.channel: BlockingChannel = self.conn.channel()
        # pika's blocking channel confirms message by message; its asynchronous channel (``_impl``) lets us
        # pipeline a batch and match the broker's acks and nacks to the messages ourselves.
        impl = self._impl = self.channel._impl  # noqa: SLF001
        self._next_tag = 1
        self._by_tag: dict[int, Sent] = {}  # unconfirmed delivery tag -> its batch, in tag order
        selected: list[bool] = []
        impl.confirm_delivery(ack_nack_callback=lambda frame: self._on_confirm(impl, frame),
                              callback=lambda _f: selected.append(True))
        self._wait(lambda: bool(selected), "confirm.select", deadline)

    def _on_confirm(self, impl: pika.channel.Channel, frame: pika.frame.Method) -> None:
        if impl is not self._impl:  # a late answer on a channel given up
            return
        method = frame.method
        if method.multiple:
            tags = list(itertools.takewhile(lambda tag: tag <= method.delivery_tag, self._by_tag))
        else:
            tags = [method.delivery_tag]
        refused = isinstance(method, Basic.Nack)
        for tag in tags:
            sent = self._by_tag.pop(tag, None)
            if sent is not None and refused:
                sent.refused.append(sent.outstanding.pop(tag))
            elif sent is not None:
                del sent.outstanding[tag]

    def _wait(self, done: Callable[[], bool], what: str, deadline: float) -> None:
        while not done():
            if time.monotonic() > deadline:
                raise self._failure(f"no {what} within {self.confirm_timeout_s:.0f} s")
            self.conn.process_data_events(time_limit=0.001)

    def publish_batch(self, queue: str, bodies: Iterable[bytes],
                      properties: pika.BasicProperties = PERSISTENT) -> int:
        """Publish every body to ``queue`` and return once all are confirmed; DependencyError if the connection
        fails, or the confirms do not come, or the broker still refuses some at ``confirm_timeout_s``."""
        sent = self.publish_async(queue, bodies, properties)
        if sent is None:
            return 0
        self.settle(sent)
        return len(sent.messages)

    def publish_async(self, queue: str, bodies: Iterable[bytes],
                      properties: pika.BasicProperties = PERSISTENT) -> Sent | None:
        """Publish every body to ``queue`` without waiting for the confirms (None: nothing to publish); pass the
        result to :meth:`settle`. DependencyError if the connection fails."""
        messages = list(bodies)
        if not messages:
            return None
        sent = Sent(queue, messages, properties, time.monotonic() + self.confirm_timeout_s)
        with self._boundary:
            self._put(sent, range(len(messages)))
        return sent

    def settle(self, sent: Sent) -> None:
        """Return once the broker confirmed every message of ``sent``, publishing again what it refused or left
        unconfirmed (see the class docstring); DependencyError as :meth:`publish_batch`."""
        pause = NACK_FIRST_PAUSE_S
        with self._boundary:
            while True:
                self._wait(lambda: (not sent.outstanding or sent.impl is not self._impl
                                    or time.monotonic() > sent.resend_at), "publisher confirms", sent.deadline)
                again = sorted([*sent.refused, *sent.outstanding.values()])
                if not again:
                    return
                current = self._impl
                if sent.impl is current:  # refused or unconfirmed on the current channel: a new channel
                    if time.monotonic() + pause > sent.deadline:
                        raise self._failure(f"broker refused {len(again)} of {len(sent.messages)} messages to "
                                            f"{sent.queue}")
                    log.warning("rabbitmq: broker refused or did not confirm %d of %d messages to %s; publishing "
                                "them again on a new channel in %.1f s", len(again), len(sent.messages), sent.queue,
                                pause)
                    self.conn.sleep(pause)
                    # not the blocking close: it would wait for the broker's close-ok behind what the channel waits on
                    with contextlib.suppress(Exception):
                        current.close()
                    self._open_channel(sent.deadline)
                    pause = min(2 * pause, NACK_MAX_PAUSE_S)
                # else its channel was replaced while another batch was settled: published again on the new one
                self.resent += len(again)
                self._put(sent, again)

    def _put(self, sent: Sent, indexes: Iterable[int]) -> None:
        """Publish the messages of ``sent`` at ``indexes`` on the current channel, in one socket write."""
        sent.impl, sent.outstanding, sent.refused = self._impl, {}, []
        sent.resend_at = time.monotonic() + RESEND_UNCONFIRMED_S
        for index in indexes:
            sent.outstanding[self._next_tag] = index
            self._by_tag[self._next_tag] = sent
            self._next_tag += 1
            self._impl.basic_publish(exchange=self.exchange, routing_key=sent.queue, body=sent.messages[index],
                                     properties=sent.properties)
        _coalesce_output(self.conn)

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
        self._acked = 0  # the channel's deliveries are acknowledged through this tag

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

    def fit_prefetch(self, target: int, shrink_at: int = 2) -> None:
        """Consume with a prefetch limit of ``target`` from now on, unless the limit is already at least ``target``
        and less than ``shrink_at`` × that (re-subscribing costs two round trips and requeues what pika had not
        dispatched yet: a limit that grows at once and shrinks lazily changes rarely). RabbitMQ applies a consumer's
        limit when it subscribes, so the consumers are cancelled and subscribed again: deliveries already handed out
        stay this channel's (acknowledged as usual)."""
        if target <= self.prefetch < shrink_at * target:
            return
        with self._boundary:
            self.channel.basic_qos(prefetch_count=target)
        self.prefetch = target
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
        """Up to ``max_n`` deliveries: waits up to ``max_wait_s`` for the first, then up to ``linger_s`` for more
        while they keep coming (a burst, e.g. a batch another process published at once, is taken whole). What is
        in hand is handed out at once when one look at the connection finds nothing more: a lone message (each hop
        of an idle chain) lingered ~0.5 ms on each side of every hop for a burst that was not coming.
        DependencyError when the connection is lost or its host is suspect (:func:`leave_if_suspect`)."""
        leave_if_suspect(self.conn)
        deadline = time.monotonic() + max_wait_s
        with self._boundary:
            while not self._buffer and time.monotonic() < deadline:
                self.conn.process_data_events(time_limit=min(0.05, max(0.0, deadline - time.monotonic())))
            held = len(self._buffer)
            if held and held < max_n:
                self.conn.process_data_events(time_limit=0)
            if held < len(self._buffer) < max_n:  # more came: a burst, taken while it keeps coming
                now = time.monotonic()
                linger_until, quiet_until = now + linger_s, now + QUIET_S
                while len(self._buffer) < max_n and time.monotonic() < min(linger_until, quiet_until):
                    before = len(self._buffer)
                    self.conn.process_data_events(time_limit=0)
                    if len(self._buffer) > before:
                        quiet_until = time.monotonic() + QUIET_S
                    else:
                        time.sleep(QUIET_S / 4)
        batch, self._buffer = self._buffer[:max_n], self._buffer[max_n:]
        return batch

    def ack_through(self, tag: int) -> None:
        """Acknowledge every delivery on this channel up to and including ``tag``; nothing if they all are already (a
        second ack of a tag would be a channel error)."""
        if tag <= self._acked:
            return
        with self._boundary:
            self.channel.basic_ack(delivery_tag=tag, multiple=True)
        self._acked = tag

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

