"""The RabbitMQ topology: three durable quorum queues, a dead-letter queue and the workers' exchange.

``haorch.requests`` carries task requests from the leader to workers, ``haorch.responses`` carries results back,
``haorch.submissions`` tells the leader about new experiments, ``haorch.dead`` keeps malformed messages with the
reason in the ``x-haorch-reason`` header.

Workers publish through ``haorch.worker``, a direct exchange bound to ``haorch.responses`` and ``haorch.dead``
only (by their names): the broker checks publish rights per exchange, and through the default exchange a worker
could reach every queue. The orchestrator declares all of it; a worker only checks that it exists (a passive
declare needs no configure right).
"""

from __future__ import annotations

import pika

from node.config import Config
from node.stores.connect import amqp_parameters

REQUESTS = "haorch.requests"
RESPONSES = "haorch.responses"
SUBMISSIONS = "haorch.submissions"
DEAD = "haorch.dead"
QUEUES = (REQUESTS, RESPONSES, SUBMISSIONS, DEAD)
QUORUM = {"x-queue-type": "quorum"}
WORKER_EXCHANGE = "haorch.worker"
WORKER_ROUTES = (RESPONSES, DEAD)  # the queues a worker publishes to, bound under their own names


def declare_topology(cfg: Config, channel: pika.adapters.blocking_connection.BlockingChannel | None = None) -> None:
    """Declare every queue, the workers' exchange and its bindings (idempotent). Opens its own connection unless
    a channel is given."""
    if channel is not None:
        for queue in QUEUES:
            channel.queue_declare(queue=queue, durable=True, arguments=QUORUM)
        channel.exchange_declare(WORKER_EXCHANGE, exchange_type="direct", durable=True)
        for queue in WORKER_ROUTES:
            channel.queue_bind(queue, WORKER_EXCHANGE, routing_key=queue)
        return
    conn = pika.BlockingConnection(amqp_parameters(cfg, heartbeat_s=0, name="haorch-bootstrap"))
    try:
        declare_topology(cfg, conn.channel())
    finally:
        conn.close()


def check_worker_topology(channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
    """Passively declare what a worker uses (the broker closes the channel, 404, when something is missing)."""
    for queue in (REQUESTS, *WORKER_ROUTES):
        channel.queue_declare(queue=queue, passive=True)
    channel.exchange_declare(WORKER_EXCHANGE, passive=True)
