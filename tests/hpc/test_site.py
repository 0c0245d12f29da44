"""`haorch hpc up|down|status` against the real site: an SSH login with the generated key and pinned host key, a
batch job found in ``sacct`` by its name, refused logins, the status shape, an idempotent second up, and a down
that leaves no process (a job that was still running included) and no registered site."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from polling import wait_until

from node.config import Config
from node.errors import ServiceError, SetupError
from node.hpc import site
from node.hpc.site_programs import SiteProgram, Sshd
from node.hpc.siteinfo import SiteInfo, load_sites, site_named
from node.hpc.slurm_conf import SITE_NAME, SiteLayout
from node.hpc.ssh import SshError, SshPool, login_run
from node.runtime.process import pid_alive

NAMES = ["munged", "hpc-mariadb", "slurmdbd", "slurmctld", "slurmd-n1", "slurmd-n2", "sshd"]


def haorch(cfg: Config, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HAORCH_PORT_BASE": str(cfg.port_base)}
    return subprocess.run([sys.executable, "-m", "node.cli", "--home", str(cfg.home), *args], capture_output=True,
                          text=True, env=env, timeout=120)


def local(cfg: Config) -> SiteInfo:
    return site_named(load_sites(cfg.home), SITE_NAME)


def other_key(folder: Path) -> tuple[Path, str]:
    """A fresh ed25519 key pair the site has never seen: the private key's path and the public line."""
    key = Ed25519PrivateKey.generate()
    path = folder / "other_ed25519"
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    path.chmod(0o600)
    return path, key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def test_the_registered_site_logs_in_and_sacct_finds_a_job_by_name(hpc_site: Config):
    info = local(hpc_site)
    assert (info.host, info.user, info.partition) == (SiteLayout.of(hpc_site).host, "root", "batch")
    assert info.port == hpc_site.port_base + 280
    assert Path(info.work_dir).is_dir() and Path(info.env["SLURM_CONF"]).is_file()
    assert Path(info.key_file).stat().st_mode & 0o777 == 0o600
    pinned = paramiko.HostKeys(info.known_hosts)  # the format paramiko reads, the port in brackets
    assert pinned.lookup(f"[{info.host}]:{info.port}") is not None

    name = f"hpc-test-{secrets.token_hex(4)}"
    pool = SshPool()
    try:
        submitted = pool.run(SITE_NAME, info, f"cd {info.work_dir} && sbatch --parsable --job-name={name} "
                                              f"--output={name}.out --wrap 'echo hello from $SLURM_JOB_ID'",
                             timeout_s=30, idempotent=False)
        assert submitted.exit_code == 0, submitted.stderr
        job_id = submitted.stdout.strip()

        def state() -> str:
            listed = pool.run(SITE_NAME, info, f"sacct -n -X -P --name={name} -o JobID,State -S now-1hours",
                              timeout_s=30).stdout.strip()
            return listed if listed == f"{job_id}|COMPLETED" else ""

        started = time.monotonic()
        wait_until(state, 30, f"job {job_id} COMPLETED in sacct by name", poll_s=0.2)
        print(f"submit -> COMPLETED in sacct: {time.monotonic() - started:.2f} s")
    finally:
        pool.close()
    assert (Path(info.work_dir) / f"{name}.out").read_text() == f"hello from {job_id}\n"


def test_a_login_that_is_not_the_sites_is_refused_in_one_line(hpc_site: Config, tmp_path: Path):
    info = local(hpc_site)
    key, public = other_key(tmp_path)
    with pytest.raises(SshError, match=r"^site 'local' \([\d.]+:\d+\): authentication failed with key "
                                       r".*other_ed25519") as bad:
        login_run(SITE_NAME, replace(info, key_file=str(key)), "true", timeout_s=10)
    assert "\n" not in str(bad.value) and not bad.value.transient
    # the sshd probe says the same, as the ServiceError of a program that is not ready
    probe = Sshd(hpc_site, SiteLayout.of(hpc_site), replace(info, key_file=str(key)))
    with pytest.raises(ServiceError) as refused:
        probe.probe()
    assert str(refused.value) == str(bad.value)

    impostor = tmp_path / "known_hosts"  # another host key pinned for the site's address
    impostor.write_text(f"[{info.host}]:{info.port} {public}\n")
    with pytest.raises(SshError, match=f"host key does not match known_hosts {impostor}$") as changed:
        login_run(SITE_NAME, replace(info, known_hosts=str(impostor)), "true", timeout_s=10)
    assert not changed.value.transient

    with pytest.raises(SshError, match=r"host key not in known_hosts \(none configured\)$") as unknown:
        login_run(SITE_NAME, replace(info, known_hosts=""), "true", timeout_s=10)  # nothing pinned: refused
    assert not unknown.value.transient


def test_status_json_lists_every_program_up_with_the_login(hpc_site: Config):
    done = haorch(hpc_site, "hpc", "status", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["name"] for r in rows] == NAMES
    assert all(r["up"] is True and isinstance(r["pid"], int) for r in rows)
    ports = {r["name"]: r["port"] for r in rows}
    assert ports["munged"] is None and ports["sshd"] == hpc_site.port_base + 280
    assert sorted(p for p in ports.values() if p) == list(range(hpc_site.port_base + 280, hpc_site.port_base + 286))
    assert set(rows[0]) == {"name", "pid", "port", "up"}
    assert f"-p {hpc_site.port_base + 280} root@" in rows[-1]["login"]


def test_up_again_starts_nothing(hpc_site: Config):
    before = {r["name"]: r["pid"] for r in site.status(hpc_site)}
    done = haorch(hpc_site, "hpc", "up")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hpc site already up"), done.stdout
    assert {r["name"]: r["pid"] for r in site.status(hpc_site)} == before


def test_a_missing_program_names_its_package(hpc_site: Config):
    class Missing(SiteProgram):
        name = "missing"
        needs = (("haorch-no-such-daemon", "haorch-no-such-package"),)

    with pytest.raises(SetupError, match=r"no-such-daemon not found \(Debian package haorch-no-such-package\); "):
        Missing(hpc_site, SiteLayout.of(hpc_site)).check_binaries()


def test_down_leaves_no_process_and_no_site(hpc_site: Config):
    info = local(hpc_site)
    # a job still running at down: its step daemon outlives slurmd, so down cancels it
    submitted = login_run(SITE_NAME, info, f"cd {info.work_dir} && sbatch --job-name=hpc-test-long "
                                           "--output=/dev/null --wrap 'echo $$ > long.pid; exec sleep 300'",
                          timeout_s=30)
    assert submitted.exit_code == 0, submitted.stderr
    pid_file = Path(info.work_dir) / "long.pid"
    job_pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, "the job running"))
    pids = {r["name"]: r["pid"] for r in site.status(hpc_site)}
    assert all(isinstance(pid, int) for pid in pids.values())
    kept = SshPool()  # a worker's kept connection: its session process outlives the listener unless stopped
    try:
        session = kept.run(SITE_NAME, info, "echo $PPID", timeout_s=30)
        assert session.exit_code == 0, session.stderr
        started = time.monotonic()
        done = haorch(hpc_site, "hpc", "down")
        print(f"hpc down: {time.monotonic() - started:.2f} s")
        assert not pid_alive(int(session.stdout))  # while its client is still connected
    finally:
        kept.close()
    assert done.returncode == 0, done.stderr
    assert [n for n, pid in pids.items() if isinstance(pid, int) and pid_alive(pid)] == []
    assert not pid_alive(job_pid)
    assert "local" not in load_sites(hpc_site.home)
    assert list(SiteLayout.of(hpc_site).run_dir.glob("*.pid")) == []
    status = haorch(hpc_site, "hpc", "status", "--json")
    assert status.returncode == 1 and not any(r["up"] for r in json.loads(status.stdout))


def test_up_refuses_a_busy_port_before_starting_anything(hpc_site: Config):
    layout = SiteLayout.of(hpc_site)
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the site's closed connections may be in TIME_WAIT
        busy.bind((layout.host, layout.ports["sshd"]))
        busy.listen()
        done = haorch(hpc_site, "hpc", "up")
    assert done.returncode == 1
    assert done.stderr.strip() == (f"haorch: sshd: port {layout.ports['sshd']} on {layout.host} is already in use by "
                                   f"another process (change port_base in {hpc_site.home / 'haorch.toml'} or "
                                   "HAORCH_PORT_BASE)")
    assert list(layout.run_dir.glob("*.pid")) == []
