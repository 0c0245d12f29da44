"""One program of a state dir as a Docker container: the container twin of ``node/runtime/process.py``.

A container is named ``haorch<port_base>-<name>`` and labelled with the state dir, runs with **host
networking** (every port stays on ``cfg.host``, as for a process), ``--init`` (signals reach the program, zombies
are reaped), the restart policy ``unless-stopped`` (a crashed program comes back; one stopped on purpose stays
down) and, when the program has one, a health check that the container runs on itself. The state dir is
mounted at its own path::

    c = ManagedContainer(cfg, "node-1", "node", TcpCheck(17171, "GET /healthz ...", "200 OK"))
    c.start(["haorch", "node", "run", "--id", "node-1"], env={...})
    c.signal(signal.SIGKILL)   # docker kill; SIGSTOP/SIGCONT pause and unpause (the freezer cgroup)
    c.stop()                   # docker stop (SIGTERM, then SIGKILL after the grace period), then remove
"""

from __future__ import annotations

import logging
import signal as signals
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from node.config import Config
from node.containers.daemon import docker_client
from node.containers.images import image_exists, image_name
from node.errors import ServiceError, SetupError
from node.runtime.handle import TcpCheck

log = logging.getLogger(__name__)

HOME_LABEL = "io.haorch.home"
NAME_LABEL = "io.haorch.name"
RESTART_POLICY = {"Name": "unless-stopped"}
LOG_CONFIG = {"type": "json-file", "config": {"max-size": "20m", "max-file": "3"}}
HEALTH_INTERVAL_S = 5.0
START_WAIT_S = 15.0


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def health_test(check: TcpCheck, host: str) -> list[str]:
    """The container health check: one request/answer on ``host:port``, in bash (every image has it)."""
    script = (f"exec 3<>/dev/tcp/{host}/{check.port} && printf '{check.send}' >&3 "
              f"&& timeout 3 head -c {check.read_bytes} <&3 | grep -aq '{check.expect}'")
    return ["CMD", "timeout", "5", "bash", "-c", script]


def container_names(cfg: Config) -> list[str]:
    """Names (``node-1``, ``zookeeper-2``, ...) of the containers labelled with ``cfg``'s state dir, sorted."""
    found = docker_client().containers.list(all=True, filters={"label": f"{HOME_LABEL}={cfg.home}"})
    return sorted(c.labels.get(NAME_LABEL, "") for c in found if c.labels.get(NAME_LABEL))


class ManagedContainer:
    """A program of the state dir run as a container; the same methods as ``ManagedProcess``."""

    def __init__(self, cfg: Config, name: str, image: str, health: TcpCheck | None = None) -> None:
        self.cfg = cfg
        self.name = name
        self.image = image_name(image)
        self.health = health
        self.container_name = f"haorch{cfg.port_base}-{name}"

    @property
    def log_file(self) -> Path:
        """Where a program that writes a log file of its own (MariaDB's error log) writes it."""
        return self.cfg.log_dir / f"{self.name}.log"

    # --- state ------------------------------------------------------------------------------------------
    def _container(self):
        import docker

        try:
            return docker_client().containers.get(self.container_name)
        except docker.errors.NotFound:
            return None

    def _state(self) -> dict[str, Any]:
        container = self._container()
        return container.attrs["State"] if container is not None else {}

    def pid(self) -> int | None:
        """Host PID of the container's first process while it runs (paused counts as running)."""
        return _running_pid(self._state())

    def alive(self) -> bool:
        return self.pid() is not None

    def frozen(self) -> bool:
        return bool(self._state().get("Paused"))

    def pids(self) -> list[int]:
        """Host PIDs of every process in the container."""
        container = self._container()
        if container is None or not _running_pid(container.attrs["State"]):
            return []
        top = container.top(ps_args="-o pid")
        return [int(row[0]) for row in top.get("Processes") or []]

    def info(self) -> dict[str, object]:
        """Container fields for status: name, state, health, restarts, image."""
        container = self._container()
        if container is None:
            return {"container": self.container_name, "state": "absent", "health": None, "restarts": None,
                    "image": self.image}
        state = container.attrs["State"]
        return {"container": self.container_name, "state": state.get("Status"),
                "health": (state.get("Health") or {}).get("Status"),
                "restarts": container.attrs.get("RestartCount"), "image": self.image}

    # --- lifecycle --------------------------------------------------------------------------------------
    def _run_options(self, env: dict[str, str] | None, cwd: Path | None) -> dict[str, Any]:
        home = str(self.cfg.home)
        return {"network_mode": "host", "init": True, "environment": env or {}, "working_dir": str(cwd or home),
                "volumes": {home: {"bind": home, "mode": "rw"}}, "labels": {HOME_LABEL: home, NAME_LABEL: self.name}}

    def start(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        """Run ``argv`` in a new container (an exited one of the same name is replaced); returns its host PID."""
        running = self.pid()
        if running is not None:
            return running
        if not image_exists(self.image):
            raise SetupError(f"{self.name}: image {self.image} is not built; run `haorch deploy build`")
        old = self._container()
        if old is not None:
            old.remove(force=True)
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        options = self._run_options(env, cwd)
        if self.health is not None:
            options["healthcheck"] = {"test": health_test(self.health, self.cfg.host),
                                      "interval": _ns(HEALTH_INTERVAL_S), "timeout": _ns(6.0), "retries": 3,
                                      "start_period": _ns(60.0)}
        docker_client().containers.run(self.image, argv, name=self.container_name, detach=True,
                                       restart_policy=RESTART_POLICY, log_config=LOG_CONFIG, **options)
        deadline = time.monotonic() + START_WAIT_S
        while time.monotonic() < deadline:
            pid = self.pid()
            if pid is not None:
                log.info("container started name=%s container=%s pid=%d", self.name, self.container_name, pid)
                return pid
            if self._state().get("Status") in ("exited", "dead"):
                break
            time.sleep(0.05)
        raise ServiceError(f"{self.name}: container {self.container_name} did not start; "
                           f"see `docker logs {self.container_name}`")

    def stop(self, grace_s: float = 20.0) -> bool:
        """``docker stop`` (SIGTERM, SIGKILL after ``grace_s``), then remove; True if it was running."""
        container = self._container()
        if container is None:
            return False
        was_running = bool(container.attrs["State"].get("Running"))
        if container.attrs["State"].get("Paused"):
            container.unpause()  # a paused container cannot handle SIGTERM
        if was_running:
            container.stop(timeout=max(1, int(grace_s)))
        container.remove(force=True)
        log.info("container stopped name=%s container=%s", self.name, self.container_name)
        return was_running

    def signal(self, sig: int) -> bool:
        """``docker kill --signal`` to the program; SIGSTOP pauses and SIGCONT unpauses the whole container."""
        if sig == signals.SIGSTOP:
            return self.freeze()
        if sig == signals.SIGCONT:
            return self.thaw()
        container = self._container()
        if container is None or not _running_pid(container.attrs["State"]):
            return False
        container.kill(signal=int(sig))
        return True

    def kill(self) -> bool:
        return self.signal(signals.SIGKILL)

    def freeze(self) -> bool:
        """``docker pause``: every process of the container stops (its sockets stay open)."""
        container = self._container()
        if container is None or not _running_pid(container.attrs["State"]) or container.attrs["State"]["Paused"]:
            return False
        container.pause()
        return True

    def thaw(self) -> bool:
        container = self._container()
        if container is None or not container.attrs["State"].get("Paused"):
            return False
        container.unpause()
        return True

    # --- one-off commands and output ---------------------------------------------------------------------
    def run(self, argv: list[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the running container (``docker exec``), or in a one-off container of the same image
        and mounts when it is not running (e.g. ``mariadb-install-db`` before the first start)."""
        bounded = ["timeout", str(max(1, int(timeout_s))), *argv]
        container = self._container()
        state = container.attrs["State"] if container is not None else {}
        if _running_pid(state) and not state.get("Paused"):
            code, (out, err) = container.exec_run(bounded, demux=True)
            return subprocess.CompletedProcess(argv, code, (out or b"").decode(errors="replace"),
                                               (err or b"").decode(errors="replace"))
        if not image_exists(self.image):
            raise SetupError(f"{self.name}: image {self.image} is not built; run `haorch deploy build`")
        options = self._run_options(None, None)
        options["labels"] = {}  # not one of the state dir's programs
        one_off = docker_client().containers.create(self.image, bounded, **options)
        try:
            one_off.start()
            code = int(one_off.wait(timeout=timeout_s + 10).get("StatusCode", 1))
            out = one_off.logs(stdout=True, stderr=False).decode(errors="replace")
            err = one_off.logs(stdout=False, stderr=True).decode(errors="replace")
        finally:
            one_off.remove(force=True)
        return subprocess.CompletedProcess(argv, code, out, err)

    def output_since_start(self, max_bytes: int = 65536) -> bytes:
        """What the container printed since it (re)started, at most the last ``max_bytes``."""
        container = self._container()
        if container is None:
            return b""
        started = container.attrs["State"].get("StartedAt", "")
        since = _parse_time(started)
        out = container.logs(stdout=True, stderr=True, since=since) if since else container.logs()
        return out[-max_bytes:]

    def log_command(self, lines: int, follow: bool) -> list[str]:
        return ["docker", "logs", "-n", str(lines)] + (["-f"] if follow else []) + [self.container_name]


def _running_pid(state: dict[str, Any]) -> int | None:
    """The host PID in a container's ``State`` while it runs (paused included), else None."""
    return int(state["Pid"]) if state.get("Running") and state.get("Pid") else None


def _parse_time(stamp: str) -> float | None:
    """Docker's RFC 3339 time with nanoseconds (``2026-12-01T23:10:00.123456789Z``) as UNIX seconds."""
    if not stamp or stamp.startswith("0001-"):
        return None
    head, _, frac = stamp.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    return seconds + float(f"0.{frac[:6]}") if frac else seconds
