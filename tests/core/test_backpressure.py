"""Backpressure (issue 16): a submission beyond ``max_in_flight`` experiments QUEUED or RUNNING is refused — Busy
in Python, HTTP 429 with Retry-After through the API, exit code 75 from the CLI — and nothing is stored; a
resubmission of an existing id is still answered. No cluster runs here, so what is submitted stays QUEUED; the
test cancels it at the end (out of flight) for the modules after it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from core_harness import unique

from node.access.tokens import Tokens
from node.client import Client
from node.config import Config, with_overrides
from node.errors import Busy
from node.experiments import Experiments
from node.http.server import NodeHTTPServer
from node.stores.records import Records

pytestmark = pytest.mark.stack
ROOM = 3  # experiments admitted above those already in flight


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def bounded(stack: Config) -> Iterator[tuple[Config, list[str]]]:
    """A config whose bound leaves room for ROOM more experiments; cancels what the test submitted."""
    records = Records(stack)
    try:
        limit = records.in_flight() + ROOM
    finally:
        records.close()
    submitted: list[str] = []
    yield with_overrides(stack, max_in_flight=limit), submitted
    with Experiments(stack) as exps:
        for experiment_id in submitted:
            exps.cancel(experiment_id)


def test_a_submission_beyond_the_bound_is_refused_and_stores_nothing(bounded: tuple[Config, list[str]]) -> None:
    cfg, submitted = bounded
    ids = [unique("bp") for _ in range(ROOM + 1)]
    with Experiments(cfg) as exps:
        for experiment_id in ids[:ROOM]:
            exps.submit("chain", experiment_id)
            submitted.append(experiment_id)
        with pytest.raises(Busy, match=r"busy: .* experiments in flight, at most .* retry after 5 s") as refused:
            exps.submit("chain", ids[ROOM])
        assert refused.value.retry_after_s == 5 and refused.value.exit_code == 75
        assert not exps.records.exists(ids[ROOM])
        assert exps.submit("chain", ids[0])["created"] is False  # a resubmission is answered
        with pytest.raises(Busy):
            exps.submit_many("chain", [unique("bp-many")])


def test_the_api_answers_429_with_retry_after_and_the_cli_exits_75(bounded: tuple[Config, list[str]]) -> None:
    cfg, submitted = bounded
    records = Records(cfg)
    token = Tokens(records).create("operator", unique("bp-op"), "test")["token"]
    records.close()

    def probe() -> tuple[bool, dict[str, Any]]:
        return True, {}

    port = free_port(cfg.host)
    server = NodeHTTPServer(cfg, port, probe, probe, node_id="bp-node").start()
    try:
        url = f"http://{cfg.host}:{port}"
        with Client(url, token) as api:
            for _ in range(ROOM):
                submitted.append(api.submit("chain")["experiment_id"])
            refused = httpx.post(f"{url}/api/experiments", json={"type": "chain"},
                                 headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
            assert list(refused.json()) == ["error"] and refused.json()["error"].startswith("busy: ")
            with pytest.raises(Busy) as busy:
                api.submit_many("chain", [unique("bp-batch")])
            assert busy.value.retry_after_s == 5
        env = {**os.environ, "HAORCH_HOME": str(cfg.home), "HAORCH_PORT_BASE": str(cfg.port_base),
               "HAORCH_URL": url, "HAORCH_TOKEN": token}
        done = subprocess.run([sys.executable, "-m", "node.cli", "submit", "chain"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 75 and done.stderr.startswith("haorch: busy: "), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    finally:
        server.stop()
