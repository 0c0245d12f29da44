"""A node's HTTP port (on its host's address, or ``bind_address``): the app of ``node/http/app.py`` (whose
docstring is the route table) served by uvicorn from a daemon thread; HTTPS when ``tls_cert`` and ``tls_key`` are
set. The socket is bound in the constructor, so a port in use fails there and connections made right after
``start()`` wait in its backlog rather than being refused.

A request uvicorn cannot parse (a malformed request line or header, a Content-Length h11 refuses) gets 400 with
the JSON error body every other error has (:class:`JsonErrorH11Protocol`).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Sequence

import uvicorn
from fastapi import APIRouter
from prometheus_client import CollectorRegistry
from uvicorn.protocols.http.h11_impl import H11Protocol

from node.config import Config
from node.http.app import create_app
from node.http.context import AppContext, Probe
from node.metrics import NODE_REGISTRY

log = logging.getLogger(__name__)
logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start and stop lines, per server, are noise

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0  # stop() waits this long for the serving thread
GRACEFUL_S = 1  # open requests get this long to finish when the server stops
BACKLOG = 1024


class JsonErrorH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with the one-line JSON error body for a request it cannot parse."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": "invalid HTTP request: malformed request line or header (e.g. Content-Length "
                                    "that is not a decimal count)"}).encode()
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.transport.close()


class NodeHTTPServer:
    """Serves a node's endpoints from a daemon thread; ``healthz``/``readyz`` are callables of the owner;
    ``api=False`` (workers): only ``/metrics``, ``/healthz`` and ``/readyz``; ``pages``: routers served beside the
    API (a node's web console)."""

    def __init__(self, cfg: Config, port: int, healthz: Probe, readyz: Probe, api: bool = True,
                 bind_host: str | None = None, node_id: str = "", registry: CollectorRegistry = NODE_REGISTRY,
                 pages: Sequence[APIRouter] = ()) -> None:
        self.cfg = cfg
        self.port = port
        self.ctx = AppContext(cfg, healthz, readyz, api, node_id, registry)
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it a response's
        # body waited for the client's delayed ACK of its headers (40 ms per request, measured by bench console)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((bind_host or cfg.host, port))
            self.socket.listen(BACKLOG)
        except OSError:
            self.socket.close()
            raise
        config = uvicorn.Config(create_app(self.ctx, pages), log_config=None, access_log=False, lifespan="off",
                                http=JsonErrorH11Protocol, loop="asyncio", backlog=BACKLOG,
                                timeout_graceful_shutdown=GRACEFUL_S,
                                ssl_certfile=cfg.tls_cert or None, ssl_keyfile=cfg.tls_key or None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, name=f"http-{port}", daemon=True)

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        except BaseException:  # the thread's end is all there is to report: start() and stop() see it
            log.exception("http: the server on port %d stopped", self.port)

    def start(self) -> NodeHTTPServer:
        """Serve from a daemon thread; returns once uvicorn serves. RuntimeError when it does not start within
        START_TIMEOUT_S (an unreadable TLS certificate or key: the log says which)."""
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.socket.close()
                raise RuntimeError(f"the HTTP server on port {self.port} did not start (see the log)")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving (open requests get GRACEFUL_S), wait up to STOP_TIMEOUT_S for the thread, then close the
        store connections the handlers opened."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(STOP_TIMEOUT_S)
        self.socket.close()
        self.ctx.close()
