"""One configuration for the whole stack: the state dir, loopback ports, credentials and tunables.

Values come from, in order of precedence: environment variables ``HAORCH_<NAME>`` (upper case), the file
``haorch.toml`` in the state dir, then the defaults below. The state dir is ``$HAORCH_HOME`` (default
``./.haorch``). Every port is derived from ``port_base`` so that two stacks (a user's and the test suite's)
can live side by side on one machine. A stack uses ``port_base + 1 .. port_base + 299`` (services below +70,
nodes +71..+99, workers +101..+199, leader beacons +201..+229, Galera members +230..+241, RabbitMQ cluster nodes
+250..+272, the HPC test site +280..+299): keep two stacks' bases at least 300 apart. ``member_hosts`` spreads
members, nodes and workers over several hosts (the lab, or three real machines: docs/OPERATIONS.md);
``topology = "ha"`` clusters RabbitMQ and MariaDB.
``runtime`` says whether the stack's programs run as processes or Docker containers; a state dir remembers the
one its stack was started in (``<home>/runtime``), unless a setting names it::

    cfg = load_config()
    cfg.zk_hosts          # "127.0.0.1:17101,127.0.0.1:17102,127.0.0.1:17103"
    cfg.mysql_port        # 17140

Services that already run elsewhere (a ZooKeeper ensemble, a RabbitMQ cluster, MariaDB or Galera members, a Neo4j,
a Prometheus) are named by the settings ``zookeeper``, ``rabbitmq``, ``mariadb``, ``neo4j`` and ``prometheus``:
clients use them (trying the members of a list in order) and ``haorch stack`` leaves them alone. Unset, every
client uses the managed stack on ``host``.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from node.errors import UsageError
from node.private_files import write_private

HOST = "127.0.0.1"
ZK_MEMBERS = 3
HA_MEMBERS = 3  # RabbitMQ nodes and Galera members of the ``ha`` topology
TOPOLOGIES = ("single", "ha")
RABBIT_VHOST = "haorch"
RABBIT_USER = "haorch"
RABBIT_WORKER_USER = "haorch-worker"
MYSQL_DATABASE = "haorch"
MYSQL_USER = "haorch"
MYSQL_WORKER_USER = "haorch_worker"
ZK_USER = "haorch"
ZK_ROOT = "/haorch"  # every znode haorch creates lives under it
NEO4J_USER = "neo4j"
RUNTIMES = ("process", "docker")


@dataclass(frozen=True)
class Secrets:
    """Generated passwords, stored in ``<home>/secrets.json`` on the first ``stack up``, in a file that is 0600 from
    its creation (``node/private_files.py``). A file written by an older version gains the passwords it lacks
    (the next ``stack up`` creates the users they belong to); the ones it has are never changed."""

    rabbit_password: str
    mysql_password: str
    neo4j_password: str
    zookeeper_password: str  # digest identity ZK_USER, owner of haorch's znodes
    worker_mysql_password: str  # MYSQL_WORKER_USER
    worker_rabbit_password: str  # RABBIT_WORKER_USER

    @staticmethod
    def load_or_create(home: Path) -> Secrets:
        path = home / "secrets.json"
        names = [f.name for f in fields(Secrets)]
        stored = _read_secrets(path)
        if any(name not in stored for name in names):
            home.mkdir(parents=True, exist_ok=True)
            # one writer at a time: concurrent first starts must agree on every password
            with open(home / "secrets.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                stored = _read_secrets(path)
                missing = [name for name in names if name not in stored]
                if missing:
                    # hex: no leading '-' that a command line (rabbitmqctl add_user) would read as an option
                    stored.update({name: secrets.token_hex(20) for name in missing})
                    write_private(path, json.dumps(stored))
        return Secrets(**{name: stored[name] for name in names})


def _read_secrets(path: Path) -> dict[str, str]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return {}


@dataclass(frozen=True)
class Config:
    """Everything a haorch process needs to find and talk to the stack."""

    home: Path
    port_base: int = 17100
    host: str = HOST  # the address of the managed single-instance services (all of them unless member_hosts is set)
    # the addresses of hosts 1..N (comma-separated): ZooKeeper member i, RabbitMQ node i, Galera member i, node i
    # and worker i run on host i (numbers above N wrap around); empty: everything on ``host``
    member_hosts: str = ""
    bind_address: str = ""  # what node and worker sockets bind to (e.g. 0.0.0.0); empty: their own address
    # HTTPS for every node's HTTP port: the PEM certificate (chain) and its private key, both or neither; empty:
    # plain HTTP (tokens then cross the network in clear: keep bind_address on a trusted network)
    tls_cert: str = ""
    tls_key: str = ""
    client_addresses: str = ""  # further addresses haorch's clients connect from (MariaDB users are per address)
    topology: str = "single"  # "ha": a 3-node RabbitMQ cluster and a 3-member Galera cluster instead of one each
    # services haorch uses but does not manage (empty: the managed stack on ``host``); lists are comma-separated
    # host:port members that clients try in order
    zookeeper: str = ""   # the ensemble's connect string
    rabbitmq: str = ""    # broker cluster members
    mariadb: str = ""     # MariaDB (or Galera) members
    neo4j: str = ""       # bolt:// URI
    prometheus: str = ""  # http:// URL
    runtime: str = "process"  # or "docker": services, nodes and workers as containers (node/runtime/)
    # election
    zk_session_timeout_s: float = 2.0
    leader_beacon: bool = True  # notice a killed leader through its beacon socket, before its session expires
    # leader loop
    batch_size: int = 200
    batch_wait_ms: float = 1.0  # under load a batch fills while the previous one is processed; linger costs latency
    task_timeout_grace_s: float = 5.0
    sweep_interval_s: float = 1.0
    submit_grace_s: float = 30.0  # a QUEUED experiment without a DAG this old is a dead submit: the leader builds it
    # backpressure: a submission that would bring the experiments QUEUED or RUNNING above this is refused (Busy, HTTP
    # 429) instead of growing the queues and the takeover's rescan; 0: no bound
    max_in_flight: int = 200_000
    # retention (node/retention/): the leader deletes experiments that finished longer ago than this (their Neo4j
    # subgraph and MariaDB rows), ``gc_batch`` at a time every ``gc_interval_s``; a template's ``retention_days``
    # overrides it for its type; 0: keep forever
    retention_days: float = 30.0
    gc_batch: int = 100
    gc_interval_s: float = 5.0
    archive_dir: str = ""  # before deleting, append each experiment to <dir>/<UTC day>.jsonl.gz; empty: no archive
    keep_leader_terms: int = 1000  # leader_terms rows kept (the newest)
    dead_letters_max: int = 100_000  # messages haorch.dead keeps (the oldest are dropped beyond it)
    takeover_page_size: int = 2000  # ready tasks re-dispatched per takeover page (one small fenced transaction)
    # the server ends a leader's, a cancel's or a retry's Neo4j transaction that runs or waits on a lock longer
    neo4j_tx_timeout_s: float = 15.0
    # RabbitMQ
    rabbit_heartbeat_s: int = 5  # a killed peer's TCP closes at once; this bounds a frozen one
    # MariaDB and RabbitMQ connections: a member that does not acknowledge what is sent to it for this long (cut
    # off, gone dark) is given up and the next member tried; also the connect timeout
    peer_timeout_s: float = 4.0
    # workers
    worker_concurrency: int = 4
    worker_prefetch: int = 200
    shell_executor_enabled: bool = False
    # services
    neo4j_heap: str = "512m"
    neo4j_pagecache: str = "128m"
    zk_heap: str = "128m"
    scrape_interval: str = "1s"
    _secrets: Secrets | None = field(default=None, repr=False, compare=False)

    # --- ports (all on ``host``) --------------------------------------------------------------
    def zk_client_port(self, member: int) -> int:
        """Client port of ZooKeeper member 1..3."""
        return self.port_base + member

    def zk_peer_port(self, member: int) -> int:
        return self.port_base + 10 + member

    def zk_election_port(self, member: int) -> int:
        return self.port_base + 20 + member

    @property
    def rabbit_port(self) -> int:
        return self.port_base + 30

    @property
    def rabbit_dist_port(self) -> int:
        return self.port_base + 31

    @property
    def epmd_port(self) -> int:
        return self.port_base + 32

    @property
    def mysql_port(self) -> int:
        return self.port_base + 40

    @property
    def neo4j_port(self) -> int:
        return self.port_base + 50

    @property
    def prometheus_port(self) -> int:
        return self.port_base + 60

    def rabbit_member_port(self, member: int, which: int = 0) -> int:
        """Ports of RabbitMQ node ``member`` (1..3) in the ``ha`` topology: ``which`` 0 AMQP, 1 Erlang
        distribution, 2 CLI distribution."""
        return self.port_base + 240 + 10 * member + which

    def galera_port(self, member: int, which: int = 0) -> int:
        """Ports of Galera member ``member`` (1..3): ``which`` 0 SQL, 1 group communication, 2 IST, 3 SST."""
        return self.port_base + 226 + 4 * member + which

    def hpc_ports(self) -> dict[str, int]:
        """Ports of the HPC test site (``haorch hpc up``, node/hpc/site.py), by its program's name, and the first
        and last of the range ``srun`` listens on."""
        base = self.port_base + 280
        return {"sshd": base, "slurmctld": base + 1, "slurmd-n1": base + 2, "slurmd-n2": base + 3,
                "slurmdbd": base + 4, "hpc-mariadb": base + 5, "srun-first": base + 10, "srun-last": base + 19}

    def node_http_port(self, node_id: int) -> int:
        """HTTP port (/metrics, /healthz, /api) of orchestrator node ``node_id`` (1..29)."""
        return self.port_base + 70 + node_id

    def node_beacon_port(self, node_id: int) -> int:
        """Loopback port of node ``node_id``'s leader beacon (see election/beacon.py)."""
        return self.port_base + 200 + node_id

    def worker_http_port(self, worker_id: int) -> int:
        """HTTP port (/metrics) of worker ``worker_id`` (1..99)."""
        return self.port_base + 100 + worker_id

    # --- addresses ---------------------------------------------------------------------------------
    def member_host(self, number: int) -> str:
        """The address of host ``number`` (1-based; numbers beyond the list wrap around), ``host`` when unset."""
        hosts = [h.strip() for h in self.member_hosts.split(",") if h.strip()]
        return hosts[(number - 1) % len(hosts)] if hosts else self.host

    @property
    def sql_client_hosts(self) -> list[str]:
        """Every address haorch's MariaDB users may connect from (a MariaDB account is per client address)."""
        listed = [self.host, *self.member_hosts.split(","), *self.client_addresses.split(",")]
        return sorted({"localhost", *(a.strip() for a in listed if a.strip())})

    def bind_host(self, number: int) -> str:
        """What node or worker ``number``'s sockets bind to."""
        return self.bind_address or self.member_host(number)

    # --- derived connection strings: the external setting, else the managed stack's ----------------
    @property
    def zk_hosts(self) -> str:
        return self.zookeeper or ",".join(f"{self.member_host(m)}:{self.zk_client_port(m)}"
                                          for m in range(1, ZK_MEMBERS + 1))

    @property
    def rabbit_endpoints(self) -> list[tuple[str, int]]:
        if self.rabbitmq:
            return _endpoints(self.rabbitmq)
        if self.topology == "ha":
            return [(self.member_host(m), self.rabbit_member_port(m)) for m in range(1, HA_MEMBERS + 1)]
        return [(self.host, self.rabbit_port)]

    @property
    def mysql_endpoints(self) -> list[tuple[str, int]]:
        if self.mariadb:
            return _endpoints(self.mariadb)
        if self.topology == "ha":
            return [(self.member_host(m), self.galera_port(m)) for m in range(1, HA_MEMBERS + 1)]
        return [(self.host, self.mysql_port)]

    @property
    def neo4j_uri(self) -> str:
        return self.neo4j or f"bolt://{self.host}:{self.neo4j_port}"

    @property
    def prometheus_url(self) -> str:
        return self.prometheus or f"http://{self.host}:{self.prometheus_port}"

    def external(self, service: str) -> bool:
        """Whether ``service`` (a stack service name: ``zookeeper-2``, ``rabbitmq``, ``mariadb``, ``neo4j``,
        ``prometheus``) is configured as one haorch uses but does not start, stop or bootstrap."""
        return bool(getattr(self, service.split("-")[0], ""))

    def node_url(self, node_id: int) -> str:
        """Base URL of orchestrator node ``node_id``'s HTTP port (``/metrics``, ``/readyz``, ``/api``): https
        when ``tls_cert`` is set."""
        return f"{'https' if self.tls_cert else 'http'}://{self.member_host(node_id)}:{self.node_http_port(node_id)}"

    def worker_url(self, worker_id: int) -> str:
        """Base URL of worker ``worker_id``'s HTTP port (``/metrics``)."""
        return f"http://{self.member_host(worker_id)}:{self.worker_http_port(worker_id)}"

    @property
    def secrets(self) -> Secrets:
        return self._secrets or Secrets.load_or_create(self.home)

    @property
    def run_dir(self) -> Path:
        """Pid files of every process haorch started."""
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def data_dir(self, service: str) -> Path:
        return self.home / "data" / service


_TYPES = {f.name: f.type for f in fields(Config) if not f.name.startswith("_") and f.name != "home"}


def _coerce(name: str, raw: Any) -> Any:
    """``raw`` (from TOML, the environment or a caller) as the type of the setting ``name``."""
    kind = _TYPES[name]
    try:
        if kind == "bool":
            return raw if isinstance(raw, bool) else str(raw).strip().lower() in ("1", "true", "yes", "on")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return str(raw)
    except ValueError:
        raise UsageError(f"config value {name}={raw!r} is not a valid {kind}") from None


def load_config(home: str | Path | None = None, **overrides: object) -> Config:
    """Read the configuration for the state dir ``home`` (default ``$HAORCH_HOME`` or ``./.haorch``)."""
    home_path = Path(home or os.environ.get("HAORCH_HOME") or ".haorch").resolve()
    values: dict[str, Any] = {}
    toml_file = home_path / "haorch.toml"
    if toml_file.exists():
        try:
            data = tomllib.loads(toml_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{toml_file}: {exc}") from None
        for key, raw in data.items():
            if key not in _TYPES:
                raise UsageError(f"{toml_file}: unknown setting {key!r}")
            values[key] = _coerce(key, raw)
    for key in _TYPES:
        env = os.environ.get(f"HAORCH_{key.upper()}")
        if env is not None:
            values[key] = _coerce(key, env)
    for key, raw in overrides.items():
        values[key] = _coerce(key, raw)
    for name, recorded in (("runtime", recorded_runtime(home_path)), ("topology", recorded_topology(home_path))):
        if name not in values and recorded:  # the state dir's stack runs in it
            values[name] = recorded
    return _validated(Config(home=home_path, **values))


def recorded_runtime(home: Path) -> str | None:
    """The runtime (node/runtime/) the state dir's stack was last started in; None before its first start."""
    try:
        return (home / "runtime").read_text().strip() or None
    except OSError:
        return None


def recorded_topology(home: Path) -> str | None:
    """The topology (``single`` or ``ha``) the state dir's stack was last started with; None before its first
    start."""
    try:
        return (home / "topology").read_text().strip() or None
    except OSError:
        return None


def record_runtime(cfg: Config) -> None:
    """Remember in the state dir that its stack runs in ``cfg.runtime`` with ``cfg.topology`` (read back by
    :func:`load_config`)."""
    cfg.home.mkdir(parents=True, exist_ok=True)
    (cfg.home / "runtime").write_text(cfg.runtime + "\n")
    (cfg.home / "topology").write_text(cfg.topology + "\n")


def _endpoints(text: str) -> list[tuple[str, int]]:
    """``"host:port,host:port"`` as pairs; ValueError naming the bad member."""
    pairs = []
    for member in (m.strip() for m in text.split(",")):
        host, _, port = member.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{member!r} is not host:port")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


def _is_address(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _validated(cfg: Config) -> Config:
    for name in ("zookeeper", "rabbitmq", "mariadb"):
        try:
            _endpoints(getattr(cfg, name)) if getattr(cfg, name) else None
        except ValueError as exc:
            raise UsageError(f"config value {name}: {exc} (a comma-separated list of host:port)") from None
    for name, schemes in (("neo4j", ("bolt://", "neo4j://")), ("prometheus", ("http://", "https://"))):
        value = getattr(cfg, name)
        if value and not value.startswith(schemes):
            raise UsageError(f"config value {name}={value!r} must start with {' or '.join(schemes)}")
    if cfg.topology not in TOPOLOGIES:
        raise UsageError(f"topology must be one of {', '.join(TOPOLOGIES)}, got {cfg.topology!r}")
    for address in [cfg.host, cfg.bind_address, *cfg.member_hosts.split(","), *cfg.client_addresses.split(",")]:
        if address.strip() and not _is_address(address.strip()):
            raise UsageError(f"config value {address.strip()!r} is not an IPv4 address (host, member_hosts, "
                             "bind_address, client_addresses)")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise UsageError("config values tls_cert and tls_key go together: set both (HTTPS) or neither (HTTP)")
    if cfg.runtime not in RUNTIMES:
        raise UsageError(f"runtime must be one of {', '.join(RUNTIMES)}, got {cfg.runtime!r}")
    if cfg.max_in_flight < 0:
        raise UsageError(f"max_in_flight must be 0 (no bound) or more, got {cfg.max_in_flight}")
    if not 1024 <= cfg.port_base <= 65000:
        raise UsageError(f"port_base {cfg.port_base} is out of range 1024..65000")
    return cfg


def with_overrides(cfg: Config, **changes: object) -> Config:
    """A copy of ``cfg`` with some settings changed (used by benchmarks and tests)."""
    return _validated(replace(cfg, **{k: _coerce(k, v) for k, v in changes.items()}))
