"""A Worker on an in-memory ledger and a stub broker, for the unit tests of its answer path (no server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fakes.broker import StubBroker
from fakes.journal import Journal
from fakes.ledger import FakeLedger
from fakes.responses import responses_in
from node.config import Config
from node.model.messages import TaskResponse
from node.stores.queues import REQUESTS, RESPONSES
from node.worker.worker import Worker


class WorkerRig:
    """One worker (concurrency 2), its ledger, broker, publisher and consumer of ``haorch.requests``, one journal."""

    def __init__(self) -> None:
        self.journal = Journal()
        self.ledger = FakeLedger(self.journal)
        self.broker = StubBroker(self.journal)
        self.publisher = self.broker.publisher()
        self.consumer = self.broker.consumer([REQUESTS])
        self.worker = Worker(Config(home=Path("/nonexistent")), "worker-1", concurrency=2, ledger=self.ledger)

    def answer(self, *bodies: bytes) -> list[TaskResponse]:
        """Deliver ``bodies`` as one batch; the responses published."""
        self.broker.put(REQUESTS, *bodies)
        self.worker.handle_batch(self.consumer.next_batch(max_n=100), self.publisher, self.consumer)
        return responses_in(*self.broker.bodies(RESPONSES))


def worker_rig() -> Iterator[WorkerRig]:
    """A rig whose worker's thread pool is shut down afterwards (wrap in ``pytest.fixture``)."""
    rig = WorkerRig()
    yield rig
    rig.worker._pool.shutdown(wait=True)
