"""The multi-host lab for real: 3 member hosts + the Neo4j host as network namespaces on a private bridge, the
ha topology (ZooKeeper ensemble, RabbitMQ cluster, Galera cluster) spread over them; one host crashed under load
and restarted, the verifier clean; the CLI drives the lab through the same state dir; ``lab down`` leaves no
namespace, bridge, rule or cgroup behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from polling import home_for_mysql_account

from chaos_tests import scenarios
from node.config import Config, load_config
from node.lab import lab
from node.lab.cgroups import cgroup_root

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.timeout(900)]

PORT_BASE = int(os.environ.get("HAORCH_TEST_PORT_BASE", "18100")) + 400


def _haorch(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HAORCH_HOME": str(home), "HAORCH_PORT_BASE": str(PORT_BASE)}
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def lab_home(test_config: Config):
    home = home_for_mysql_account(test_config.home, "lab")  # not under pytest's tmp (0700)
    shutil.rmtree(home, ignore_errors=True)
    out = _haorch(home, "lab", "up", "--hosts", "3", "--json")
    try:
        assert out.returncode == 0, out.stderr[-3000:]
        yield home
    finally:
        down = _haorch(home, "lab", "down", "--purge", "--json")
        assert down.returncode == 0, down.stderr[-2000:]


def test_each_host_runs_its_members(lab_home: Path) -> None:
    out = _haorch(lab_home, "lab", "status", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["host"] for r in rows] == ["host-1", "host-2", "host-3", "host-4"]
    for n, row in enumerate(rows[:3], start=1):
        running = {p["name"] for p in row["processes"]}
        assert {f"zookeeper-{n}", f"rabbitmq-{n}", f"mariadb-{n}", f"node-{n}", f"worker-{n}"} <= running, row
        assert all(isinstance(p["pid"], int) for p in row["processes"])
    assert {p["name"] for p in rows[3]["processes"]} == {"neo4j", "prometheus"}
    addresses = [r["address"] for r in rows]
    cfg = load_config(lab_home, port_base=PORT_BASE)
    assert cfg.member_hosts.split(",") == addresses[:3] and cfg.host == addresses[3]


def test_cli_drives_the_lab(lab_home: Path) -> None:
    status = _haorch(lab_home, "cluster", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert sum(r["role"] == "leader" for r in json.loads(status.stdout)) == 1
    submitted = _haorch(lab_home, "submit", "chain", "--json")
    assert submitted.returncode == 0, submitted.stderr
    experiment = json.loads(submitted.stdout)["experiment_id"]
    waited = _haorch(lab_home, "wait", experiment, "--timeout", "60", "--json")
    assert waited.returncode == 0, waited.stderr


def test_a_host_crash_under_load_loses_nothing(lab_home: Path) -> None:
    cfg = load_config(lab_home, port_base=PORT_BASE)
    result = scenarios.run(cfg, "host-crash", kills=1, experiments=80, seed=3, nodes=3, workers=3,
                           fresh_cluster=False, keep_cluster=True, quiesce_s=180.0)
    fault = result["faults"][0]
    assert fault["fault"] == "host-crash" and fault["killed"] >= 5, fault
    assert result["violations"] == 0, result["check_markdown"]
    assert result["experiments"]["not_terminal"] == 0 and result["experiments"]["missing"] == 0
    assert result["ok"], result["errors"]
    assert fault["stall_s"] is not None


def test_the_hpc_site_runs_on_the_services_host_and_the_member_hosts_workers_use_it(lab_home: Path) -> None:
    """`haorch demo --hpc` on the lab: the site's programs start inside the last host (with Neo4j), its login node
    listens on that host's address, and the workers of hosts 1-3 stage, submit and monitor through the bridge."""
    demo = _haorch(lab_home, "demo", "--hpc", "--json")
    try:
        assert demo.returncode == 0, demo.stderr[-3000:]
        summary = json.loads(demo.stdout)
        assert summary["ok"] and summary["slurm_jobs_for_submit"] == 1, summary
        hosts = json.loads(_haorch(lab_home, "lab", "status", "--json").stdout)
        site = json.loads((lab_home / "hpc" / "sites.json").read_text())["local"]
        assert site["host"] == hosts[3]["address"]
        neo4j = next(p["pid"] for p in hosts[3]["processes"] if p["name"] == "neo4j")
        rows = json.loads(_haorch(lab_home, "hpc", "status", "--json").stdout)
        sshd = next(r["pid"] for r in rows if r["name"] == "sshd")
        assert os.readlink(f"/proc/{sshd}/ns/net") == os.readlink(f"/proc/{neo4j}/ns/net")
    finally:
        down = _haorch(lab_home, "hpc", "down", "--purge")
        assert down.returncode == 0, down.stderr[-2000:]


def test_down_removes_everything(lab_home: Path) -> None:
    """Last in the module: a second `lab up` is a no-op, then `lab down` removes the namespaces, bridge and cgroups
    (the fixture's own `down` afterwards finds nothing)."""
    again = _haorch(lab_home, "lab", "up", "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    out = _haorch(lab_home, "lab", "down", "--json")
    assert out.returncode == 0, out.stderr
    prefix = f"haorch{PORT_BASE}"
    assert prefix not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    assert not (cgroup_root() / f"{prefix}-lab").exists()
    assert lab.status(load_config(lab_home, port_base=PORT_BASE)) == []
