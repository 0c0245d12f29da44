"""Where haorch runs its programs: as processes of this machine (``runtime = "process"``, the default) or as
Docker containers (``runtime = "docker"``, see ``node/containers/``).

Everything that starts, signals or inspects a program (the stack's services, the cluster's nodes and workers,
the chaos faults) asks :func:`handle` for it by name and gets a ``ManagedProcess`` or a ``ManagedContainer``.
Both have the methods of :class:`Handle`, so that code does not know which it drives::

    h = handle(cfg, "zookeeper-1", image="zookeeper", health=TcpCheck(17101, "ruok", "imok"))
    h.start(argv, env)      # env: only the program's own variables
    h.alive(); h.pid(); h.signal(signal.SIGTERM); h.freeze(); h.thaw(); h.kill(); h.stop()

A command line names repository files (the Neo4j launcher, the Prometheus rules) through :func:`asset` and
haorch itself through :func:`haorch_argv`: images carry those files under ``/opt/haorch/assets`` at their
repository paths, and haorch on ``PATH``. The state dir is mounted into every container at its own path, so
configs, data and logs are where a process would find them. A state dir remembers the runtime its stack was
started with (``<home>/runtime``), so later commands drive the same kind of program without being told.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from node.config import Config
from node.paths import REPO_ROOT

IMAGE_ASSETS = Path("/opt/haorch/assets")


@dataclass(frozen=True)
class TcpCheck:
    """A health check a container runs on itself: send ``send`` to ``127.0.0.1:port`` and expect ``expect`` in
    the first ``read_bytes`` of the answer (or all of it, when the server closes first); ``send`` may use printf
    escapes (``AMQP\\0\\0\\x09\\x01``), an empty ``expect`` accepts any answer."""

    port: int
    send: str
    expect: str
    read_bytes: int = 4096


class Handle(Protocol):
    """One program of a state dir: a process (pid file) or a container (by name)."""

    name: str

    @property
    def log_file(self) -> Path: ...

    def pid(self) -> int | None: ...

    def alive(self) -> bool: ...

    def start(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int: ...

    def stop(self, grace_s: float = 20.0) -> bool: ...

    def signal(self, sig: int) -> bool: ...

    def kill(self) -> bool: ...

    def freeze(self) -> bool: ...

    def thaw(self) -> bool: ...

    def frozen(self) -> bool: ...

    def pids(self) -> list[int]: ...

    def run(self, argv: list[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]: ...

    def output_since_start(self, max_bytes: int = 65536) -> bytes: ...

    def log_command(self, lines: int, follow: bool) -> list[str]: ...

    def info(self) -> dict[str, object]: ...


def handle(cfg: Config, name: str, image: str, health: TcpCheck | None = None) -> Handle:
    """The program ``name`` of ``cfg``'s state dir, run from ``image`` when the runtime is docker."""
    if cfg.runtime == "docker":
        from node.containers.container import ManagedContainer

        return ManagedContainer(cfg, name, image, health)
    from node.stack.process import ManagedProcess

    return ManagedProcess(name, cfg.run_dir, cfg.log_dir)


def recorded(cfg: Config, name: str) -> Handle:
    """The handle of a program found by name (``node-2``, ``zookeeper-1``, ``rabbitmq-epmd``): its image is the
    name's first part. For inspecting and stopping; starting wants the handle with its health check."""
    return handle(cfg, name, name.split("-", 1)[0])


def names(cfg: Config) -> list[str]:
    """Names of the programs the state dir has recorded (pid files, or containers labelled with it), sorted."""
    if cfg.runtime == "docker":
        from node.containers.container import container_names

        return container_names(cfg)
    return sorted(p.stem for p in cfg.run_dir.glob("*.pid")) if cfg.run_dir.is_dir() else []


def haorch_argv(cfg: Config, *args: str) -> list[str]:
    """The command line that runs ``haorch ARGS`` in the runtime (this interpreter, or the image's haorch)."""
    if cfg.runtime == "docker":
        return ["haorch", *args]
    return [sys.executable, "-m", "node.cli", *args]


def asset(cfg: Config, path: Path) -> Path:
    """Where the repository file ``path`` is for a program of the runtime."""
    if cfg.runtime == "docker":
        return IMAGE_ASSETS / path.relative_to(REPO_ROOT)
    return path
