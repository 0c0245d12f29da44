"""``haorch stack up`` bounds ``haorch.dead`` with a RabbitMQ policy (``dead_letters_max``, oldest dropped first):
queue arguments cannot change on an existing queue, a policy can."""

from __future__ import annotations

import json

import pika
import pytest

from node.config import RABBIT_VHOST, Config, with_overrides
from node.stack.rabbitmq import DEAD_POLICY, RabbitMQ
from node.stores.connect import amqp_parameters
from node.stores.queues import DEAD

pytestmark = pytest.mark.stack


def rabbitmqctl(cfg: Config, *args: str) -> list[dict]:
    out = RabbitMQ(cfg).cli("rabbitmqctl", *args, "-p", RABBIT_VHOST, "--formatter", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def policy_definition(cfg: Config) -> dict:
    (mine,) = [p for p in rabbitmqctl(cfg, "list_policies") if p["name"] == DEAD_POLICY]
    return json.loads(mine["definition"])


def test_stack_up_bounds_the_dead_letters_and_the_oldest_are_dropped(stack: Config) -> None:
    assert policy_definition(stack) == {"max-length": 100_000, "overflow": "drop-head"}
    (queue,) = [q for q in rabbitmqctl(stack, "list_queues", "name", "policy") if q["name"] == DEAD]
    assert queue["policy"] == DEAD_POLICY  # in effect on the queue (RabbitMQ 3.10 lists no effective definition)
    small = RabbitMQ(with_overrides(stack, dead_letters_max=3))
    small.bootstrap()  # what a `stack up` with that setting does
    conn = pika.BlockingConnection(amqp_parameters(stack, heartbeat_s=0, name="dead-policy-test"))
    try:
        channel = conn.channel()
        channel.queue_purge(DEAD)
        channel.confirm_delivery()
        for n in range(5):
            channel.basic_publish("", DEAD, str(n).encode())
        bodies = []
        for _ in range(5):
            method, _props, body = channel.basic_get(DEAD, auto_ack=True)
            if method is None:
                break
            bodies.append(body)
        assert bodies == [b"2", b"3", b"4"]
    finally:
        conn.close()
        RabbitMQ(stack).bootstrap()
    assert policy_definition(stack)["max-length"] == 100_000
