"""The ``ha`` topology's RabbitMQ cluster against three real nodes: it forms, haorch's queues are quorum queues with
a member on every node, the leader of ``haorch.responses`` killed (SIGKILL) while publishers publish with confirms
loses no confirmed message, the killed node rejoins, and stopping all three (epmd too) then starting them again
brings the same cluster back with its messages.

The cluster has its own state dir and ports (``HAORCH_CLUSTER_TEST_PORT_BASE``, default 400 above the session
stack's base, whose single RabbitMQ holds the epmd port of that base); the nodes are started and stopped through
their service classes (node/stack/rabbitmq.py), as ``haorch stack up --topology ha`` does.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pytest
from polling import wait_until

from node.config import HA_MEMBERS, RABBIT_VHOST, Config, load_config
from node.errors import DependencyError
from node.paths import REPO_ROOT
from node.runtime.process import rss_bytes
from node.stack.rabbitmq import RabbitMQ
from node.stores.connect import amqp_parameters
from node.stores.queues import QUEUES, REQUESTS, RESPONSES
from node.stores.rabbit import BatchPublisher, connect

pytestmark = pytest.mark.stack

CLUSTER_HOME = Path(str(os.environ.get("HAORCH_TEST_HOME", REPO_ROOT / ".haorch-test")) + "-rabbit-cluster")
CLUSTER_PORT_BASE = int(os.environ.get("HAORCH_CLUSTER_TEST_PORT_BASE",
                                       int(os.environ.get("HAORCH_TEST_PORT_BASE", "18100")) + 400))
READY_S = 120.0  # three blank nodes on a busy machine: ~10 s here
BATCH = 10  # messages per confirmed batch


def _log(message: str) -> None:
    print(f"[rabbit-cluster] {message}", flush=True)


def stop_all(nodes: list[RabbitMQ]) -> list[bool]:
    """Stop the nodes in parallel, as ``haorch stack down`` does."""
    with ThreadPoolExecutor(len(nodes)) as pool:
        return list(pool.map(lambda node: node.stop(), nodes))


def start_all(nodes: list[RabbitMQ]) -> float:
    """Start the nodes that do not run, wait until each answers AMQP and bootstrap (through node 1); seconds."""
    started = time.monotonic()
    for node in nodes:
        if not node.proc.alive():
            node.start()
    for node in nodes:
        wait_until(node.healthy, READY_S, f"{node.name} to answer AMQP", poll_s=0.25)
    nodes[0].bootstrap()
    return time.monotonic() - started


@pytest.fixture(scope="module")
def cfg() -> Config:
    return load_config(CLUSTER_HOME, port_base=CLUSTER_PORT_BASE, topology="ha")


@pytest.fixture(scope="module")
def nodes(cfg: Config) -> Iterator[list[RabbitMQ]]:
    """Three blank nodes, formed into a cluster and bootstrapped; all stopped at the end."""
    cluster = [RabbitMQ(cfg, m) for m in range(1, HA_MEMBERS + 1)]
    stop_all(cluster)
    shutil.rmtree(CLUSTER_HOME, ignore_errors=True)
    try:
        _log(f"formed and bootstrapped in {start_all(cluster):.1f} s")
        _log("RSS " + ", ".join(f"{n.name} {_rss_mb(n):.0f} MB" for n in cluster))
        yield cluster
    finally:
        stop_all(cluster)


def _rss_mb(node: RabbitMQ) -> float:
    return (rss_bytes(node.proc.pids()) or 0) / 2**20


def running_nodes(node: RabbitMQ) -> set[str]:
    out = node.cli("rabbitmqctl", "cluster_status", "--formatter", "json")
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout)["running_nodes"])


def queues(node: RabbitMQ) -> dict[str, dict]:
    """haorch's queues as node ``node`` lists them: type, leader, members, online members."""
    out = node.cli("rabbitmqctl", "list_queues", "-p", RABBIT_VHOST, "name", "type", "leader", "members", "online",
                   "--formatter", "json")
    assert out.returncode == 0, out.stderr
    return {q["name"]: q for q in json.loads(out.stdout)}


def connection_to(cfg: Config, node: RabbitMQ, name: str) -> pika.BlockingConnection:
    params = [p for p in amqp_parameters(cfg, name=name) if (p.host, p.port) == (node.address, node.port)]
    return pika.BlockingConnection(params)


def drain(conn: pika.BlockingConnection, queue: str, channel_resets: int = 3) -> list[bytes]:
    """Every message of ``queue`` (consumed and acknowledged) until none comes for a second.

    A quorum queue whose leader changes while we consume can make the broker refuse a later acknowledgement
    (``PRECONDITION_FAILED - unknown delivery tag``: the channel's pending deliveries went stale with the old
    leader) and close the channel. Its unacknowledged messages go back to the queue, so the drain opens a new
    channel and goes on, at most ``channel_resets`` times; the messages read twice are duplicates, never losses.
    """
    bodies: list[bytes] = []
    resets = 0
    while True:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=1000)
        last_tag = 0
        try:
            for method, _props, body in channel.consume(queue, inactivity_timeout=1.0):
                if method is None:
                    break
                bodies.append(body)
                last_tag = method.delivery_tag
                if last_tag % 500 == 0:
                    channel.basic_ack(last_tag, multiple=True)
            if last_tag:
                channel.basic_ack(last_tag, multiple=True)
            channel.cancel()
            channel.close()
            return bodies
        except pika.exceptions.ChannelClosedByBroker as exc:
            _log(f"drain of {queue}: the broker closed the channel after {len(bodies)} messages ({exc}); "
                 "reading on from a new channel")
            resets += 1
            if resets > channel_resets:
                raise


@dataclass
class Publisher:
    """Publishes numbered messages in confirmed batches until stopped; on a lost connection reconnects (the next
    cluster node first) and publishes the unconfirmed batch again."""

    cfg: Config
    name: str
    conn: pika.BlockingConnection
    confirmed: list[bytes] = field(default_factory=list)
    confirm_times: list[float] = field(default_factory=list)
    reconnects: int = 0
    resent: int = 0
    error: BaseException | None = None

    def run(self, stop: threading.Event) -> None:
        try:
            publisher = BatchPublisher(self.conn, confirm_timeout_s=20)
            seq = 0
            while not stop.is_set():
                batch = [f"{self.name}-{seq + i}".encode() for i in range(BATCH)]
                try:
                    publisher.publish_batch(RESPONSES, batch)
                except DependencyError:
                    self.resent += publisher.resent
                    self.reconnects += 1
                    self.conn = connect(self.cfg, self.name)
                    publisher = BatchPublisher(self.conn, confirm_timeout_s=20)
                    continue
                self.confirmed.extend(batch)
                self.confirm_times.append(time.monotonic())
                seq += BATCH
                time.sleep(0.01)
            self.resent += publisher.resent
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            if self.conn.is_open:
                self.conn.close()

    def gap_after(self, moment: float) -> float:
        """The longest time without a confirm from just before ``moment`` on."""
        times = self.confirm_times
        return max((b - a for a, b in itertools.pairwise(times) if b > moment), default=float("inf"))


def test_three_nodes_form_one_cluster(nodes: list[RabbitMQ]) -> None:
    names = {node.node_name for node in nodes}
    assert names == {f"haorch{CLUSTER_PORT_BASE}-{m}@localhost" for m in range(1, HA_MEMBERS + 1)}
    for node in nodes:
        assert running_nodes(node) == names, node.name
        assert node.status()["healthy"], node.name
    assert len({node.epmd.name for node in nodes}) == 1, "all on one machine: one shared epmd"


def test_haorch_queues_are_quorum_queues_with_a_member_on_every_node(nodes: list[RabbitMQ]) -> None:
    names = {node.node_name for node in nodes}
    listed = queues(nodes[1])
    assert set(listed) >= set(QUEUES)
    for queue in QUEUES:
        assert listed[queue]["type"] == "quorum", listed[queue]
        assert set(listed[queue]["members"]) == names, listed[queue]
        assert set(listed[queue]["online"]) == names, listed[queue]


def test_leader_killed_under_confirmed_publishing_loses_nothing_and_rejoins(cfg: Config,
                                                                           nodes: list[RabbitMQ]) -> None:
    leader = queues(nodes[0])[RESPONSES]["leader"]
    victim = next(node for node in nodes if node.node_name == leader)
    survivor = next(node for node in nodes if node is not victim)
    admin = connection_to(cfg, survivor, "cluster-test-admin")
    admin.channel().queue_purge(RESPONSES)
    admin.close()
    # one publisher on a surviving node (its queue's leader moves away under it), one on the victim (loses its
    # connection), and after the kill a new channel on a surviving node (RabbitMQ 3.10 nacks its publishes)
    on_survivor = Publisher(cfg, "survivor", connection_to(cfg, survivor, "cluster-test-survivor"))
    on_victim = Publisher(cfg, "victim", connection_to(cfg, victim, "cluster-test-victim"))
    late_conn = connection_to(cfg, survivor, "cluster-test-late")
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,)) for p in (on_survivor, on_victim)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(on_survivor.confirmed) > 200 and len(on_victim.confirmed) > 200, 30.0,
                   "both publishers under way")
        killed_at = time.monotonic()
        assert victim.proc.kill()
        late = BatchPublisher(late_conn, confirm_timeout_s=20)
        late.publish_batch(RESPONSES, [f"late-{i}".encode() for i in range(BATCH)])
        late_gap = time.monotonic() - killed_at
        late_resent = late.resent
        late_conn.close()
        wait_until(lambda: on_victim.reconnects and len(on_victim.confirm_times) > 0
                   and on_victim.confirm_times[-1] > killed_at + 1.0
                   and on_survivor.confirm_times[-1] > killed_at + 1.0, 30.0, "both publishers past the kill")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60.0)
    for publisher in (on_survivor, on_victim):
        assert publisher.error is None, f"{publisher.name}: {publisher.error!r}"
    gaps = {p.name: p.gap_after(killed_at) for p in (on_survivor, on_victim)}
    _log(f"leader {victim.name} killed: publish gap survivor {gaps['survivor']:.2f} s (resent "
         f"{on_survivor.resent}), victim {gaps['victim']:.2f} s (reconnects {on_victim.reconnects}), new channel "
         f"{late_gap:.2f} s (resent {late_resent})")
    assert max(*gaps.values(), late_gap) < 15.0, gaps

    conn = connection_to(cfg, survivor, "cluster-test-drain")
    drained = drain(conn, RESPONSES)
    conn.close()
    confirmed = [*on_survivor.confirmed, *on_victim.confirmed, *(f"late-{i}".encode() for i in range(BATCH))]
    lost = set(confirmed) - set(drained)
    _log(f"{len(confirmed)} confirmed, {len(drained)} consumed, {len(drained) - len(set(drained))} duplicates, "
         f"{len(lost)} lost")
    assert not lost, sorted(lost)[:10]

    restarted = time.monotonic()
    victim.start()
    wait_until(victim.healthy, READY_S, f"{victim.name} to answer AMQP again", poll_s=0.25)
    names = {node.node_name for node in nodes}
    wait_until(lambda: running_nodes(victim) == names, 60.0, "the cluster of three again")
    wait_until(lambda: all(set(q["online"]) == names for name, q in queues(survivor).items() if name in QUEUES),
               60.0, "every queue's member on the restarted node online")
    _log(f"{victim.name} restarted and rejoined in {time.monotonic() - restarted:.1f} s; RSS "
         + ", ".join(f"{n.name} {_rss_mb(n):.0f} MB" for n in nodes))


def test_stopping_all_nodes_then_starting_them_brings_the_same_cluster_back(cfg: Config,
                                                                            nodes: list[RabbitMQ]) -> None:
    start_all(nodes)  # a node an earlier test left stopped would make "all stopped" below fail for the wrong reason
    marks = [f"mark-{i}".encode() for i in range(BATCH)]
    conn = connect(cfg, "cluster-test-marks")
    BatchPublisher(conn).publish_batch(REQUESTS, marks)
    conn.close()
    pids = {pid for node in nodes for pid in (*node.proc.pids(), node.epmd.pid()) if pid}

    assert all(stop_all(nodes))
    assert not any(node.proc.alive() for node in nodes)
    assert not nodes[0].epmd.alive(), "the shared epmd stops with the last node"
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids), "a process outlived stop"

    _log(f"the stopped cluster is back in {start_all(nodes):.1f} s")
    names = {node.node_name for node in nodes}
    assert running_nodes(nodes[2]) == names
    conn = connect(cfg, "cluster-test-marks")
    try:
        assert set(marks) <= set(drain(conn, REQUESTS)), "durable messages survive a restart of the cluster"
    finally:
        conn.close()
