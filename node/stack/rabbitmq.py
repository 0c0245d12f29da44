"""RabbitMQ as haorch's own Erlang nodes: the single node of the ``single`` topology, or the three nodes of the
``ha`` topology's cluster, each with its ports, data dir and log dir, and epmd as a managed process.

The generated user is the broker's *default user* (``default_user`` in rabbitmq.conf), so the ``guest`` user is
never created. A policy bounds ``haorch.dead`` to ``dead_letters_max`` messages (the oldest dropped). The workers'
user is added by the bootstrap (``rabbitmqctl``) with the rights a worker needs and no more: read
``haorch.requests``, write the ``haorch.worker`` exchange (bound to ``haorch.responses`` and ``haorch.dead``),
configure nothing. epmd runs as a managed process in the foreground on its own port, so that it
can be stopped by PID and two stacks on one machine do not share it.

The cluster (``rabbitmq-1..3``): node ``m`` listens on its host's address (``Config.member_host``); blank nodes find
each other through the ``classic_config`` list, all with the same Erlang cookie. Everything on one machine
(``member_hosts`` unset): short names ``haorch<port_base>-<m>@localhost`` registered with ONE shared epmd
(``rabbitmq-epmd``, stopped with the last node). On several hosts: long names ``haorch<port_base>-<m>@<address>``
and one epmd per host (``rabbitmq-epmd-<m>``, which node/runtime/placement.py starts on host ``m``; an epmd always
listens on its host's loopback too, so two cannot share a machine). ``net_ticktime`` (5 s) notices a cut-off node
within seconds; ``autoheal`` restarts the nodes of the losing side once the partition ends, so the cluster heals by
itself (``pause_minority`` did not, in the lab: after a healed 2|1 partition Mnesia reported an inconsistent
database and the pauses cascaded until a majority node paused too, leaving a node unhealthy; quorum queues keep
their data safe either way, since a minority cannot commit). A node that was frozen (SIGSTOP) reconnects at once
when thawed, before it notices it was cut off, and may need a restart. The bootstrap waits for all three nodes
before declaring the quorum queues, so that each gets one member on every node.

    nodes = rabbitmq_cluster(cfg)       # [RabbitMQ(cfg, 1), RabbitMQ(cfg, 2), RabbitMQ(cfg, 3)]
    nodes[0].node_name                  # "haorch17100-1@localhost"
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import pika

from node.config import HA_MEMBERS, RABBIT_USER, RABBIT_VHOST, RABBIT_WORKER_USER, Config
from node.errors import ServiceError
from node.private_files import write_private
from node.runtime.handle import TcpCheck
from node.runtime.programs import handle
from node.stack.service import Launch, Service
from node.stores.connect import amqp_parameters
from node.stores.queues import DEAD, REQUESTS, WORKER_EXCHANGE, declare_topology

RABBIT_BIN = "/usr/lib/rabbitmq/bin"
# configure, write, read (regular expressions over resource names): declare nothing, publish only through the
# workers' exchange, consume only the requests
WORKER_PERMISSIONS = ("^$", f"^{re.escape(WORKER_EXCHANGE)}$", f"^{re.escape(REQUESTS)}$")
# A node that hears nothing from a peer for this many seconds considers it down (a partition or a frozen node; a
# killed node's closed socket is noticed at once); its queues then elect new leaders. The default, 60, stalls the
# queues a frozen or cut-off node led for a minute; with 5 they served again after ~8.5 s here.
NET_TICKTIME_S = 5
CLUSTER_WAIT_S = 120  # how long the bootstrap waits for all nodes to run
DEAD_POLICY = "haorch-dead-bound"  # the policy bounding haorch.dead (dead_letters_max)


def erlang_ip(address: str) -> str:
    """An IPv4 address as an Erlang term (``{127,0,0,1}``), for ``-kernel inet_dist_use_interface``."""
    return "{" + ",".join(address.split(".")) + "}"


def long_names(cfg: Config) -> bool:
    """Whether the cluster's nodes are on hosts of their own (``member_hosts``): long node names, an epmd each."""
    return any(h.strip() for h in cfg.member_hosts.split(","))


def node_name(cfg: Config, member: int = 0) -> str:
    """The Erlang node name of the single node (``member`` 0) or of cluster node ``member``."""
    if not member:
        return f"haorch{cfg.port_base}@localhost"
    host = cfg.member_host(member) if long_names(cfg) else "localhost"
    return f"haorch{cfg.port_base}-{member}@{host}"


def epmd_name(cfg: Config, member: int = 0) -> str:
    """The managed-process name of the epmd that node ``member`` registers with."""
    return f"rabbitmq-epmd-{member}" if member and long_names(cfg) else "rabbitmq-epmd"


class RabbitMQ(Service):
    """The single node (``member`` 0) or node ``member`` (1..3) of the ``ha`` cluster."""

    image = "rabbitmq"
    binaries = (f"{RABBIT_BIN}/rabbitmq-server", "epmd")
    start_timeout_s = 90.0

    def __init__(self, cfg: Config, member: int = 0) -> None:
        self.member = member
        self.name = f"rabbitmq-{member}" if member else "rabbitmq"
        super().__init__(cfg)
        self.epmd = handle(cfg, epmd_name(cfg, member), self.image)

    @property
    def address(self) -> str:
        return self.cfg.member_host(self.member) if self.member else self.cfg.host

    @property
    def port(self) -> int:
        return self.cfg.rabbit_member_port(self.member, 0) if self.member else self.cfg.rabbit_port

    @property
    def dist_port(self) -> int:
        return self.cfg.rabbit_member_port(self.member, 1) if self.member else self.cfg.rabbit_dist_port

    @property
    def health(self) -> TcpCheck:
        # the protocol header; the broker answers Connection.Start, whose server properties open with capabilities
        return TcpCheck(self.port, "AMQP\\0\\0\\x09\\x01", "capabilities", read_bytes=64)

    @property
    def node_name(self) -> str:
        return node_name(self.cfg, self.member)

    @property
    def shares_epmd(self) -> bool:
        """Whether other nodes of the cluster register with this node's epmd (all on one machine)."""
        return bool(self.member) and not long_names(self.cfg)

    def owned_ports(self) -> list[int]:
        ports = [self.port, self.dist_port]
        return ports if self.epmd.alive() else [*ports, self.cfg.epmd_port]

    def env(self) -> dict[str, str]:
        data = self.cfg.data_dir(self.name)
        return {
            "HOME": str(data),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_BASE": str(data),
            "RABBITMQ_MNESIA_BASE": str(data / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.cfg.log_dir / self.name),
            "RABBITMQ_CONFIG_FILE": str(data / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(data / "enabled_plugins"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_PID_FILE": str(data / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"-kernel inet_dist_use_interface {erlang_ip(self.address)}",
            # unbound schedulers: bound ones (the default, "db") cannot move to the idle core while the kernel runs
            # another of the stack's programs on theirs (docs/BENCHMARKS.md, "... and RabbitMQ's schedulers")
            "RABBITMQ_SCHEDULER_BIND_TYPE": "u",
            "ERL_EPMD_ADDRESS": self.address,
            "ERL_EPMD_PORT": str(self.cfg.epmd_port),
            **self._cli_env(),
        }

    def _cli_env(self) -> dict[str, str]:
        """What ``rabbitmqctl`` needs besides HOME (the cookie) and the epmd port to reach a cluster node."""
        if not self.member:
            return {}
        port = str(self.cfg.rabbit_member_port(self.member, 2))
        env = {"RABBITMQ_CTL_DIST_PORT_MIN": port, "RABBITMQ_CTL_DIST_PORT_MAX": port,
               "RABBITMQ_CTL_ERL_ARGS": f"-kernel inet_dist_use_interface {erlang_ip(self.address)}"}
        if long_names(self.cfg):
            env["RABBITMQ_USE_LONGNAME"] = "true"
        return env

    def prepare(self) -> None:
        data = self.cfg.data_dir(self.name)
        data.mkdir(parents=True, exist_ok=True)
        (self.cfg.log_dir / self.name).mkdir(parents=True, exist_ok=True)
        (data / "enabled_plugins").write_text("[].\n")
        write_private(data / "rabbitmq.conf", f"""# generated by haorch stack up
listeners.tcp.default = {self.address}:{self.port}
loopback_users.guest = true
default_vhost = {RABBIT_VHOST}
default_user = {RABBIT_USER}
default_pass = {self.cfg.secrets.rabbit_password}
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
vm_memory_high_watermark.relative = 0.2
disk_free_limit.absolute = 200MB
log.console = false
log.file.level = info
{self._cluster_conf()}""")
        cookie = data / ".erlang.cookie"
        if not cookie.exists():  # the same on every node: derived from the stack's generated password
            write_private(cookie, hashlib.sha256(self.cfg.secrets.rabbit_password.encode()).hexdigest().upper(),
                          mode=0o400)
        if not self.epmd.alive():
            self.epmd.start(["epmd", "-address", self.address, "-port", str(self.cfg.epmd_port)], env=self.env())

    def _cluster_conf(self) -> str:
        """The cluster settings of rabbitmq.conf (none for the single node)."""
        if not self.member:
            return ""
        peers = "".join(f"cluster_formation.classic_config.nodes.{m} = {node_name(self.cfg, m)}\n"
                        for m in range(1, HA_MEMBERS + 1))
        # a blank node that finds no peer running retries this often before it starts a cluster of its own; the
        # other blank nodes then join it (peer discovery holds a lock across the nodes listed)
        return f"""cluster_formation.peer_discovery_backend = classic_config
{peers}cluster_formation.discovery_retry_limit = 4
cluster_formation.discovery_retry_interval = 500
cluster_partition_handling = autoheal
net_ticktime = {NET_TICKTIME_S}
"""

    def command(self) -> Launch:
        return Launch([f"{RABBIT_BIN}/rabbitmq-server"], env=self.env())

    def probe(self) -> None:
        """An AMQP connection to this node (not to the first cluster node that answers)."""
        params = [p for p in amqp_parameters(self.cfg, heartbeat_s=0, name="haorch-probe")
                  if (p.host, p.port) == (self.address, self.port)]
        try:
            conn = pika.BlockingConnection(params)
        except Exception as exc:  # noqa: BLE001 - pika raises many types; all mean "not ready"
            raise ServiceError(f"{self.name}: cannot connect: {type(exc).__name__}") from None
        conn.close()

    def bootstrap(self) -> None:
        """The queues and the workers' user: on the single node, or through node 1 of the cluster once all its
        nodes run (users, permissions and queues are the cluster's; nodes 2 and 3 have nothing to do). A crash
        part way is repaired by the next ``stack up``: every step is idempotent."""
        if self.member > 1:
            return
        if self.member:
            self.ctl("await_online_nodes", str(HA_MEMBERS), "--timeout", str(CLUSTER_WAIT_S),
                     timeout_s=CLUSTER_WAIT_S + 30)
        declare_topology(self.cfg)
        self._bootstrap_worker_user()
        self._bound_dead_letters()

    def _bound_dead_letters(self) -> None:
        """Keep at most ``dead_letters_max`` messages in ``haorch.dead``, the oldest dropped first: a policy, since a
        declared queue's arguments cannot change (quorum queues support ``max-length`` with ``drop-head``). Set again
        at every bootstrap, so a changed bound applies; ``dead_letters_max`` 0 removes it (no bound)."""
        if self.cfg.dead_letters_max > 0:
            self.ctl("set_policy", "-p", RABBIT_VHOST, "--apply-to", "queues", DEAD_POLICY, f"^{re.escape(DEAD)}$",
                     json.dumps({"max-length": self.cfg.dead_letters_max, "overflow": "drop-head"}))
        else:
            self.ctl("clear_policy", "-p", RABBIT_VHOST, DEAD_POLICY, ok_if="not found")

    def _bootstrap_worker_user(self) -> None:
        """Create the workers' user (or reset its password to the secrets file's) and set its permissions."""
        password = self.cfg.secrets.worker_rabbit_password
        added = self.ctl("add_user", RABBIT_WORKER_USER, password, ok_if="already exists")
        if not added:
            self.ctl("change_password", RABBIT_WORKER_USER, password)
        self.ctl("set_permissions", "-p", RABBIT_VHOST, RABBIT_WORKER_USER, *WORKER_PERMISSIONS)

    def ctl(self, *args: str, ok_if: str | None = None, timeout_s: float = 60.0) -> bool:
        """Run ``rabbitmqctl`` against this node; False when it failed with ``ok_if`` in its output, ServiceError
        on any other failure."""
        out = self.cli("rabbitmqctl", *args, timeout_s=timeout_s)
        if out.returncode == 0:
            return True
        text = (out.stderr + out.stdout).strip()
        if ok_if is not None and ok_if in text:
            return False
        raise ServiceError(f"{self.name}: rabbitmqctl {args[0]} failed: {' '.join(text.split())[:300]}")

    def cli(self, tool: str, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a RabbitMQ CLI tool (``rabbitmqctl``, ``rabbitmq-queues``, ...) against this node and return the
        completed process (quiet: no banner before the answer)."""
        env = {"HOME": str(self.cfg.data_dir(self.name)), "ERL_EPMD_PORT": str(self.cfg.epmd_port),
               **self._cli_env()}
        return self.proc.run(["env", *(f"{k}={v}" for k, v in env.items()),
                              f"{RABBIT_BIN}/{tool}", "-q", "-n", self.node_name, *args], timeout_s=timeout_s)

    def stop(self) -> bool:
        """Stop the node, then its epmd unless another node of the cluster still uses it."""
        stopped = self.proc.stop(grace_s=30.0)
        if self.shares_epmd and any(handle(self.cfg, f"rabbitmq-{m}", self.image).alive()
                                    for m in range(1, HA_MEMBERS + 1) if m != self.member):
            return stopped
        return self.epmd.stop(grace_s=5.0) or stopped


def rabbitmq_cluster(cfg: Config) -> list[Service]:
    """The ``ha`` topology's broker: nodes ``rabbitmq-1..3``."""
    return [RabbitMQ(cfg, m) for m in range(1, HA_MEMBERS + 1)]
