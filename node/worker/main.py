"""Run one worker process: its ``/metrics`` endpoint, signal handling and the :class:`Worker` loop.

    run_worker(cfg, "worker-3", concurrency=4)   # serves /metrics on cfg.bind_host(3):cfg.worker_http_port(3)

SIGTERM or SIGINT sets the stop event: the batch in hand is finished and acknowledged, unprocessed prefetched
deliveries go back to the queue, and the function returns 0 — or ends the process at once with status 0 when a
task abandoned at its timeout is still running, since Python would otherwise wait for its thread. SIGUSR1 writes
every thread's stack to the worker's log.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading

from prometheus_client import start_http_server

from node.config import Config
from node.errors import ServiceError
from node.metrics import WORKER_REGISTRY, expose_worker_series
from node.model.builtin import builtin_kinds
from node.runtime.collector import tune_collector
from node.runtime.stacks import dump_stacks_on_signal
from node.worker.worker import DEPENDENCIES, Worker

log = logging.getLogger(__name__)

MAX_WORKER_NUMBER = 99  # Config.worker_http_port covers workers 1..99


def worker_number(worker_id: str) -> int | None:
    """The trailing number of a worker id ("worker-12" -> 12), if it has one in 1..99."""
    match = re.search(r"(\d+)$", worker_id)
    number = int(match.group(1)) if match else None
    return number if number is not None and 1 <= number <= MAX_WORKER_NUMBER else None


def run_worker(cfg: Config, worker_id: str, concurrency: int) -> int:
    """Serve metrics (when the id has a number), run the worker until SIGTERM/SIGINT; the exit code."""
    worker = Worker(cfg, worker_id, concurrency)
    server = None
    number = worker_number(worker_id)
    if number is None:
        log.info("worker: %s has no number in 1..%d: no /metrics endpoint", worker_id, MAX_WORKER_NUMBER)
    else:
        port, address = cfg.worker_http_port(number), cfg.bind_host(number)
        try:
            expose_worker_series(builtin_kinds(), DEPENDENCIES)
            server, _thread = start_http_server(port, addr=address, registry=WORKER_REGISTRY)
        except OSError as exc:
            raise ServiceError(f"{worker_id}: cannot serve /metrics on {address}:{port} ({exc.strerror}); "
                               f"is another {worker_id} running?") from None
        log.info("worker: %s serves /metrics on http://%s:%d/metrics", worker_id, address, port)
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda _signum, _frame: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    dump_stacks_on_signal()
    tune_collector()
    try:
        worker.run(stop)
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
        if server is not None:
            server.shutdown()
    stragglers = worker.stragglers()
    if stragglers:  # the interpreter would wait for their threads at exit, possibly for hours
        log.info("worker: %s exits with %d timed-out task(s) still running", worker_id, stragglers)
        logging.shutdown()
        os._exit(0)
    return 0
