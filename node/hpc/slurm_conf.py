"""Where the HPC test site keeps its files, and the configuration files of its programs (slurm.conf,
slurmdbd.conf, sshd_config), rendered from that layout and the site's ports::

    layout = SiteLayout.of(cfg)          # files under <home>/hpc/local, ports from cfg.hpc_ports()
    layout.slurm_conf                    # <home>/hpc/local/etc/slurm.conf
    slurm_conf(layout, "myhost")         # the text of slurm.conf

Every path a program would otherwise take from its compiled-in default (/etc/slurm, /run/*.pid, /var/spool,
/var/log, /etc/ssh) is set to one under the site's own directory: nothing the site does touches the system's
copies. The only exception is sshd's privilege-separation directory, a path compiled into sshd
(``/run/sshd``), which the site creates (empty, mode 755) when it is missing.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from pathlib import Path

from node.config import Config
from node.runtime.placement import SINGLE_HOST_SERVICES, Placement, lab_hosts, placement

SITE_NAME = "local"  # the name ``haorch hpc up`` registers the site under (node/hpc/siteinfo.py)
CLUSTER = "haorch"  # SLURM's ClusterName, as slurmdbd records it
PARTITION = "batch"
NODES = ("n1", "n2")
NODE_CPUS = 4  # advertised; several slurmd share the machine's cores (SlurmdParameters=config_overrides)
DATABASE = "slurm_acct_db"
DB_USER = "slurm"


@dataclass(frozen=True)
class SiteLayout:
    """The site's directory, address and ports; on a lab (``haorch lab up``), the host it runs on.

    ``host`` is where the site's programs talk to each other (a loopback address: on a lab, the loopback of the
    site's own host, whose network namespace they all share); ``login`` is where workers reach its SSH login node
    (on a lab, the address of the lab's last host, with Neo4j and Prometheus: workers on the member hosts SSH to it
    over the lab's bridge, and a cut-off or crashed lab host takes its worker away from the site like a real one)."""

    root: Path
    host: str
    ports: dict[str, int]
    login: str = ""
    place: Placement | None = None

    @staticmethod
    def of(cfg: Config) -> SiteLayout:
        lab_host = placement(cfg, SINGLE_HOST_SERVICES[0])
        place = replace(lab_host, keep_mounts=True) if lab_host else None
        address = site_address()
        login = next((h["address"] for h in lab_hosts(cfg) if h["host"] == place.host), address) if place else address
        return SiteLayout(cfg.home / "hpc" / SITE_NAME, address, cfg.hpc_ports(), login, place)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` as the site's host runs it (inside its network namespace on a lab)."""
        return self.place.argv(argv, in_cgroup=False) if self.place else argv

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def run_dir(self) -> Path:
        """haorch's pid files of the site's programs."""
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def spool(self) -> Path:
        """SLURM's own state: slurmctld's saved state, each slurmd's spool, the daemons' own pid files."""
        return self.root / "spool"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def munge_dir(self) -> Path:
        return self.root / "munge"

    @property
    def work_dir(self) -> Path:
        """Where the site's jobs run and their data is staged."""
        return self.root / "work"

    @property
    def slurm_conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def slurmdbd_conf(self) -> Path:
        """slurmdbd reads ``slurmdbd.conf`` from the directory of ``$SLURM_CONF``: it must lie beside it."""
        return self.etc / "slurmdbd.conf"

    @property
    def sshd_config(self) -> Path:
        return self.etc / "sshd_config"

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.sock"

    @property
    def munge_key(self) -> Path:
        return self.munge_dir / "munge.key"

    @property
    def host_key(self) -> Path:
        return self.ssh_dir / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        """The private key haorch logs in with (its ``.pub`` is the one authorized key)."""
        return self.ssh_dir / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.ssh_dir / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def db_password_file(self) -> Path:
        return self.etc / "db.password"

    @property
    def env(self) -> dict[str, str]:
        """What every SLURM command of the site needs in its environment."""
        return {"SLURM_CONF": str(self.slurm_conf)}


def controller_host() -> str:
    """The name slurmctld checks ``SlurmctldHost`` against: this machine's short host name."""
    return socket.gethostname().split(".")[0]


def site_address() -> str:
    """The address every program of the site listens on: the one this machine's name resolves to, because that is
    where SLURM's daemons bind when told not to bind to every address (``NoInAddrAny``): a loopback address on a
    usual Debian (``/etc/hosts``). The empty string when the name does not resolve (``up`` refuses to start then)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return ""


def slurm_conf(layout: SiteLayout, hostname: str) -> str:
    """slurm.conf: one controller, the nodes n1 and n2 (slurmd each, on its own port), accounting in slurmdbd."""
    p, spool = layout.ports, layout.spool
    nodes = "\n".join(f"NodeName={n} NodeAddr={layout.host} Port={p[f'slurmd-{n}']} CPUs={NODE_CPUS} State=UNKNOWN"
                      for n in NODES)
    return f"""\
# Written by haorch (node/hpc/slurm_conf.py) at every `haorch hpc up`: edits are overwritten.
ClusterName={CLUSTER}
SlurmctldHost={hostname}({layout.host})
SlurmUser=root
SlurmdUser=root
SlurmctldPort={p['slurmctld']}
SrunPortRange={p['srun-first']}-{p['srun-last']}
# without these two, slurmctld and slurmd listen on every address; with them, where this host's name resolves
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
AuthInfo=socket={layout.munge_socket}
CredType=cred/munge
StateSaveLocation={spool / 'slurmctld'}
SlurmdSpoolDir={spool / 'slurmd-%n'}
SlurmctldPidFile={spool / 'slurmctld.pid'}
SlurmdPidFile={spool / 'slurmd-%n.pid'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
# the default delays a batch job's start by up to ~3 s
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost={layout.host}
AccountingStoragePort={p['slurmdbd']}
AccountingStoragePass={layout.munge_socket}
JobCompType=jobcomp/none
{nodes}
PartitionName={PARTITION} Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


def slurmdbd_conf(layout: SiteLayout, db_password: str) -> str:
    """slurmdbd.conf (mode 600: it holds the database password): slurmdbd on its port, the site's MariaDB."""
    return f"""\
# Written by haorch (node/hpc/slurm_conf.py) at every `haorch hpc up`: edits are overwritten.
AuthType=auth/munge
AuthInfo=socket={layout.munge_socket}
# read into the same setting as slurm.conf's: without it, slurmdbd listens on every address
CommunicationParameters=NoInAddrAny
DbdAddr={layout.host}
DbdHost={controller_host()}
DbdPort={layout.ports['slurmdbd']}
SlurmUser=root
PidFile={layout.spool / 'slurmdbd.pid'}
StorageType=accounting_storage/mysql
StorageHost={layout.host}
StoragePort={layout.ports['hpc-mariadb']}
StorageUser={DB_USER}
StoragePass={db_password}
StorageLoc={DATABASE}
"""


def sshd_config(layout: SiteLayout) -> str:
    """sshd_config of the login node: root by key only, its own host key and authorized keys, SLURM_CONF set."""
    # SHLVL=1: without it root's .bashrc made each remote command cost ~280 ms
    # MaxSessions: OpenSSH allows 10 channels a connection; a worker's tasks share one (up to 2 each while staging)
    return f"""\
# Written by haorch (node/hpc/slurm_conf.py) at every `haorch hpc up`: edits are overwritten.
Port {layout.ports['sshd']}
ListenAddress {layout.host}
{f"ListenAddress {layout.login}" if layout.login != layout.host else ""}
HostKey {layout.host_key}
PidFile {layout.spool / 'sshd.pid'}
AuthorizedKeysFile {layout.authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
PrintLastLog no
Subsystem sftp internal-sftp
MaxSessions 64
SetEnv SLURM_CONF={layout.slurm_conf} SHLVL=1
"""
