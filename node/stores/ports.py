"""The small queue interfaces the leader and the worker depend on.

:class:`~node.stores.rabbit.BatchPublisher` and :class:`~node.stores.rabbit.BatchConsumer` implement them on
RabbitMQ; ``tests/fakes`` implements them in memory, so that the decision logic is tested without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from node.stores.rabbit import Delivery


class Publisher(Protocol):
    """Publishes a batch of persistent messages and returns once the broker has confirmed all of them
    (``publish_batch``), or returns at once and waits for the confirms in ``settle`` (``publish_async``: None when
    there was nothing to publish)."""

    def publish_batch(self, queue: str, bodies: Iterable[bytes], properties: Any = ...) -> int: ...

    def publish_async(self, queue: str, bodies: Iterable[bytes], properties: Any = ...) -> Any: ...

    def settle(self, sent: Any) -> None: ...


class Consumer(Protocol):
    """Hands out batches of deliveries from its queues; acks cumulatively; unacked deliveries return on close. At
    most ``prefetch`` deliveries are unacknowledged at once (``fit_prefetch`` changes it)."""

    prefetch: int

    def start(self) -> None: ...

    def fit_prefetch(self, target: int, shrink_at: int = ...) -> None: ...

    def next_batch(self, max_n: int, max_wait_s: float, linger_s: float = ...) -> list[Delivery]: ...

    def ack_through(self, tag: int) -> None: ...

    def close(self) -> None: ...
