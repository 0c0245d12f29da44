"""The RabbitMQ topology: three durable quorum queues and a dead-letter queue.

``haorch.requests`` carries task requests from the leader to workers, ``haorch.responses`` carries results back,
``haorch.submissions`` tells the leader about new experiments, ``haorch.dead`` keeps malformed messages with the
reason in the ``x-haorch-reason`` header.
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


def declare_topology(cfg: Config, channel: pika.adapters.blocking_connection.BlockingChannel | None = None) -> None:
    """Declare every queue (idempotent). Opens its own connection unless a channel is given."""
    if channel is not None:
        for queue in QUEUES:
            channel.queue_declare(queue=queue, durable=True, arguments=QUORUM)
        return
    conn = pika.BlockingConnection(amqp_parameters(cfg, heartbeat_s=0, name="haorch-bootstrap"))
    try:
        declare_topology(cfg, conn.channel())
    finally:
        conn.close()
