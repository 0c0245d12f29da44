"""``haorch node run``: a replica with its HTTP port, a dependency monitor and signal handling.

SIGTERM/SIGINT hand leadership over (the election lock is released before the process exits, so a standby
leads within milliseconds) and stop the node; SIGUSR1 writes every thread's stack to its log
(``node/runtime/stacks.py``).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pika

from node import metrics
from node.config import Config
from node.console import routes as console
from node.http.server import NodeHTTPServer
from node.model.builtin import builtin_kinds
from node.model.states import ExperimentState
from node.replica import Replica
from node.runtime.collector import tune_collector
from node.runtime.stacks import dump_stacks_on_signal
from node.stores.connect import amqp_parameters, neo4j_driver
from node.stores.queues import QUEUES
from node.stores.records import Records

log = logging.getLogger(__name__)


class DependencyMonitor:
    """Probes every dependency once a second (real requests) and exports ``haorch_dependency_up`` and
    ``haorch_queue_depth`` (and, while ``is_leader()``, ``haorch_experiments`` from MariaDB's counts by state);
    ``healthy()`` reads the latest result without blocking."""

    SERVICES = ("zookeeper", "mariadb", "neo4j", "rabbitmq")  # the probes of _probe_all, in order

    def __init__(self, cfg: Config, interval_s: float = 1.0, is_leader: Callable[[], bool] = lambda: False) -> None:
        self.cfg = cfg
        self.interval_s = interval_s
        self.is_leader = is_leader
        self.up: dict[str, bool] = {}
        self._amqp: pika.BlockingConnection | None = None  # used by the monitor thread only
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="deps", daemon=True)

    def start(self) -> DependencyMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        records = Records(self.cfg, retry_for_s=0.5)
        driver = neo4j_driver(self.cfg)
        try:
            while not self._stop.is_set():
                self._probe_all(records, driver)
                self._stop.wait(self.interval_s)
        finally:
            self._close_amqp()
            records.close()
            driver.close()

    def _probe_all(self, records: Records, driver) -> None:
        checks = {
            "zookeeper": lambda: any(_tcp(host, int(port)) for host, _, port in
                                     (member.rpartition(":") for member in self.cfg.zk_hosts.split("/")[0].split(","))),
            "mariadb": lambda: self._experiments(records),
            "neo4j": lambda: driver.execute_query("RETURN 1 AS one")[0][0]["one"] == 1,
            "rabbitmq": self._queue_depths,
        }
        for name, check in checks.items():
            try:
                ok = bool(check())
            except Exception:  # noqa: BLE001 - any failure is "down"
                ok = False
            self.up[name] = ok
            metrics.DEPENDENCY_UP.labels(name).set(1 if ok else 0)

    def _experiments(self, records: Records) -> bool:
        """Probe MariaDB; the acting leader also exports the experiments by state (others export none)."""
        if not self.is_leader():
            metrics.EXPERIMENTS.clear()
            return records.fence_epoch() >= 0
        counts = records.state_counts()
        for state in ExperimentState:
            metrics.EXPERIMENTS.labels(state).set(counts.get(state, 0))
        return True

    def _queue_depths(self) -> bool:
        """Passive declares on a connection kept across probes (dropped on any failure, reopened next time)."""
        try:
            if self._amqp is None:
                self._amqp = pika.BlockingConnection(amqp_parameters(self.cfg, heartbeat_s=0, name="haorch-monitor"))
            channel = self._amqp.channel()
            for queue in QUEUES:
                depth = channel.queue_declare(queue, passive=True).method.message_count
                metrics.QUEUE_DEPTH.labels(queue).set(depth)
            channel.close()
        except Exception:
            self._close_amqp()
            raise
        return True

    def _close_amqp(self) -> None:
        if self._amqp is not None:
            try:
                self._amqp.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
            self._amqp = None


def _tcp(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def run_node(cfg: Config, node_id: str, number: int) -> None:
    """Run replica ``node_id`` (host ``number``: its ports and address) in the foreground until SIGTERM/SIGINT."""
    http_port, beacon_port = cfg.node_http_port(number), cfg.node_beacon_port(number)
    shutdown = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: shutdown.set())
    dump_stacks_on_signal()
    metrics.expose_node_series(builtin_kinds(), QUEUES, DependencyMonitor.SERVICES)
    replica = Replica(cfg, node_id, beacon_port, number)
    deps = DependencyMonitor(cfg, is_leader=lambda: replica.role == "leader").start()

    def healthz() -> tuple[bool, dict[str, Any]]:
        ok = bool(deps.up) and all(deps.up.values())
        return ok, {"node_id": node_id, "alive": True, "dependencies": deps.up,
                    "uptime_s": round(time.time() - replica.started_at, 1)}

    def readyz() -> tuple[bool, dict[str, Any]]:
        session = replica.session_state()
        ok = session == "CONNECTED" and bool(deps.up) and all(deps.up.values())
        return ok, {"node_id": node_id, "role": replica.role, "epoch": replica.epoch, "session": session,
                    "ready": ok, "last_error": replica.last_error}

    http = NodeHTTPServer(cfg, http_port, healthz, readyz, bind_host=cfg.bind_host(number), node_id=node_id,
                          pages=[console.router]).start()
    log.info("node: %s on %s:%d id=%s", "https" if cfg.tls_cert else "http", cfg.bind_host(number), http_port,
             node_id)
    tune_collector()
    try:
        replica.run(shutdown)
    finally:
        deps.stop()
        http.stop()
