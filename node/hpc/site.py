"""The HPC test site haorch starts for tests, the demo and users trying it out: SLURM's controller, two compute
nodes, accounting (slurmdbd on a MariaDB of the site's own) and an SSH login node, with a generated munge key
and generated SSH keys, all as haorch's own processes on loopback ports (``Config.hpc_ports``)::

    result = up(cfg, progress=print)     # starts what is not running, waits for every real probe
    status(cfg)                          # [{"name": "munged", "pid": 4242, "port": None, "up": True}, ...]
    down(cfg, purge=False)               # stops the recorded PIDs, last started first

Its files live in ``<home>/hpc/local`` (``SiteLayout``); after ``up`` the site is registered as ``local`` in
``<home>/hpc/sites.json`` (node/hpc/siteinfo.py), which ``down`` removes again. Nothing system-wide is started,
read or written, except sshd's empty privilege-separation directory ``/run/sshd``.

A crash of ``up`` half-way leaves the programs it started running and recorded: the next ``up`` starts only
the rest, ``down`` stops them. Keys, the munge key and the database password are made once and kept until
``down --purge``.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from node.config import Config
from node.errors import ServiceError, SetupError
from node.hpc.site_programs import (
    Munged,
    SiteMariaDB,
    SiteProgram,
    Slurmctld,
    Slurmd,
    Slurmdbd,
    Sshd,
    run_client,
)
from node.hpc.siteinfo import SiteInfo, forget_site, save_site, sites_file
from node.hpc.slurm_conf import (
    NODES,
    PARTITION,
    SITE_NAME,
    SiteLayout,
    controller_host,
    slurm_conf,
    slurmdbd_conf,
    sshd_config,
)
from node.private_files import write_private
from node.stack.manager import wait_ready

Progress = Callable[[str], None]
REGISTER_TIMEOUT_S = 30.0


@dataclass
class Site:
    """The site's layout, its login as a worker sees it, and its programs in start order."""

    layout: SiteLayout
    info: SiteInfo
    munged: Munged
    mariadb: SiteMariaDB
    slurmdbd: Slurmdbd
    slurmctld: Slurmctld
    slurmds: list[Slurmd]
    sshd: Sshd

    @property
    def stages(self) -> list[list[SiteProgram]]:
        """Programs started together, each stage once the one before answers."""
        return [[self.munged, self.mariadb], [self.slurmdbd], [self.slurmctld], list(self.slurmds), [self.sshd]]

    @property
    def programs(self) -> list[SiteProgram]:
        return [p for stage in self.stages for p in stage]

    @property
    def login(self) -> str:
        return f"ssh -i {self.info.key_file} -o UserKnownHostsFile={self.info.known_hosts} -p {self.info.port} " \
               f"{self.info.user}@{self.info.host}"


def site(cfg: Config) -> Site:
    layout = SiteLayout.of(cfg)
    info = SiteInfo(host=layout.login, port=layout.ports["sshd"], user="root", key_file=str(layout.client_key),
                    known_hosts=str(layout.known_hosts), work_dir=str(layout.work_dir), env=layout.env,
                    partition=PARTITION)
    return Site(layout, info, Munged(cfg, layout), SiteMariaDB(cfg, layout), Slurmdbd(cfg, layout),
                Slurmctld(cfg, layout), [Slurmd(cfg, layout, n) for n in NODES], Sshd(cfg, layout, info))


@dataclass
class UpResult:
    started: list[str]
    already_running: list[str]
    seconds: float
    login: str
    site: SiteInfo


def up(cfg: Config, progress: Progress = lambda _m: None) -> UpResult:
    """Start every program of the site that is not running, wait for each one's probe, register the site as
    ``local``. Idempotent: with everything running it only probes."""
    t0 = time.monotonic()
    s = site(cfg)
    _check_address(s.layout.host)
    to_start = [p for p in s.programs if not p.proc.alive()]
    for program in to_start:  # fail before starting anything if a binary is missing or a port is taken
        program.check_binaries()
        program.check_ports_free()
    write_files(s.layout)
    for stage in s.stages:
        for program in stage:
            if program in to_start:
                where = f"port {program.port}" if program.owned_ports() else f"socket {s.layout.munge_socket}"
                progress(f"{program.name} starting on {where}")
                program.start()
        with ThreadPoolExecutor(max_workers=len(stage)) as pool:
            for future in [pool.submit(wait_ready, p, progress) for p in stage]:
                future.result()
        if s.mariadb in stage:
            s.mariadb.bootstrap()
            write_private(s.layout.slurmdbd_conf, slurmdbd_conf(s.layout, s.mariadb.password()))
        if s.slurmctld in stage:
            _wait_registered(s.slurmctld, progress)
    save_site(cfg.home, SITE_NAME, s.info)
    progress(f"site {SITE_NAME!r} registered in {sites_file(cfg.home)}")
    return UpResult([p.name for p in to_start], [p.name for p in s.programs if p not in to_start],
                    time.monotonic() - t0, s.login, s.info)


def _check_address(address: str) -> None:
    """Refuse a machine whose name does not resolve to a loopback address: SLURM would listen on a network."""
    name = socket.gethostname()
    if not address:
        raise SetupError(f"hpc: this machine's name {name!r} does not resolve to an address; the test site needs it "
                         f"to resolve to a loopback address (a line for it in /etc/hosts)")
    if not ipaddress.ip_address(address).is_loopback:
        raise SetupError(f"hpc: this machine's name {name!r} resolves to {address}, not a loopback address, and "
                         f"SLURM's daemons listen where it resolves; the test site runs on loopback only")


def _wait_registered(slurmctld: Slurmctld, progress: Progress) -> None:
    """Wait until slurmdbd knows the cluster: a job that ends before that would be missing from ``sacct``."""
    deadline = time.monotonic() + REGISTER_TIMEOUT_S
    while not slurmctld.registered():
        if time.monotonic() > deadline:
            raise ServiceError(f"slurmctld did not register its cluster with slurmdbd within {REGISTER_TIMEOUT_S:.0f} "
                               f"s; {slurmctld.log_hint()}")
        time.sleep(0.25)
    progress("cluster registered with slurmdbd")


def write_files(layout: SiteLayout) -> None:
    """Directories, keys (once) and configuration files (every time: ports or paths may have changed). A crash
    here leaves some written; the next up writes the rest."""
    for folder in (layout.etc, layout.run_dir, layout.log_dir, layout.spool, layout.ssh_dir, layout.work_dir):
        folder.mkdir(parents=True, exist_ok=True)
    host_public = _key_pair(layout.host_key)
    client_public = _key_pair(layout.client_key)
    layout.authorized_keys.write_text(client_public + "\n")
    # the format paramiko's load_host_keys and ssh's UserKnownHostsFile read; a port other than 22 is bracketed
    layout.known_hosts.write_text("".join(f"[{address}]:{layout.ports['sshd']} {host_public}\n"
                                          for address in dict.fromkeys((layout.host, layout.login))))
    layout.slurm_conf.write_text(slurm_conf(layout, controller_host()))
    layout.sshd_config.write_text(sshd_config(layout))


def _key_pair(private: Path) -> str:
    """The public line of the ed25519 key at ``private`` (OpenSSH format, mode 600), made when missing."""
    public = private.with_name(private.name + ".pub")
    if not private.exists():
        key = Ed25519PrivateKey.generate()
        write_private(private, key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode())
        public.write_text(key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
                          + " haorch-hpc\n")
    return public.read_text().strip()


def down(cfg: Config, purge: bool = False, progress: Progress = lambda _m: None) -> list[str]:
    """Cancel the site's jobs, stop its recorded processes (last started first), unregister it; ``purge`` also
    deletes its directory. A crash half-way leaves the rest running and recorded: run it again."""
    s = site(cfg)
    if s.slurmctld.proc.alive():
        _cancel_jobs(s, progress)
    stopped = []
    for program in reversed(s.programs):
        if program.stop():
            stopped.append(program.name)
            progress(f"{program.name} stopped")
    forget_site(cfg.home, SITE_NAME)
    if purge and s.layout.root.exists():
        shutil.rmtree(s.layout.root)
        progress(f"deleted {s.layout.root}")
    return stopped


def _cancel_jobs(s: Site, progress: Progress, timeout_s: float = 15.0) -> None:
    """Cancel every job and wait until their step daemons are gone (they outlive slurmd: their sockets in the
    nodes' spool directories tell they run)."""
    try:
        run_client(s.layout, ["scancel", "--user=root"])
    except ServiceError as exc:
        progress(f"could not cancel jobs ({exc})")
        return
    deadline = time.monotonic() + timeout_s
    while _step_sockets(s.layout) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _step_sockets(s.layout):
        progress(f"jobs still running after {timeout_s:.0f} s: {', '.join(_step_sockets(s.layout))}")


def _step_sockets(layout: SiteLayout) -> list[str]:
    return sorted(p.name for p in layout.spool.glob("slurmd-*/*_*.*") if p.is_socket())


def status(cfg: Config) -> list[dict[str, object]]:
    """One row per program: name, pid, port (None for munged, which has a socket only), up (its real probe); sshd's
    row also has ``login``, the ssh command line that logs in."""
    s = site(cfg)

    def row(p: SiteProgram) -> dict[str, object]:
        pid = p.proc.pid()
        return {"name": p.name, "pid": pid, "port": p.port if p.owned_ports() else None,
                "up": bool(pid) and p.healthy(), **({"login": s.login} if p is s.sshd else {})}

    with ThreadPoolExecutor(max_workers=len(s.programs)) as pool:
        return list(pool.map(row, s.programs))
