"""``haorch stack up|down|status``: start, stop and inspect the seven service processes as one unit.

``up`` starts only what is not running (all at once: the ZooKeeper members need each other for a quorum),
waits for each service's real probe with progress on stderr, then bootstraps users, schemas and queues
idempotently. ``down`` stops exactly the processes recorded in the state dir. A service the config names as
external (``zookeeper``, ``rabbitmq``, ``mariadb``, ``neo4j``, ``prometheus`` settings) is not started, stopped or
listed; ``up`` only puts haorch's schemas and queues on an external MariaDB, Neo4j and RabbitMQ (their users are
the operator's: docs/ARCHITECTURE.md, "External services").
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from node.config import ZK_MEMBERS, Config, record_runtime, recorded_runtime, recorded_topology, with_overrides
from node.errors import HaorchError, ServiceError, UsageError
from node.runtime.handle import Handle
from node.runtime.programs import names, recorded
from node.stack.galera import galera_members
from node.stack.mariadb import MariaDB
from node.stack.neo4j import Neo4j
from node.stack.prometheus import Prometheus
from node.stack.rabbitmq import RabbitMQ, rabbitmq_cluster
from node.stack.service import Service
from node.stack.zookeeper import ZooKeeperMember
from node.stores import mysql_schema, neo4j_schema
from node.stores.queues import declare_topology

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def _all_services(cfg: Config) -> list[Service]:
    zk: list[Service] = [ZooKeeperMember(cfg, m) for m in range(1, ZK_MEMBERS + 1)]
    if cfg.topology == "ha":
        return [*zk, *rabbitmq_cluster(cfg), *galera_members(cfg), Neo4j(cfg), Prometheus(cfg)]
    return [*zk, RabbitMQ(cfg), MariaDB(cfg), Neo4j(cfg), Prometheus(cfg)]


def services(cfg: Config) -> list[Service]:
    """The managed stack, in start order: every service the config does not name as external."""
    return [s for s in _all_services(cfg) if not cfg.external(s.name)]


def _bootstrap_external(cfg: Config, progress: Progress) -> None:
    """haorch's schemas and queues on the external services that hold them (idempotent)."""
    if cfg.external("mariadb"):
        mysql_schema.ensure_schema(cfg)
        progress(f"mariadb: external at {cfg.mariadb}: schema in place")
    if cfg.external("neo4j"):
        neo4j_schema.ensure_schema(cfg)
        progress(f"neo4j: external at {cfg.neo4j}: schema in place")
    if cfg.external("rabbitmq"):
        declare_topology(cfg)
        progress(f"rabbitmq: external at {cfg.rabbitmq}: queues in place")


@dataclass
class UpResult:
    started: list[str]
    already_running: list[str]
    seconds: float


def wait_ready(service: Service, progress: Progress) -> None:
    start = time.monotonic()
    deadline = start + service.start_timeout_s
    last_error = "no answer"
    while time.monotonic() < deadline:
        if not service.proc.alive():
            raise ServiceError(f"{service.name} exited during start-up; {service.log_hint()}")
        try:
            service.probe()
        except Exception as exc:  # noqa: BLE001 - keep probing until the deadline
            last_error = str(exc) or type(exc).__name__
            time.sleep(0.25)
            continue
        progress(f"{service.name} ready ({time.monotonic() - start:.1f} s)")
        return
    raise ServiceError(f"{service.name} did not become ready within {service.start_timeout_s:.0f} s "
                       f"({last_error}); {service.log_hint()}")


def up(cfg: Config, progress: Progress = lambda _m: None) -> UpResult:
    """Start what is not running, wait until every service answers, bootstrap schemas. Idempotent."""
    t0 = time.monotonic()
    _check_runtime(cfg)
    if cfg.runtime == "docker":
        from node.containers.images import ensure_images

        ensure_images(progress)
    stack = services(cfg)
    to_start = [s for s in stack if not s.proc.alive()]
    running = [s.name for s in stack if s not in to_start]
    for service in to_start:  # fail before starting anything if a binary is missing or a port is taken
        service.check_binaries()
        service.check_ports_free()
    if to_start:
        record_runtime(cfg)
    for service in to_start:
        progress(f"{service.name} starting on port {service.port}")
        service.start()
    with ThreadPoolExecutor(max_workers=max(1, len(stack))) as pool:
        futures = {s.name: pool.submit(wait_ready, s, progress) for s in to_start}
        for future in futures.values():
            future.result()
        boots = {s.name: pool.submit(s.bootstrap) for s in stack}
        for name, future in boots.items():
            try:
                future.result()
            except HaorchError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise ServiceError(f"{name}: bootstrap failed: {type(exc).__name__}: {exc}") from None
    _bootstrap_external(cfg, progress)
    progress("schemas, users and queues in place")
    return UpResult([s.name for s in to_start], running, time.monotonic() - t0)


def _check_runtime(cfg: Config) -> None:
    """Refuse to start a stack in one runtime or topology while the state dir's programs run in the one it
    recorded."""
    topology = recorded_topology(cfg.home)
    if topology not in (None, cfg.topology):
        running = [s.name for s in services(with_overrides(cfg, topology=topology)) if s.proc.alive()]
        if running:
            raise UsageError(f"the stack of {cfg.home} runs in the {topology} topology ({', '.join(running)}); "
                             f"stop it first (`haorch stack down`) or use --topology {topology}")
    recorded = recorded_runtime(cfg.home)
    if recorded in (None, cfg.runtime):
        return
    if recorded == "docker":
        from node.containers.daemon import engine_answers

        if not engine_answers():  # no engine: none of its containers runs either
            return
    running = [s.name for s in services(with_overrides(cfg, runtime=recorded)) if s.proc.alive()]
    if running:
        raise UsageError(f"the stack of {cfg.home} runs in the {recorded} runtime ({', '.join(running)}); "
                         f"stop it first (`haorch deploy down`) or use runtime = {recorded!r}")


def _extra_processes(cfg: Config) -> list[Handle]:
    """Programs haorch started besides the services (cluster nodes, workers): stopped first on ``down``."""
    known = {p.name for s in _all_services(cfg) for p in (s.proc, getattr(s, "epmd", s.proc))}  # externals: left alone
    return [recorded(cfg, name) for name in names(cfg) if name not in known]


def down(cfg: Config, purge: bool = False, progress: Progress = lambda _m: None) -> list[str]:
    """Stop every process recorded in the state dir (cluster first, then services); optionally delete it."""
    stopped = []
    for proc in _extra_processes(cfg):
        if proc.stop(grace_s=10.0):
            stopped.append(proc.name)
            progress(f"{proc.name} stopped")
    stack = list(reversed(services(cfg)))
    with ThreadPoolExecutor(max_workers=max(1, len(stack))) as pool:
        for service, did_stop in zip(stack, pool.map(lambda s: s.stop(), stack), strict=True):
            if did_stop:
                stopped.append(service.name)
                progress(f"{service.name} stopped")
    if purge and cfg.home.exists():
        shutil.rmtree(cfg.home)
        progress(f"deleted {cfg.home}")
    return stopped


def status(cfg: Config) -> list[dict[str, object]]:
    """One row per service process: service, pid, port, healthy (a real probe), rss_bytes."""
    stack = services(cfg)
    with ThreadPoolExecutor(max_workers=max(1, len(stack))) as pool:
        return list(pool.map(lambda s: s.status(), stack))


def find_service(cfg: Config, name: str) -> Service | None:
    return next((s for s in services(cfg) if s.name == name), None)
