"""The 3-node service in Docker containers: images built offline from a debootstrap base, every program a container
with host networking, ``--init``, a health check and a restart policy; the leader container killed (``docker
kill``) and frozen (``docker pause``) under load and service containers restarted, with the invariant checker's
verdict each time. The deployment has its own state dir (``.haorch-docker-test``) and ports (from 19000).

Skipped, with the reason, only where no Docker engine can run (dockerd not installed, or not root).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import wait_until
from scenario_checks import assert_ok, run_short

from chaos_tests import faults
from node import cluster, deployment
from node.config import Config, load_config
from node.paths import REPO_ROOT

pytestmark = [pytest.mark.stack, pytest.mark.docker]

DOCKER_HOME = Path(os.environ.get("HAORCH_DOCKER_TEST_HOME", REPO_ROOT / ".haorch-docker-test"))
DOCKER_PORT_BASE = int(os.environ.get("HAORCH_DOCKER_TEST_PORT_BASE", "19000"))
NODES, WORKERS = 3, 2


def _unavailable() -> str | None:
    """Why no Docker engine can run here, or None when one answers (started by haorch if needed)."""
    from node.containers.daemon import DockerUnavailable, start_daemon

    try:
        start_daemon()
    except DockerUnavailable as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def built() -> list[dict]:
    reason = _unavailable()
    if reason:
        pytest.skip(f"no Docker engine: {reason}")
    from node.containers.images import build_images

    return build_images(progress=lambda m: print(f"[images] {m}", flush=True))


@pytest.fixture(scope="module")
def dcfg(built: list[dict]) -> Iterator[Config]:
    cfg = load_config(DOCKER_HOME, port_base=DOCKER_PORT_BASE, runtime="docker", zk_session_timeout_s=1.0)
    deployment.down(cfg, purge=True)
    deployment.up(cfg, nodes=NODES, workers=WORKERS, progress=lambda m: print(f"[deploy] {m}", flush=True))
    try:
        yield cfg
    finally:
        faults.cleanup(cfg)
        deployment.down(cfg)


def _docker(*args: str) -> dict:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)[0] if out.stdout.startswith("[") else {"out": out.stdout}


def test_images_are_built_offline(built: list[dict]) -> None:
    from node.containers.images import BASE_IMAGE, ROLE_NAMES, image_name

    assert [r["image"] for r in built] == [BASE_IMAGE] + [image_name(r) for r in ROLE_NAMES]
    base = _docker("image", "inspect", BASE_IMAGE)
    assert base["Parent"] == "" and len(base["RootFS"]["Layers"]) == 1  # imported from the debootstrap tree
    for role in ROLE_NAMES:
        image = _docker("image", "inspect", image_name(role))
        assert image["Config"]["Labels"]["io.haorch.role"] == role
        assert image["Size"] > base["Size"] or role in ("node", "worker")
    version = subprocess.run(["docker", "run", "--rm", "--network", "host", image_name("node"), "haorch",
                              "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and "haorch" in version.stdout, version.stderr


def test_a_second_build_is_cached(built: list[dict]) -> None:
    from node.containers.images import build_images

    again = build_images(["zookeeper", "node"])
    assert again[0]["built"] is False  # the base is never bootstrapped twice
    assert all(r["cached_steps"] == r["steps"] - 1 for r in again[1:] if r["steps"] > 1), again


def test_every_program_is_a_healthy_host_network_container(dcfg: Config) -> None:
    rows = deployment.status(dcfg)
    programs = [r["program"] for r in rows]
    assert programs == ["zookeeper-1", "zookeeper-2", "zookeeper-3", "rabbitmq", "mariadb", "neo4j", "prometheus",
                        "node-1", "node-2", "node-3", "worker-1", "worker-2"]

    def all_healthy() -> list[dict]:
        now = deployment.status(dcfg)
        sick = [(r["program"], r["state"], r["health"], r.get("role")) for r in now
                if not (r["healthy"] and r["state"] == "running" and r["health"] == "healthy")]
        print(f"not healthy yet: {sick}", flush=True)
        return [] if sick else now

    rows = wait_until(all_healthy, 120, "every program and its container's own health check to pass", poll_s=1.0)
    assert sum(r.get("role") == "leader" for r in rows) == 1
    for row in rows:
        info = _docker("inspect", row["container"])
        host = info["HostConfig"]
        assert host["NetworkMode"] == "host" and host["Init"] is True
        assert host["RestartPolicy"]["Name"] == "unless-stopped"
        assert str(dcfg.home) in {m["Source"] for m in info["Mounts"]}
        assert info["Config"]["Healthcheck"]["Test"][0] == "CMD"


def test_cli_status_and_idempotent_up(dcfg: Config) -> None:
    env = {**os.environ, "HAORCH_HOME": str(dcfg.home), "HAORCH_PORT_BASE": str(dcfg.port_base)}
    env.pop("HAORCH_RUNTIME", None)  # the state dir remembers that it runs in containers
    up = subprocess.run([sys.executable, "-m", "node.cli", "deploy", "up", "--json"], capture_output=True,
                        text=True, env=env, timeout=300)
    assert up.returncode == 0, up.stderr
    data = json.loads(up.stdout)
    assert data["runtime"] == "docker" and data["services_started"] == [] and data["cluster_started"] == []
    status = subprocess.run([sys.executable, "-m", "node.cli", "deploy", "status", "--json"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert status.returncode == 0, status.stderr
    assert {r["container"] for r in json.loads(status.stdout)} >= {f"haorch{dcfg.port_base}-node-1"}
    clash = subprocess.run([sys.executable, "-m", "node.cli", "stack", "up"], capture_output=True, text=True,
                           env={**env, "HAORCH_RUNTIME": "process"}, timeout=120)
    assert clash.returncode == 2 and "runs in the docker runtime" in clash.stderr, clash.stderr


def test_kill_leader_container(dcfg: Config) -> None:
    result = run_short(dcfg, "kill-leader", kills=2)
    assert_ok(result, 2)
    assert all(f["epoch_changed"] for f in result["faults"]), result["faults"]


def test_pause_leader_container(dcfg: Config) -> None:
    result = run_short(dcfg, "freeze-leader", kills=1)
    assert_ok(result, 1)
    assert result["faults"][0]["epoch_changed"]
    assert not any(cluster.node_process(dcfg, n).frozen() for n in range(1, NODES + 1))


@pytest.mark.skipif(shutil.which("iptables") is None, reason="iptables is not installed")
def test_partition_leader_container(dcfg: Config) -> None:
    result = run_short(dcfg, "partition-leader", kills=1)
    assert_ok(result, 1)
    assert result["faults"][0]["epoch_changed"]
    assert faults.chaos_rules(dcfg) == []


def test_restart_service_containers(dcfg: Config) -> None:
    result = run_short(dcfg, "restart-services", kills=2)  # the RabbitMQ container, then MariaDB's
    assert_ok(result, 2)
    assert [f["fault"] for f in result["faults"]] == ["restart-rabbitmq", "restart-mariadb"]


def test_a_crashed_program_is_restarted_by_docker(dcfg: Config) -> None:
    worker = cluster.worker_process(dcfg, 1)
    before = worker.info()["restarts"]
    program = [p for p in worker.pids() if Path(f"/proc/{p}/comm").read_text().strip() != "docker-init"]
    os.kill(program[0], signal.SIGKILL)  # the worker itself, not the container's init
    wait_until(lambda: worker.info()["restarts"] == before + 1 and worker.alive(), 30,
               "the restart policy to bring worker-1 back")
