"""The handle of a program of the state dir for ``cfg.runtime``, found by name, and how a command line names
haorch and haorch's asset files in that runtime::

    h = handle(cfg, "node-2", "node", TcpCheck(17172, "GET /healthz HTTP/1.0\\r\\n\\r\\n", "200 OK"))
    names(cfg)                          # ["mariadb", "neo4j", "node-1", ...]
    haorch_argv(cfg, "node", "run")     # [sys.executable, "-m", "node.cli", "node", "run"] for processes
"""

from __future__ import annotations

import sys
from pathlib import Path

from node.config import Config
from node.paths import ASSETS_DIR, NEO4J_LAUNCHER_TARGET
from node.runtime.container import ManagedContainer, container_names
from node.runtime.handle import Handle, TcpCheck
from node.runtime.placement import placement
from node.runtime.process import ManagedProcess

IMAGE_ASSETS = Path("/opt/haorch/assets")
#: host folder -> where the images carry it (the launcher build first: in a checkout it lies inside the assets)
IMAGE_PATHS = ((NEO4J_LAUNCHER_TARGET, IMAGE_ASSETS / "neo4j" / "target"), (ASSETS_DIR, IMAGE_ASSETS))


def handle(cfg: Config, name: str, image: str, health: TcpCheck | None = None) -> Handle:
    """The program ``name`` of ``cfg``'s state dir, run from ``image`` when the runtime is docker."""
    if cfg.runtime == "docker":
        return ManagedContainer(cfg, name, image, health)
    return ManagedProcess(name, cfg.run_dir, cfg.log_dir, placement(cfg, name))


def recorded(cfg: Config, name: str) -> Handle:
    """The handle of a program found by name (``node-2``, ``zookeeper-1``, ``rabbitmq-epmd``): its image is the
    name's first part. For inspecting and stopping; starting wants the handle with its health check."""
    return handle(cfg, name, name.split("-", 1)[0])


def names(cfg: Config) -> list[str]:
    """Names of the programs the state dir has recorded (pid files, or containers labelled with it), sorted."""
    if cfg.runtime == "docker":
        return container_names(cfg)
    return sorted(p.stem for p in cfg.run_dir.glob("*.pid")) if cfg.run_dir.is_dir() else []


def haorch_argv(cfg: Config, *args: str) -> list[str]:
    """The command line that runs ``haorch ARGS`` in the runtime (this interpreter, or the image's haorch)."""
    if cfg.runtime == "docker":
        return ["haorch", *args]
    return [sys.executable, "-m", "node.cli", *args]


def asset(cfg: Config, path: Path) -> Path:
    """Where the asset ``path`` (under ``node/assets`` or the Neo4j launcher build) is for a program of the
    runtime. A path outside both is a programming error (ValueError)."""
    if cfg.runtime != "docker":
        return path
    for host, image in IMAGE_PATHS:
        if path.is_relative_to(host):
            return image / path.relative_to(host)
    raise ValueError(f"{path} is not under {ASSETS_DIR} or {NEO4J_LAUNCHER_TARGET}")
