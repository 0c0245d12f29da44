"""The node's HTTP port (on ``cfg.host`` only): ``/metrics``, ``/healthz``, ``/readyz`` and the experiments API.

    GET  /healthz                          process alive, dependency view                 200 | 503
    GET  /readyz                           leader: acting; standby: ready to take over   200 | 503
    GET  /metrics                          Prometheus text format
    POST /api/experiments                  {"type", "experiment_id"?, "params"?} -> 201 (200 if it existed)
    GET  /api/experiments[?state=S]        list
    GET  /api/experiments/ID               status with tasks
    POST /api/experiments/ID/cancel        cancel

Errors are JSON ``{"error": "..."}`` with 400 (bad input), 404 (unknown id), 409 (conflict) or 503.
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

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, dict[str, Any]]]


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

    def __init__(self, cfg: Config, port: int, healthz: Probe, readyz: Probe, api: bool = True) -> None:
        self.cfg = cfg
        self.port = port
        self.healthz = healthz
        self.readyz = readyz
        self.api = api
        self._local = threading.local()
        self.server = ThreadingHTTPServer((cfg.host, port), self._handler())
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

            def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
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
                except HaorchError as exc:
                    return self._send(_status_for(exc), {"error": str(exc)})
                except Exception as exc:
                    log.exception("http: %s %s failed", method, self.path)
                    return self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    data = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    raise UsageError("request body is not JSON") from None
                if not isinstance(data, dict):
                    raise UsageError("request body must be a JSON object")
                return data

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
                    return self._send(200, exps.list(query.get("state", [None])[0]))
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
