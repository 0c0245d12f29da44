"""The API refuses a submit body from its Content-Length alone (413, 411, 400), before any store is touched: a
node's HTTP server with no stack behind it answers these."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import Config, load_config
from node.http.server import NodeHTTPServer
from node.model.api_limits import REQUEST_BODY_MAX_BYTES


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Config, int]]:
    cfg = load_config(tmp_path)
    with socket.socket() as probe:
        probe.bind((cfg.host, 0))
        port = probe.getsockname()[1]
    http_server = NodeHTTPServer(cfg, port, lambda: (True, {}), lambda: (True, {})).start()
    try:
        yield cfg, port
    finally:
        http_server.stop()


def _post(server: tuple[Config, int], headers: dict[str, str], body: bytes = b"") -> tuple[int, dict]:
    cfg, port = server
    conn = http.client.HTTPConnection(cfg.host, port, timeout=10)
    try:
        conn.putrequest("POST", "/api/experiments")
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_a_body_over_the_limit_is_refused_413_and_the_client_reads_the_answer(server: tuple[Config, int]) -> None:
    body = json.dumps({"type": "chain", "params": {"ms": "x" * 70_000}}).encode()
    code, out = _post(server, {"Content-Length": str(len(body))}, body)
    assert code == 413
    assert out == {"error": f"request body is {len(body)} bytes (limit {REQUEST_BODY_MAX_BYTES})"}


def test_a_body_announced_too_large_is_refused_without_being_waited_for(server: tuple[Config, int]) -> None:
    code, out = _post(server, {"Content-Length": str(10**12)})
    assert code == 413 and "1000000000000 bytes" in out["error"]


@pytest.mark.parametrize(("headers", "code", "words"), [
    ({}, 411, "Content-Length required"),
    ({"Content-Length": "12abc"}, 400, "invalid Content-Length '12abc'"),
    ({"Content-Length": "-5"}, 400, "invalid Content-Length"),
    ({"Content-Length": "9" * 5000}, 400, "invalid Content-Length"),
])
def test_a_missing_or_invalid_content_length_is_refused(server: tuple[Config, int], headers: dict[str, str],
                                                         code: int, words: str) -> None:
    got, out = _post(server, headers)
    assert got == code and words in out["error"]


def test_a_client_gone_before_the_answer_is_not_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A probe that gave up (a node resumed after a freeze answers a health check whose client is gone): one
    DEBUG line, no ERROR and no traceback."""
    cfg = load_config(tmp_path)
    answered = threading.Event()

    def slow_ready() -> tuple[bool, dict]:
        time.sleep(0.3)
        answered.set()
        return True, {"padding": "x" * 200_000}  # larger than the socket buffers: the write meets the reset

    with socket.socket() as probe:
        probe.bind((cfg.host, 0))
        port = probe.getsockname()[1]
    http_server = NodeHTTPServer(cfg, port, lambda: (True, {}), slow_ready).start()
    try:
        with caplog.at_level(logging.DEBUG, logger="node.http.server"):
            client = socket.create_connection((cfg.host, port))
            client.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # RST: the client is gone
            assert answered.wait(5)
            time.sleep(0.3)
    finally:
        http_server.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in capsys.readouterr().err
    assert any("went away" in r.getMessage() for r in caplog.records)
