"""The Docker engine: a client for it, started first when it is installed but not running.

An engine that already runs (a system service, an operator's daemon) is used as it is. When none answers and
``dockerd`` is installed, haorch starts one as root with everything that would touch the host's network off:
no default bridge (``docker0``), no iptables rules, no IP forwarding — haorch's containers use host networking
only, so they need none of it, and the chaos faults' iptables rules stay the only ones on the machine::

    client = docker_client()          # starts dockerd if needed (bounded wait), else DockerUnavailable
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from functools import lru_cache
from pathlib import Path

from node.errors import ServiceError, SetupError

log = logging.getLogger(__name__)

DOCKERD_LOG = Path("/var/log/haorch-dockerd.log")
DOCKERD_PID = Path("/var/run/docker.pid")
DOCKERD_FLAGS = ["--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
                 f"--pidfile={DOCKERD_PID}"]
START_TIMEOUT_S = 60.0


class DockerUnavailable(SetupError):
    """No Docker engine answers and none can be started here (the message says why)."""


def engine_answers() -> bool:
    """True when a Docker engine answers a ping (never starts one)."""
    import docker

    try:
        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except Exception:  # noqa: BLE001 - any failure means "no engine answers"
        return False
    return True


def start_daemon() -> bool:
    """Start ``dockerd`` in the background unless an engine answers; True if this call started it."""
    if engine_answers():
        return False
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise DockerUnavailable("no Docker engine: dockerd is not installed; run `make setup` "
                                "(installs docker.io from Debian)")
    if os.geteuid() != 0:
        raise DockerUnavailable("no Docker engine runs and starting dockerd needs root")
    with open(DOCKERD_LOG, "ab") as out:
        subprocess.Popen([dockerd, *DOCKERD_FLAGS], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True)
    log.info("dockerd started flags=%s log=%s", " ".join(DOCKERD_FLAGS), DOCKERD_LOG)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if engine_answers():
            return True
        time.sleep(0.25)
    raise DockerUnavailable(f"dockerd did not answer within {START_TIMEOUT_S:.0f} s; see {DOCKERD_LOG}")


@lru_cache(maxsize=1)
def docker_client():
    """A docker SDK client for the engine (started first if needed); one per process."""
    import docker

    start_daemon()
    try:
        return docker.from_env(timeout=120)
    except Exception as exc:  # noqa: BLE001
        raise ServiceError(f"docker: cannot connect to the engine: {exc}") from None
