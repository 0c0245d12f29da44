"""The whole service as one unit: the stack (``node/stack/``) and the cluster (``node/cluster.py``) together, in
the state dir's runtime (processes or containers, ``node/runtime/``). Behind ``haorch deploy``::

    cfg = with_overrides(load_config(), runtime="docker")
    up(cfg)            # images built when missing, services, then 3 nodes + 2 workers; waits for a leader
    status(cfg)        # one row per program: pid, port, healthy, role/epoch (nodes), container fields
    down(cfg)          # cluster first, then services; containers are removed, data stays
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from node import cluster
from node.config import Config
from node.stack import manager

Progress = Callable[[str], None]


def up(cfg: Config, nodes: int = 3, workers: int = 2, progress: Progress = lambda _m: None) -> dict[str, Any]:
    """Start what is not running (idempotent) and wait for a leader."""
    stack = manager.up(cfg, progress=progress)
    out = cluster.up(cfg, nodes=nodes, workers=workers, progress=progress)
    return {"runtime": cfg.runtime, "home": str(cfg.home), "services_started": stack.started,
            "cluster_started": out["started"], "leader": out["leader"], "epoch": out["epoch"],
            "seconds": round(stack.seconds, 2)}


def down(cfg: Config, purge: bool = False, progress: Progress = lambda _m: None) -> list[str]:
    """Stop every program of the state dir (cluster first); ``purge`` also deletes the state dir."""
    return manager.down(cfg, purge=purge, progress=progress)


def status(cfg: Config) -> list[dict[str, Any]]:
    """One row per program (services, nodes, workers): program, pid, port, healthy, role and epoch for nodes,
    plus the runtime's own fields (container, state, health, restarts for a container)."""
    rows: list[dict[str, Any]] = [{"program": r.pop("service"), **r} for r in manager.status(cfg)]
    roles = {r["node_id"]: r for r in cluster.status(cfg)}
    for n in cluster.numbered(cfg, "node"):
        proc = cluster.node_process(cfg, n)
        role = roles.get(f"node-{n}", {})
        rows.append({"program": f"node-{n}", "pid": role.get("pid"), "port": cfg.node_http_port(n),
                     "healthy": role.get("role") in ("leader", "standby"), "role": role.get("role"),
                     "epoch": role.get("epoch"), **proc.info()})
    for n in cluster.numbered(cfg, "worker"):
        proc = cluster.worker_process(cfg, n)
        rows.append({"program": f"worker-{n}", "pid": proc.pid(), "port": cfg.worker_http_port(n),
                     "healthy": proc.alive() and not proc.frozen(), **proc.info()})
    return rows
