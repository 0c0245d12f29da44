"""What a stack service is: processes to start, ports it owns, a readiness probe and an idempotent bootstrap.

Concrete services (``zookeeper.py``, ``rabbitmq.py``, ``mariadb.py``, ``neo4j.py``, ``prometheus.py``) fill in
``command()``, ``probe()`` and, where needed, ``prepare()``, ``bootstrap()`` and ``health``. The manager starts
them in parallel and waits for each probe, which must be a real request (a query, a publish), not an open port.
A service runs as a process or a container (``node/runtime/``): ``self.proc`` is its handle either way.
"""

from __future__ import annotations

import errno
import shutil
import socket
import time
from dataclasses import dataclass

from node.config import Config
from node.errors import ServiceError, SetupError
from node.paths import setup_hint
from node.runtime.handle import TcpCheck
from node.runtime.process import rss_bytes
from node.runtime.programs import handle

PORT_RELEASE_S = 5.0


@dataclass
class Launch:
    """How to start a service process."""

    argv: list[str]
    env: dict[str, str] | None = None


class Service:
    """A stack service backed by one managed process."""

    name: str = ""
    image: str = ""  # the image it runs from in the docker runtime (node/containers/images.py)
    binaries: tuple[str, ...] = ()
    start_timeout_s: float = 60.0

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.proc = handle(cfg, self.name, self.image, self.health)

    # --- to implement ---------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The address it listens on (a cluster member's is its host's: ``Config.member_host``)."""
        return self.cfg.host

    @property
    def port(self) -> int:
        """The port clients use (shown in status)."""
        raise NotImplementedError

    @property
    def health(self) -> TcpCheck | None:
        """The check a container of this service runs on itself (a request and the answer it expects)."""
        return None

    def owned_ports(self) -> list[int]:
        """Every port the service listens on (checked for conflicts before start)."""
        return [self.port]

    def command(self) -> Launch:
        raise NotImplementedError

    def probe(self) -> None:
        """Raise if the service cannot serve a real request yet."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Create data dirs and config files (idempotent; runs before every start)."""

    def bootstrap(self) -> None:
        """Create users, schemas, queues (idempotent; runs after the probe succeeds)."""

    # --- shared behaviour -----------------------------------------------------------------------
    def check_binaries(self) -> None:
        if self.cfg.runtime == "docker":  # the image carries them
            return
        for binary in self.binaries:
            if not shutil.which(binary):
                raise SetupError(f"{self.name}: {binary} not found; {setup_hint()}")

    def check_ports_free(self, release_s: float = PORT_RELEASE_S) -> None:
        """ServiceError naming the first owned port something else holds, after ``release_s`` of waiting for it to
        be released (a process SIGKILLed a moment ago can hold its listener until its exit completes: seen once on a
        loaded machine when a crashed cluster was started again)."""
        deadline = time.monotonic() + release_s
        for port in self.owned_ports():
            while port_in_use(self.address, port) and time.monotonic() < deadline:
                time.sleep(0.1)
            if port_in_use(self.address, port):
                raise ServiceError(f"{self.name}: port {port} on {self.address} is already in use by another process "
                                   f"(change port_base in {self.cfg.home / 'haorch.toml'} or HAORCH_PORT_BASE)")

    def start(self) -> int:
        self.check_binaries()
        self.check_ports_free()
        self.prepare()
        launch = self.command()
        return self.proc.start(launch.argv, env=launch.env)

    def stop(self) -> bool:
        return self.proc.stop()

    def healthy(self) -> bool:
        if not self.proc.alive():
            return False
        try:
            self.probe()
        except Exception:  # noqa: BLE001 - any failure of the probe means "not healthy"
            return False
        return True

    def status(self, check_health: bool = True) -> dict[str, object]:
        pid = self.proc.pid()
        return {
            "service": self.name,
            "pid": pid,
            "port": self.port,
            "healthy": bool(pid) and (self.healthy() if check_health else True),
            "rss_bytes": rss_bytes(self.proc.pids()) if pid else None,
            **self.proc.info(),
        }

    def log_hint(self) -> str:
        return f"see `{' '.join(self.proc.log_command(50, False))}`"


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
