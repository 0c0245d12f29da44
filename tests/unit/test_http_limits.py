"""The API refuses a submit body from its Content-Length alone (413, 411, 400), before any store is touched and
before the token is checked: a node's HTTP server with no stack behind it answers these. uvicorn's parser (h11)
refuses a Content-Length that is not a decimal count itself, with the same JSON error body."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.client import Client
from node.config import Config, load_config
from node.console.probes import probe_nodes
from node.errors import NotAuthenticated, ServiceError, UsageError
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
    ({"Transfer-Encoding": "chunked"}, 411, "chunked body is not accepted"),
    ({"Content-Length": "12abc"}, 400, "Content-Length"),
    ({"Content-Length": "-5"}, 400, "Content-Length"),
    ({"Content-Length": "9" * 5000}, 400, "Content-Length"),
])
def test_a_missing_or_invalid_content_length_is_refused(server: tuple[Config, int], headers: dict[str, str],
                                                         code: int, words: str) -> None:
    got, out = _post(server, headers)
    assert got == code and words in out["error"]


def test_a_client_gone_before_the_answer_is_not_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A probe that gave up (a node resumed after a freeze answers a health check whose client is gone): no ERROR
    and no traceback, and the server goes on answering."""
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
        with caplog.at_level(logging.DEBUG):
            client = socket.create_connection((cfg.host, port))
            client.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # RST: the client is gone
            assert answered.wait(5)
            time.sleep(0.3)
            with urllib.request.urlopen(f"http://{cfg.host}:{port}/healthz", timeout=5) as resp:
                assert resp.status == 200
    finally:
        http_server.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in capsys.readouterr().err


def test_an_api_request_without_a_valid_token_is_refused_401(server: tuple[Config, int]) -> None:
    """A malformed token is refused without a query: no stack is needed to answer it."""
    cfg, port = server
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Cookie": "haorch_token=nope"}):
        conn = http.client.HTTPConnection(cfg.host, port, timeout=10)
        try:
            conn.request("GET", "/api/experiments", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 401 and resp.getheader("WWW-Authenticate") == "Bearer", body
            assert list(json.loads(body)) == ["error"] and body.count(b"\n") == 0
        finally:
            conn.close()


def test_unknown_routes_and_methods_answer_one_line_of_json(server: tuple[Config, int]) -> None:
    cfg, port = server
    for method, path, code in (("GET", "/nope", 404), ("DELETE", "/healthz", 405), ("GET", "/api/nope", 404)):
        conn = http.client.HTTPConnection(cfg.host, port, timeout=10)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            assert resp.status == code
            assert json.loads(resp.read())["error"].startswith(("no route", "method"))
        finally:
            conn.close()


def test_a_worker_app_serves_only_the_probes_and_metrics(tmp_path: Path) -> None:
    cfg = load_config(tmp_path)
    with socket.socket() as probe:
        probe.bind((cfg.host, 0))
        port = probe.getsockname()[1]
    http_server = NodeHTTPServer(cfg, port, lambda: (True, {}), lambda: (True, {}), api=False).start()
    try:
        for path, code in (("/metrics", 200), ("/healthz", 200), ("/api/experiments", 404), ("/openapi.json", 404)):
            conn = http.client.HTTPConnection(cfg.host, port, timeout=10)
            try:
                conn.request("GET", path)
                assert conn.getresponse().status == code, path
            finally:
                conn.close()
    finally:
        http_server.stop()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key."""
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_the_console_probes_an_https_node_trusting_its_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = load_config(tmp_path, tls_cert=str(cert), tls_key=str(key), port_base=port - 71)  # node-1's port
    assert cfg.node_url(1) == f"https://127.0.0.1:{port}"
    ready = {"node_id": "node-1", "role": "leader", "epoch": 3, "session": "CONNECTED"}
    http_server = NodeHTTPServer(cfg, port, lambda: (True, {"dependencies": {"mariadb": True}}),
                                 lambda: (True, ready)).start()
    try:
        (view,) = probe_nodes(cfg, [1], "node-1")
        assert view.readyz == ready and view.role == "leader" and view.dependencies == {"mariadb": True}
    finally:
        http_server.stop()


def test_tls_serves_https_with_the_configured_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    cfg = load_config(tmp_path, tls_cert=str(cert), tls_key=str(key))
    with socket.socket() as probe:
        probe.bind((cfg.host, 0))
        port = probe.getsockname()[1]
    http_server = NodeHTTPServer(cfg, port, lambda: (True, {"ok": 1}), lambda: (True, {})).start()
    try:
        with Client(f"https://{cfg.host}:{port}", verify=str(cert)) as client:
            assert client.http.get("/healthz").json() == {"ok": 1}
            with pytest.raises(NotAuthenticated):
                client.list()
        with pytest.raises(ServiceError, match="did not answer"), Client(f"http://{cfg.host}:{port}") as plain:
            plain.list()
    finally:
        http_server.stop()


def test_tls_needs_both_a_certificate_and_a_key(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="tls_cert and tls_key go together"):
        load_config(tmp_path, tls_cert="/x.pem")
