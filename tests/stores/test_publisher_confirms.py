"""BatchPublisher on the real RabbitMQ: batches published without waiting (``publish_async``) are settled later, each
on its own and in any order; a batch whose channel was replaced before it was settled is published again."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from node.config import Config
from node.stores.rabbit import BatchPublisher, connect


@pytest.fixture
def queue(stack: Config) -> Iterator[tuple[BatchPublisher, str]]:
    conn = connect(stack, "test-publisher-confirms")
    name = f"test.publish-async-{uuid.uuid4().hex[:8]}"
    channel = conn.channel()
    channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        yield BatchPublisher(conn), name
    finally:
        channel.queue_delete(name)
        conn.close()


def _bodies(publisher: BatchPublisher, queue: str, expected: int) -> list[bytes]:
    """Every message in ``queue`` (acked: the queue is the test's own), once ``expected`` have arrived."""
    channel = publisher.conn.channel()
    deadline = time.monotonic() + 10
    while channel.queue_declare(queue, passive=True).method.message_count < expected:
        assert time.monotonic() < deadline, "the messages did not arrive"
        publisher.conn.sleep(0.05)
    bodies = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def test_outstanding_batches_are_settled_in_any_order(queue: tuple[BatchPublisher, str]) -> None:
    publisher, name = queue
    first = publisher.publish_async(name, [b"a1", b"a2", b"a3"])
    second = publisher.publish_async(name, [b"b1", b"b2"])
    assert publisher.publish_async(name, []) is None
    assert first is not None and second is not None and first.outstanding and second.outstanding
    publisher.settle(second)
    publisher.settle(first)
    assert not first.outstanding and not second.outstanding and publisher.resent == 0
    assert sorted(_bodies(publisher, name, 5)) == [b"a1", b"a2", b"a3", b"b1", b"b2"]


def test_a_batch_whose_channel_was_replaced_is_published_again_when_settled(
        queue: tuple[BatchPublisher, str]) -> None:
    publisher, name = queue
    for _ in range(10):  # the broker's confirms may all come while the new channel opens: then nothing to resend
        pending = publisher.publish_async(name, [b"x1", b"x2"])
        assert pending is not None and pending.outstanding  # no event served yet: no confirm seen
        old, resent = publisher.channel, publisher.resent
        publisher._open_channel(time.monotonic() + 10)  # as settling another batch after a nack does
        assert publisher.channel is not old
        unconfirmed = len(pending.outstanding)  # the old channel's confirms count until it is replaced, not after
        publisher.settle(pending)
        assert publisher.resent - resent == unconfirmed and not pending.outstanding
        if unconfirmed:
            break
    assert unconfirmed, "every round's confirms came before the channel was replaced: nothing was published again"
    bodies = _bodies(publisher, name, 2)
    assert {b"x1", b"x2"} <= set(bodies)  # at least once each (one published again may have landed twice)
