"""A stub broker with named queues, like dramatiq's StubBroker: publishers append, consumers take, ack and requeue.

    broker = StubBroker(journal)
    broker.put("haorch.responses", body)
    consumer = broker.consumer(["haorch.responses"])
    batch = consumer.next_batch(max_n=10, max_wait_s=0)
    consumer.ack_through(batch[-1].tag)
    broker.publisher().publish_batch("haorch.requests", [b"..."])
    broker.bodies("haorch.requests")                    # what is queued there, oldest first
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fakes.journal import Journal
from node.stores.rabbit import Delivery


@dataclass
class Message:
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    redelivered: bool = False


class StubBroker:
    """Queues of messages in memory; every publish is "confirmed" at once."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal if journal is not None else Journal()
        self.queues: dict[str, deque[Message]] = {}

    def put(self, queue: str, *bodies: bytes) -> None:
        for body in bodies:
            self.queues.setdefault(queue, deque()).append(Message(body))

    def messages(self, queue: str) -> list[Message]:
        return list(self.queues.get(queue, ()))

    def bodies(self, queue: str) -> list[bytes]:
        return [m.body for m in self.messages(queue)]

    def publisher(self) -> StubPublisher:
        return StubPublisher(self)

    def consumer(self, queues: Iterable[str]) -> StubConsumer:
        return StubConsumer(self, list(queues))


class StubPublisher:
    """Implements :class:`node.stores.ports.Publisher`; ``fail_with`` makes the next publish raise."""

    def __init__(self, broker: StubBroker) -> None:
        self.broker = broker
        self.fail_with: BaseException | None = None

    def publish_batch(self, queue: str, bodies: Iterable[bytes], properties: Any = None) -> int:
        if self.fail_with is not None:
            raise self.fail_with
        headers = dict(getattr(properties, "headers", None) or {})
        count = 0
        for body in bodies:
            self.broker.queues.setdefault(queue, deque()).append(Message(bytes(body), headers))
            count += 1
        if count:
            self.broker.journal.append(f"publish {queue} {count}")
        return count

    def publish_async(self, queue: str, bodies: Iterable[bytes], properties: Any = None) -> int | None:
        """As publish_batch (the stub broker has them at once); the count is what ``settle`` gets."""
        return self.publish_batch(queue, bodies, properties) or None

    def settle(self, sent: int) -> None:
        self.broker.journal.append(f"confirmed {sent}")


class StubConsumer:
    """Implements :class:`node.stores.ports.Consumer`: delivery tags count up per consumer, acks are cumulative,
    closing hands unacknowledged deliveries back to the front of their queues (redelivered)."""

    def __init__(self, broker: StubBroker, queues: list[str], prefetch: int = 1000) -> None:
        self.broker = broker
        self.queues = queues
        self.prefetch = prefetch  # recorded, not enforced
        self.prefetches: list[int] = []  # every change, in order
        self.started = False
        self.closed = False
        self.unacked: dict[int, tuple[str, Message]] = {}
        self._tag = 0

    def start(self) -> None:
        self.started = True

    def fit_prefetch(self, target: int, shrink_at: int = 2) -> None:
        if target != self.prefetch:
            self.prefetch = target
            self.prefetches.append(target)

    def next_batch(self, max_n: int, max_wait_s: float = 0.0, linger_s: float = 0.0) -> list[Delivery]:
        batch: list[Delivery] = []
        for queue in self.queues:
            pending = self.broker.queues.setdefault(queue, deque())
            while pending and len(batch) < max_n:
                message = pending.popleft()
                self._tag += 1
                self.unacked[self._tag] = (queue, message)
                batch.append(Delivery(queue, self._tag, message.body, message.redelivered, dict(message.headers)))
        return batch

    def ack_through(self, tag: int) -> None:
        for t in [t for t in self.unacked if t <= tag]:
            del self.unacked[t]
        self.broker.journal.append(f"ack {tag}")

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.stop()
        for _tag, (queue, message) in sorted(self.unacked.items(), reverse=True):
            message.redelivered = True
            self.broker.queues.setdefault(queue, deque()).appendleft(message)
        self.unacked.clear()
        self.closed = True

    def idle(self) -> bool:
        """Nothing left to deliver on its queues and nothing unacknowledged."""
        return not self.unacked and not any(self.broker.queues.get(q) for q in self.queues)
