"""No input can crash a replica (issue 12): hypothesis-generated and hand-made hostile bodies on every queue and on
``POST /api/experiments`` of a real 3-node cluster with 2 workers, while good experiments run.

Checked: no node and no worker process exited, every message the decoders reject (and every well-formed message
about no experiment) is in ``haorch.dead`` with an ``x-haorch-reason``, every good experiment COMPLETED (with the
invariant verifier clean), and the API answered every bad request with a 4xx. Hypothesis runs derandomized, so the
bodies are the same in every run.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pika
import pytest
from ha_harness import NODES, finish
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polling import wait_until
from strategies import GOOD, POISON, api_bodies, bodies, dumps

from node import cluster
from node.access.tokens import Tokens
from node.config import Config
from node.errors import MalformedMessage
from node.model.limits import INT_MAX
from node.model.messages import Rejected, SubmissionNotice, TaskRequest, TaskResponse, unpack_responses
from node.stores.connect import amqp_parameters
from node.stores.queues import DEAD, REQUESTS, RESPONSES, SUBMISSIONS
from node.stores.records import Records

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("three_nodes")]

WORKERS = 2
PER_QUEUE = 60  # generated bodies per queue (plus the hand-made ones below): about 200 messages
API_REQUESTS = 40
FUZZ = settings(max_examples=PER_QUEUE, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])
DECODERS: dict[str, Any] = {RESPONSES: TaskResponse, SUBMISSIONS: SubmissionNotice, REQUESTS: TaskRequest}

HOSTILE = [
    (RESPONSES, POISON),  # the message of the issue
    (SUBMISSIONS, b'{"v":1,"experiment_id":"\\ud800"}'),
    (REQUESTS, dumps({**GOOD[TaskRequest], "experiment_id": "\ud800"})),
    (REQUESTS, dumps({**GOOD[TaskRequest], "params": {"file": "caf\udce9"}})),
    (RESPONSES, dumps({**GOOD[TaskResponse], "outcome": "failure", "result": None, "error": "x\udcff"})),
    (RESPONSES, dumps({**GOOD[TaskResponse], "attempt": 2**40})),
    (RESPONSES, dumps({**GOOD[TaskResponse], "attempt": INT_MAX})),  # well-formed: no such experiment
    (RESPONSES, dumps({**GOOD[TaskResponse], "started_at": 10**400})),
    (RESPONSES, dumps({**GOOD[TaskResponse], "ended_at": float("inf")})),
    (RESPONSES, dumps({**GOOD[TaskResponse], "result": json.loads("[" * 40 + "]" * 40)})),
    (RESPONSES, dumps({**GOOD[TaskResponse], "result": {"x": "y" * 300_000}})),
    (RESPONSES, b'{"v":1,"result":' + b"[" * 5000 + b"]" * 5000 + b"}"),
    (RESPONSES, b"\xff\xfe\x00"),
    (REQUESTS, dumps({**GOOD[TaskRequest], "epoch": -1})),
    (REQUESTS, dumps({**GOOD[TaskRequest], "executor": "no-such-executor"})),  # well-formed: fails, then dead
    (SUBMISSIONS, dumps(GOOD[SubmissionNotice])),  # well-formed: a notice for no experiment is ignored
]


@contextmanager
def _publisher(cfg: Config) -> Iterator[Callable[[str, bytes], None]]:
    conn = pika.BlockingConnection(amqp_parameters(cfg, heartbeat_s=0, name="poison-tests"))
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        yield lambda queue, body: channel.basic_publish("", queue, body, persistent)
    finally:
        conn.close()


def _drain(cfg: Config, queue: str, into: list[tuple[dict, bytes]]) -> None:
    """Consume (and ack) what ``queue`` holds now, appending (headers, body) pairs."""
    conn = pika.BlockingConnection(amqp_parameters(cfg, heartbeat_s=0, name="poison-tests"))
    try:
        channel = conn.channel()
        while (got := channel.basic_get(queue, auto_ack=True))[0] is not None:
            into.append((got[1].headers or {}, got[2]))
    finally:
        conn.close()


def _pids(cfg: Config) -> dict[str, int | None]:
    nodes = {f"node-{n}": cluster.node_process(cfg, n).pid() for n in range(1, NODES + 1)}
    return nodes | {f"worker-{n}": cluster.worker_process(cfg, n).pid() for n in range(1, WORKERS + 1)}


def _expected(sent: list[tuple[str, bytes]]) -> tuple[Counter, set[tuple]]:
    """What must reach haorch.dead: (source queue, body) of every rejected or unknown-experiment message — of a pack
    of responses (a JSON array), each bad or unknown item alone, as its own JSON — and the keys of the responses to
    well-formed requests (the workers answer them; the leader finds no such task)."""
    bodies_: Counter = Counter()
    answered: set[tuple] = set()
    for queue, body in sent:
        if queue == RESPONSES:
            try:
                items = unpack_responses(body)
            except MalformedMessage:
                bodies_[(queue, body)] += 1
                continue
            packed = len(items) > 1 or body[:1] == b"["
            for item in items:
                bodies_[(queue, item.body if isinstance(item, Rejected) else item.encode() if packed else body)] += 1
            continue
        try:
            message = DECODERS[queue].decode(body)
        except MalformedMessage:
            bodies_[(queue, body)] += 1
            continue
        if queue == REQUESTS:
            answered.add((message.experiment_id, message.task, message.attempt))
    return bodies_, answered


def _fuzz_queues(cfg: Config) -> list[tuple[str, bytes]]:
    sent = list(HOSTILE)
    with _publisher(cfg) as publish:
        for queue, body in HOSTILE:
            publish(queue, body)
        for queue in DECODERS:
            _sender(queue, publish, sent)()
    return sent


def _sender(queue: str, publish: Callable[[str, bytes], None], sent: list[tuple[str, bytes]]) -> Callable[[], None]:
    @FUZZ
    @given(body=bodies(DECODERS[queue]))
    def send(body: bytes) -> None:
        publish(queue, body)
        sent.append((queue, body))
    return send


def _post(cfg: Config, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection(cfg.host, cfg.node_http_port(1), timeout=10)
    try:
        conn.putrequest("POST", "/api/experiments", skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        return conn.getresponse().status
    finally:
        conn.close()


def _fuzz_api(cfg: Config) -> list[tuple[int, bytes, dict[str, str]]]:
    """Fuzzed submits with an operator's token: they reach the body checks (without one, all would be 401)."""
    answers = []
    token = Tokens(Records(cfg)).create("operator", f"test-poison-{uuid.uuid4().hex[:8]}", "test")["token"]
    auth = {"Authorization": f"Bearer {token}"}
    header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
    content_types = st.sampled_from(["application/json", "text/plain", "", "application/json; charset=latin-1"])

    @settings(FUZZ, max_examples=API_REQUESTS)
    @given(body=api_bodies(), content_type=content_types, extra=header_values)
    def post(body: bytes, content_type: str, extra: str) -> None:
        headers = {**auth, "Content-Type": content_type, "Content-Length": str(len(body)), "X-Fuzz": extra}
        answers.append((_post(cfg, body, headers), body, headers))
    post()
    chain = dumps({"type": "chain", "params": {"ms": "\ud800"}})
    for body, headers in [
        (chain, {"Content-Length": str(len(chain))}),
        (dumps({"type": "chain", "params": {"ms": "x" * 70_000}}), {"Content-Length": "70100"}),
        (b"{}", {"Content-Length": "-1"}),
        (b"{}", {"Content-Length": "abc"}),
        (b"{}", {"Content-Length": "9" * 30}),
        (b"{}", {"Content-Length": str(10**9)}),
        (b"", {}),
    ]:
        answers.append((_post(cfg, body, {**auth, **headers}), body, headers))
    return answers


def test_fuzzed_and_poison_input_is_dead_lettered_and_no_process_exits(ha) -> None:
    cfg = ha.cfg
    dead: list[tuple[dict, bytes]] = []
    _drain(cfg, DEAD, [])  # dead letters of earlier tests are not this test's
    before = _pids(cfg)
    assert all(before.values()), before
    load = ha.load(20, 40).start()
    wait_until(lambda: load.done >= 8, 30, "load did not start")
    t0 = time.monotonic()

    sent = _fuzz_queues(cfg)
    answers = _fuzz_api(cfg)
    print(f"\nfuzz: {len(sent)} messages, {len(answers)} API requests in {time.monotonic() - t0:.1f} s")

    finish(cfg, ha.exps, load)  # every good experiment COMPLETED; the verifier finds no violation
    want_bodies, want_answers = _expected(sent)

    def all_dead() -> bool:
        _drain(cfg, DEAD, dead)
        got = Counter((h.get("x-haorch-source-queue"), body) for h, body in dead)
        keys = set()
        for headers, body in dead:
            if headers.get("x-haorch-source-queue") == RESPONSES:
                try:
                    r = TaskResponse.decode(body)
                    keys.add((r.experiment_id, r.task, r.attempt))
                except MalformedMessage:
                    pass
        return not (want_bodies - got) and want_answers <= keys

    wait_until(all_dead, 60, "every bad message in haorch.dead", poll_s=0.5)
    assert all(h.get("x-haorch-reason") for h, _ in dead), [h for h, _ in dead if not h.get("x-haorch-reason")]
    assert len(want_bodies) > 100 and len(want_answers) > 0, (len(want_bodies), len(want_answers))
    assert _pids(cfg) == before, "a node or a worker exited"
    assert all(400 <= status < 500 for status, _, _ in answers), [a for a in answers if not 400 <= a[0] < 500]
    assert any(h.get("x-haorch-source-queue") == RESPONSES and b == POISON for h, b in dead)
    statuses = Counter(status for status, _, _ in answers)
    reasons = Counter(h["x-haorch-reason"].split(":")[0][:40] for h, _ in dead)
    print(f"API statuses {dict(statuses)}; dead letters {len(dead)}: {reasons.most_common(8)}")
