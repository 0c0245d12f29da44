"""The node's HTTP port (on its host's address, or ``bind_address``): ``/metrics``, ``/healthz``, ``/readyz``
and the experiments API.

    GET  /healthz                          process alive, dependency view                 200 | 503
    GET  /readyz                           leader: acting; standby: ready to take over   200 | 503
    GET  /metrics                          Prometheus text format
    POST /api/experiments                  {"type", "experiment_id"?, "params"?} -> 201 (200 if it existed)
    GET  /api/experiments[?state=S&limit=N&after=CURSOR]
                                           one page, oldest first; header X-Next-Cursor: the next page's cursor
    GET  /api/experiments/ID               status with tasks
    POST /api/experiments/ID/cancel        cancel

Errors are JSON ``{"error": "..."}`` with 400 (bad input), 404 (unknown id), 409 (conflict), 411 (a submit without
Content-Length), 413 (a body over ``REQUEST_BODY_MAX_BYTES``, refused before it is read) or 503. The limits are
declared in ``node/model/api_limits.py``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node.config import Config
from node.errors import ConflictError, HaorchError, NotFoundError, UsageError
from node.experiments import Experiments
from node.metrics import NODE_REGISTRY
from node.model.api_limits import REQUEST_BODY_MAX_BYTES

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, dict[str, Any]]]
DRAIN_MAX_BYTES = 1024 * 1024  # of a refused body, discarded so that the client reads the answer, not a reset


class _Refused(UsageError):
    """A submit refused from its Content-Length, before its body is read, with its own status (400, 411, 413)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _is_count(text: str) -> bool:
    """Decimal digits that int() takes (it refuses thousands of them), as Content-Length and limit must be."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def _status_for(exc: HaorchError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, UsageError):
        return 400
    return 503


class NodeHTTPServer:
    """Serves a node's endpoints from a daemon thread; ``healthz``/``readyz`` are callables of the owner."""

    def __init__(self, cfg: Config, port: int, healthz: Probe, readyz: Probe, api: bool = True,
                 bind_host: str | None = None) -> None:
        self.cfg = cfg
        self.port = port
        self.healthz = healthz
        self.readyz = readyz
        self.api = api
        self._local = threading.local()
        self.server = ThreadingHTTPServer((bind_host or cfg.host, port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"http-{port}", daemon=True)

    def start(self) -> NodeHTTPServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def experiments(self) -> Experiments:
        """One Experiments (connections) per server thread."""
        if not hasattr(self._local, "experiments"):
            self._local.experiments = Experiments(self.cfg)
        return self._local.experiments

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "haorch"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http: " + fmt, *args)

            def _send(self, code: int, body: Any, content_type: str = "application/json",
                      headers: dict[str, str] | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                try:
                    self._dispatch(method)
                except (BrokenPipeError, ConnectionResetError):  # e.g. a probe that timed out while we were frozen
                    log.debug("http: %s %s: the client went away before the answer", method, self.path)

            def _dispatch(self, method: str) -> None:
                url = urlparse(self.path)
                parts = [p for p in url.path.split("/") if p]
                try:
                    if method == "GET" and parts == ["metrics"]:
                        return self._send(200, generate_latest(NODE_REGISTRY), CONTENT_TYPE_LATEST)
                    if method == "GET" and parts in (["healthz"], ["readyz"]):
                        ok, info = (outer.healthz if parts == ["healthz"] else outer.readyz)()
                        return self._send(200 if ok else 503, info)
                    if outer.api and parts[:2] == ["api", "experiments"]:
                        return self._api(method, parts[2:], parse_qs(url.query))
                    return self._send(404, {"error": f"no route {method} {url.path}"})
                except _Refused as exc:
                    self._send(exc.status, {"error": str(exc)})
                    return self._drain()
                except HaorchError as exc:
                    return self._send(_status_for(exc), {"error": str(exc)})
                except (BrokenPipeError, ConnectionResetError):
                    raise
                except Exception as exc:
                    log.exception("http: %s %s failed", method, self.path)
                    return self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

            def _body(self) -> dict[str, Any]:
                """The JSON object in the body; refused (411, 400, 413) from its Content-Length alone, unread."""
                declared = self.headers.get("Content-Length")
                if declared is None:
                    raise _Refused(411, f"Content-Length required (request body limit {REQUEST_BODY_MAX_BYTES} bytes)")
                if not _is_count(declared):
                    raise _Refused(400, f"invalid Content-Length {declared[:40]!r}")
                length = int(declared)
                if length > REQUEST_BODY_MAX_BYTES:
                    raise _Refused(413, f"request body is {length} bytes (limit {REQUEST_BODY_MAX_BYTES})")
                try:
                    data = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    raise UsageError("request body is not JSON") from None
                if not isinstance(data, dict):
                    raise UsageError("request body must be a JSON object")
                return data

            def _drain(self) -> None:
                """After a refusal: discard what the client sends of its body (bounded in bytes and time), then
                close, so that it reads the answer instead of a reset of a connection with unread data."""
                self.close_connection = True
                declared = self.headers.get("Content-Length", "")
                left = min(int(declared), DRAIN_MAX_BYTES) if _is_count(declared) else 0
                self.connection.settimeout(1.0)
                try:
                    while left > 0:
                        chunk = self.rfile.read1(min(left, 65536))
                        if not chunk:
                            break
                        left -= len(chunk)
                except OSError:  # the client gave up, or was slower than the timeout: closing is all that is left
                    pass

            def _api(self, method: str, rest: list[str], query: dict[str, list[str]]) -> None:
                exps = outer.experiments()
                if method == "POST" and not rest:
                    body = self._body()
                    params = body.get("params") or {}
                    if not isinstance(body.get("type"), str) or not isinstance(params, dict):
                        raise UsageError("expected {\"type\": str, \"experiment_id\"?: str, \"params\"?: object}")
                    out = exps.submit(body["type"], body.get("experiment_id"), {k: str(v) for k, v in params.items()})
                    return self._send(201 if out["created"] else 200, out)
                if method == "GET" and not rest:
                    limit = query.get("limit", [None])[0]
                    if limit is not None and not _is_count(limit):
                        raise UsageError(f"limit must be a positive integer, got {limit[:40]!r}")
                    page = exps.list(query.get("state", [None])[0], None if limit is None else int(limit),
                                     query.get("after", [None])[0])
                    return self._send(200, page.rows, headers={"X-Next-Cursor": page.next} if page.next else None)
                if method == "GET" and len(rest) == 1:
                    return self._send(200, exps.status(rest[0]))
                if method == "POST" and len(rest) == 2 and rest[1] == "cancel":
                    return self._send(200, exps.cancel(rest[0]))
                return self._send(404, {"error": f"no route {method} /api/experiments/{'/'.join(rest)}"})

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

        return Handler
