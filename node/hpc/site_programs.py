"""The programs of the HPC test site, each a stack :class:`Service` whose pid file and log live in the site's own
directory (``SiteLayout.run_dir``, ``log_dir``) and whose probe is a real request:

=============  ===========================================================================================
munged         a credential encoded with ``munge`` and decoded with ``unmunge`` over the site's socket
hpc-mariadb    ``SELECT 1`` over its socket (the stack's MariaDB service on a datadir and port of the site)
slurmdbd       ``sacctmgr show cluster`` (sacctmgr talks to slurmdbd)
slurmctld      ``scontrol ping`` answers UP
slurmd-nX      node nX is idle (or running jobs) and responding in ``sinfo``
sshd           a new SSH login with the site's key that runs ``sinfo`` (node/hpc/ssh.py, as a worker logs in)
=============  ===========================================================================================
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

from node.config import Config
from node.errors import ServiceError, SetupError
from node.hpc.siteinfo import SiteInfo
from node.hpc.slurm_conf import CLUSTER, DATABASE, DB_USER, PARTITION, SITE_NAME, SiteLayout
from node.hpc.ssh import SshError, login_run
from node.paths import setup_hint
from node.private_files import write_private
from node.runtime.process import ManagedProcess, children, start_time, wait_gone
from node.stack.mariadb import MariaDB
from node.stack.service import Launch, Service

SBIN_PATH = "/usr/sbin:/sbin"  # the daemons live there; a non-root PATH may lack it
MYSQL_PLUGIN = "/usr/lib/*/slurm-wlm/accounting_storage_mysql.so"


def program(binary: str) -> str | None:
    """The absolute path of ``binary`` on PATH or in the sbin directories, None when it is not installed."""
    return shutil.which(binary, path=f"{os.environ.get('PATH', '')}:{SBIN_PATH}")


def run_client(layout: SiteLayout, argv: list[str], timeout_s: float = 10.0) -> str:
    """Run a SLURM or munge client of the site; its stdout, or ServiceError with the first line it printed."""
    try:
        done = subprocess.run(layout.command([program(argv[0]) or argv[0], *argv[1:]]), capture_output=True, text=True,
                              timeout=timeout_s, env={**os.environ, **layout.env})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        first = ((done.stderr or done.stdout).strip().splitlines() or [f"exit code {done.returncode}"])[0]
        raise ServiceError(f"{' '.join(argv)}: {first}")
    return done.stdout


class SiteProgram(Service):
    """A program of the site: ``needs`` names its binaries and the Debian package of each."""

    needs: tuple[tuple[str, str], ...] = ()

    def __init__(self, cfg: Config, layout: SiteLayout) -> None:
        # not Service's: its handle would be the stack's (pid file in <home>/run, a container in the docker runtime)
        self.cfg = cfg
        self.layout = layout
        self.proc = ManagedProcess(self.name, layout.run_dir, layout.log_dir, layout.place)

    @property
    def address(self) -> str:
        return self.layout.host

    @property
    def port(self) -> int:
        return self.layout.ports[self.name]

    def check_binaries(self) -> None:
        for binary, package in self.needs:
            if program(binary) is None:
                raise SetupError(f"{self.name}: {binary} not found (Debian package {package}); {setup_hint()}")

    def binary(self, name: str) -> str:
        found = program(name)
        if found is None:
            raise SetupError(f"{self.name}: {name} not found; {setup_hint()}")
        return found

    @property
    def env(self) -> dict[str, str]:
        return self.layout.env


class Munged(SiteProgram):
    """The site's munge daemon: credentials for every SLURM message, with the site's own key."""

    name = "munged"
    needs = (("munged", "munge"), ("munge", "munge"), ("unmunge", "munge"))
    start_timeout_s = 10.0

    def owned_ports(self) -> list[int]:
        return []  # a unix socket only

    def prepare(self) -> None:
        """The key (1 KiB of random hex, mode 600) once; the socket's directory must be 755 for munged."""
        self.layout.munge_dir.mkdir(parents=True, exist_ok=True)
        self.layout.munge_dir.chmod(0o755)
        if not self.layout.munge_key.exists():
            write_private(self.layout.munge_key, secrets.token_hex(512))

    def command(self) -> Launch:
        d = self.layout.munge_dir
        # in the foreground munged logs to stderr (the log file); --log-file only replaces the system's default path
        return Launch([self.binary("munged"), "-F", f"--socket={self.layout.munge_socket}",
                       f"--key-file={self.layout.munge_key}", f"--pid-file={d / 'munged.pid'}",
                       f"--log-file={self.proc.log_file}", f"--seed-file={d / 'munged.seed'}"])

    def probe(self) -> None:
        sock = f"--socket={self.layout.munge_socket}"
        credential = run_client(self.layout, ["munge", sock, "--no-input"], timeout_s=5)
        done = subprocess.run(self.layout.command([self.binary("unmunge"), sock]), input=credential,
                              capture_output=True, text=True,
                              timeout=5)
        if done.returncode != 0:
            raise ServiceError(f"unmunge: {done.stderr.strip() or done.returncode}")


class SiteMariaDB(SiteProgram, MariaDB):
    """The database slurmdbd keeps its accounting in: a MariaDB of the site's own (datadir, port), made and run the
    way the stack's is, with one password user for slurmdbd."""

    name = "hpc-mariadb"
    needs = (("mariadbd", "mariadb-server"), ("mariadb-install-db", "mariadb-server"), ("mariadb", "mariadb-client"))

    @property
    def datadir(self) -> Path:
        return self.layout.root / "mariadb"

    def server_args(self) -> list[str]:
        # later options win: the stack's sizes are for haorch's load, the site's accounting needs little (the lock
        # wait is the one slurmdbd asks for at start)
        server, *args = super().server_args()
        return [self.binary(server), *args, "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=48M",
                "--max-connections=50", "--performance-schema=OFF", "--aria-pagecache-buffer-size=8M",
                "--key-buffer-size=8M", "--innodb-lock-wait-timeout=900"]

    def password(self) -> str:
        """slurmdbd's database password, generated once (hex: nothing to quote in SQL or slurmdbd.conf)."""
        path = self.layout.db_password_file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_private(path, secrets.token_hex(20))
        return path.read_text().strip()

    def bootstrap(self) -> None:
        """The accounting database and slurmdbd's user (idempotent; a crash here is repaired by the next up)."""
        pw = self.password()
        statements = [f"CREATE DATABASE IF NOT EXISTS {DATABASE};"]
        for host in ("localhost", self.layout.host):
            who = f"'{DB_USER}'@'{host}'"
            statements += [f"CREATE USER IF NOT EXISTS {who} IDENTIFIED BY '{pw}';",
                           f"ALTER USER {who} IDENTIFIED BY '{pw}';",
                           f"GRANT ALL PRIVILEGES ON {DATABASE}.* TO {who};"]
        self.root_sql("".join(statements))


class Slurmdbd(SiteProgram):
    """SLURM's accounting daemon: what ``sacct`` asks about finished jobs."""

    name = "slurmdbd"
    needs = (("slurmdbd", "slurmdbd"), ("sacctmgr", "slurm-client"))

    def check_binaries(self) -> None:
        super().check_binaries()
        if not glob.glob(MYSQL_PLUGIN):
            raise SetupError(f"{self.name}: its MySQL plugin is not installed (Debian package slurm-wlm-mysql-plugin); "
                             f"{setup_hint()}")

    def command(self) -> Launch:
        return Launch([self.binary("slurmdbd"), "-D"], env=self.env)

    def probe(self) -> None:
        run_client(self.layout, ["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"])


class Slurmctld(SiteProgram):
    """The controller. Stopped with SIGTERM, and given two minutes to save its state before the SIGKILL that ends
    any stuck process: killed, it loses the jobs submitted in its last seconds while they still run on the nodes,
    and reuses their ids."""

    name = "slurmctld"
    needs = (("slurmctld", "slurmctld"), ("scontrol", "slurm-client"))
    stop_grace_s = 120.0

    def command(self) -> Launch:
        return Launch([self.binary("slurmctld"), "-D", "-f", str(self.layout.slurm_conf)], env=self.env)

    def probe(self) -> None:
        out = run_client(self.layout, ["scontrol", "ping"])
        if "UP" not in out:
            raise ServiceError(f"scontrol ping: {out.strip()}")

    def stop(self) -> bool:
        return self.proc.stop(grace_s=self.stop_grace_s)

    def registered(self) -> bool:
        """Whether slurmdbd knows this cluster (slurmctld registers it): from then on jobs reach ``sacct``."""
        return CLUSTER in run_client(self.layout, ["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"])


SERVING = {"idle", "mix", "mixed", "alloc", "allocated", "comp", "completing"}


class Slurmd(SiteProgram):
    """A compute node's daemon (one per node, all on this machine, each on its own port)."""

    needs = (("slurmd", "slurmd"), ("slurmstepd", "slurmd"), ("sinfo", "slurm-client"))

    def __init__(self, cfg: Config, layout: SiteLayout, node: str) -> None:
        self.node = node
        self.name = f"slurmd-{node}"
        super().__init__(cfg, layout)

    def command(self) -> Launch:
        return Launch([self.binary("slurmd"), "-D", "-f", str(self.layout.slurm_conf), "-N", self.node],
                      env=self.env)

    def state(self) -> str:
        """The node's state as sinfo prints it (``idle``, ``mix``, ``idle*`` when not responding, ...)."""
        return run_client(self.layout, ["sinfo", "-h", "-N", "-n", self.node, "-o", "%t"]).strip()

    def probe(self) -> None:
        state = self.state()
        if state not in SERVING:
            raise ServiceError(f"node {self.node} is {state or 'unknown'}")


class Sshd(SiteProgram):
    """The login node: root by the site's key only, on its own port and host key."""

    name = "sshd"
    needs = (("sshd", "openssh-server"),)
    privsep_dir = Path("/run/sshd")  # compiled into sshd

    def __init__(self, cfg: Config, layout: SiteLayout, info: SiteInfo) -> None:
        super().__init__(cfg, layout)
        self.info = info

    def prepare(self) -> None:
        self.privsep_dir.mkdir(mode=0o755, exist_ok=True)

    def command(self) -> Launch:
        # sshd re-executes itself for each connection: it needs its absolute path
        return Launch([self.binary("sshd"), "-D", "-e", "-f", str(self.layout.sshd_config)])

    def probe(self) -> None:
        """A new login each time (not a kept connection): the listener itself must answer."""
        try:
            result = login_run(SITE_NAME, self.info, "sinfo -h -o %P", timeout_s=10)
        except SshError as exc:
            raise ServiceError(str(exc)) from None
        if result.exit_code != 0:
            raise ServiceError(f"sinfo on the login node failed: {result.last_error_line()}")
        if PARTITION not in result.stdout:
            raise ServiceError(f"sinfo on the login node does not list the partition {PARTITION}")

    def stop(self) -> bool:
        """Stop the listener, then the sessions it forked: each is a session of its own that outlives the listener
        for as long as its client (a worker's kept connection) stays connected."""
        listener = self.proc.pid()
        sessions = children(listener) if listener else []
        stopped = self.proc.stop()
        for pid, started in sessions:
            if start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        for pid, _started in sessions:
            wait_gone(pid, 5.0)
        return stopped
