"""How every client reaches the stores: connection arguments for MariaDB, Neo4j, RabbitMQ and ZooKeeper.

This module depends on the config alone, so that a store, a worker or a command can connect without importing
the code that *starts* the services (``node/stack/``). Addresses come from the config, never from here::

    conn = mysql_connect(cfg)                    # the first MariaDB endpoint that answers
    with neo4j_driver(cfg) as driver: ...
    pika.BlockingConnection(amqp_parameters(cfg, name="worker-1", role="worker"))
    zk = zookeeper_client(cfg, "node-1")        # kazoo, as haorch's ZooKeeper identity

Two roles: the ``orchestrator`` (nodes, the CLI, the stack's bootstrap) owns the schema and the queues; a
``worker`` has users of its own that may do only what a worker does — read and write the ledger table, consume
``haorch.requests`` and publish through ``haorch.worker`` (``node/stack/mariadb.py`` and ``rabbitmq.py`` grant
exactly that).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from typing import Any, Literal

import neo4j
import pika
import pymysql
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from election import ZooKeeperUnavailableError, make_client, secure_tree
from node.config import (
    MYSQL_DATABASE,
    MYSQL_USER,
    MYSQL_WORKER_USER,
    NEO4J_USER,
    RABBIT_USER,
    RABBIT_VHOST,
    RABBIT_WORKER_USER,
    ZK_ROOT,
    ZK_USER,
    Config,
)
from node.errors import ServiceError

Role = Literal["orchestrator", "worker"]

log = logging.getLogger(__name__)

SUSPECT_S = 30.0  # how long a host one of this process's connections found silent is tried last and left early
_suspects: dict[str, float] = {}  # host address -> monotonic time its suspicion ends
_peers: dict[str, set[str]] = {}  # host address -> the other hosts of the clusters it is a member of


def member_hosts(hosts: Iterable[str]) -> None:
    """Note that ``hosts`` hold members of one cluster (a host is left only for another member's host)."""
    group = set(hosts)
    for host in group:
        _peers.setdefault(host, set()).update(group - {host})


def suspect_if_silent(host: str, exc: BaseException) -> None:
    """Remember ``host`` as *suspect* when ``exc`` says a connection to it went silent (a timeout: the host is cut
    off or dark, not merely a service restarting) and its clusters have members on other hosts: this process's other
    connections to it (RabbitMQ, MariaDB) are then left at their next use, and reconnects try it last — a cut-off
    host costs one timeout, not one per connection in turn."""
    if _suspects.get(host, 0.0) > time.monotonic() or not _peers.get(host) or not _silent(exc):
        return
    _suspects[host] = time.monotonic() + SUSPECT_S
    log.warning("connect: %s went silent (%s); its connections are left and it is tried last for %.0f s", host,
                type(exc).__name__, SUSPECT_S)


def suspected(host: str) -> bool:
    """Whether to leave a connection to ``host``: it is suspect and a member host of its clusters is not."""
    now = time.monotonic()
    if _suspects.get(host, 0.0) <= now:
        return False
    return any(_suspects.get(other, 0.0) <= now for other in _peers.get(host, ()))


def trusted(host: str) -> None:
    """A connection to ``host`` was just opened: it is no longer suspect."""
    _suspects.pop(host, None)


def healthy_first(hosts: list[str], order: list[int]) -> list[int]:
    """``order`` (indexes into ``hosts``) with the suspect hosts' members moved last, otherwise unchanged."""
    now = time.monotonic()
    return sorted(order, key=lambda i: _suspects.get(hosts[i], 0.0) > now)


def _silent(exc: BaseException) -> bool:
    """Whether ``exc``, or what it was raised from, is a timeout (TCP_USER_TIMEOUT, keepalive, heartbeat, connect)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, (TimeoutError, socket.timeout, pika.exceptions.AMQPHeartbeatTimeout)) \
                or "timed out" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# a value too long for its column is an error, never a row stored cut short (whatever the server's default mode)
STRICT_SESSION = "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES')"


def mysql_connect_args(cfg: Config, role: Role = "orchestrator", member: int = 0) -> dict[str, Any]:
    """pymysql.connect() keyword arguments for the role's MariaDB user over TCP, to the ``member``-th endpoint."""
    user, password = ((MYSQL_WORKER_USER, cfg.secrets.worker_mysql_password) if role == "worker"
                      else (MYSQL_USER, cfg.secrets.mysql_password))
    host, port = cfg.mysql_endpoints[member]
    return {"host": host, "port": port, "user": user, "password": password,
            "database": MYSQL_DATABASE, "charset": "utf8mb4", "autocommit": False,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": 30, "write_timeout": 30, "init_command": STRICT_SESSION}


CONNECT_TIMEOUT_S = 2  # a member that does not answer a connect this fast is skipped (the next is tried)
_last_good_member: dict[tuple[str, ...], int] = {}  # per endpoint list: where this process last got a connection


def mysql_connect(cfg: Config, role: Role = "orchestrator", **overrides: Any) -> pymysql.connections.Connection:
    """A connection to a MariaDB endpoint that serves, trying the configured endpoints (the members of a Galera
    cluster) in order from the one this process last connected to, suspect hosts last: a member that is unreachable
    costs one connect timeout once, not at every reconnect. A Galera member that is not ready (cut off from the
    majority: non-Primary, it refuses every query with 1047) is skipped. The last endpoint's error when none
    serves."""
    endpoints = cfg.mysql_endpoints
    key = tuple(f"{h}:{p}" for h, p in endpoints)
    hosts = [h for h, _ in endpoints]
    member_hosts(hosts)
    first = _last_good_member.get(key, 0)
    order = healthy_first(hosts, [(first + tried) % len(endpoints) for tried in range(len(endpoints))])
    for tried, member in enumerate(order):
        try:
            conn = pymysql.connect(**{**mysql_connect_args(cfg, role, member), **overrides})
            _silent_peer_timeout(getattr(conn, "_sock", None), cfg.peer_timeout_s)  # pymysql has no socket options
            if len(endpoints) > 1 and not _wsrep_ready(conn):
                conn.close()
                raise pymysql.err.OperationalError(1047, f"{key[member]}: Galera member not ready (non-Primary)")
        except pymysql.err.OperationalError as exc:
            suspect_if_silent(hosts[member], exc)
            if tried == len(endpoints) - 1:
                raise
            continue
        _last_good_member[key] = member
        trusted(hosts[member])
        return conn
    raise AssertionError("a config always has at least one MariaDB endpoint")


def _silent_peer_timeout(sock: socket.socket | None, timeout_s: float) -> None:
    """Abort the connection when its peer goes silent (cut off by the network, or a host gone dark) for about
    ``timeout_s``, busy or idle, instead of after the read timeout or at the next use: TCP_USER_TIMEOUT for data sent
    and not acknowledged, keepalive probes for an idle connection. A server that is merely slow to answer still
    acknowledges at the TCP level and is not affected."""
    if sock is None:
        return
    for option, value in _tcp_options(timeout_s).items():
        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def _tcp_options(timeout_s: float) -> dict[str, int]:
    """TCP options (names as pika's ``tcp_options`` takes them) that give up on a silent peer after ~``timeout_s``."""
    probes = 3
    interval = max(1, round(timeout_s / (probes + 1)))
    return {"TCP_USER_TIMEOUT": int(timeout_s * 1000), "TCP_KEEPIDLE": interval, "TCP_KEEPINTVL": interval,
            "TCP_KEEPCNT": probes}


def _wsrep_ready(conn: pymysql.connections.Connection) -> bool:
    """False for a Galera member that does not accept queries; True for a ready member or a plain MariaDB."""
    with conn.cursor() as cur:  # SHOW, because a member that is not ready refuses every other statement
        cur.execute("SHOW VARIABLES LIKE 'wsrep_on'")
        galera = cur.fetchone()
        if galera is None or str(galera[1]).upper() != "ON":  # a plain MariaDB (its wsrep_ready is OFF)
            conn.rollback()
            return True
        cur.execute("SHOW STATUS LIKE 'wsrep_ready'")
        row = cur.fetchone()
    conn.rollback()
    return row is not None and str(row[1]).upper() == "ON"


def neo4j_driver(cfg: Config, **kwargs: Any) -> neo4j.Driver:
    """A driver for the stack's Neo4j with the generated password."""
    return neo4j.GraphDatabase.driver(cfg.neo4j_uri, auth=(NEO4J_USER, cfg.secrets.neo4j_password),
                                      connection_timeout=5, max_transaction_retry_time=5, **kwargs)


def amqp_parameters(cfg: Config, heartbeat_s: int | None = None, name: str = "haorch",
                    role: Role = "orchestrator") -> list[pika.ConnectionParameters]:
    """Connection parameters for each of the broker's endpoints, with the role's generated user:
    ``pika.BlockingConnection`` tries them in order (the members of a RabbitMQ cluster)."""
    user, password = ((RABBIT_WORKER_USER, cfg.secrets.worker_rabbit_password) if role == "worker"
                      else (RABBIT_USER, cfg.secrets.rabbit_password))
    return [pika.ConnectionParameters(
        host=host, port=port, virtual_host=RABBIT_VHOST,
        credentials=pika.PlainCredentials(user, password),
        heartbeat=cfg.rabbit_heartbeat_s if heartbeat_s is None else heartbeat_s,
        # a silent (isolated) member costs a connection attempt peer_timeout_s, not pika's 15 s stack timeout, and an
        # open connection to it fails once a frame (a heartbeat at least) stays unacknowledged that long
        blocked_connection_timeout=30, connection_attempts=1, socket_timeout=CONNECT_TIMEOUT_S,
        stack_timeout=cfg.peer_timeout_s + 1, tcp_options=_tcp_options(cfg.peer_timeout_s),
        client_properties={"connection_name": name}) for host, port in cfg.rabbit_endpoints]


def zookeeper_auth(cfg: Config) -> tuple[str, str]:
    """The digest credentials of haorch's ZooKeeper identity (``election.make_client(..., auth=...)``)."""
    return ("digest", f"{ZK_USER}:{cfg.secrets.zookeeper_password}")


def zookeeper_client(cfg: Config, identifier: str, start_timeout_s: float = 10.0) -> KazooClient:
    """A started client of the stack's ensemble, authenticated as haorch's identity, whose znodes only that
    identity may change. Every znode under ``ZK_ROOT`` gets that ACL first (an older version created them open to
    anyone). ServiceError when the ensemble is unreachable or a znode belongs to another identity."""
    try:
        client = make_client(cfg.zk_hosts, cfg.zk_session_timeout_s, identifier, start_timeout_s=start_timeout_s,
                             auth=zookeeper_auth(cfg))
    except ZooKeeperUnavailableError as exc:
        raise ServiceError(str(exc)) from None
    try:
        secure_tree(client, ZK_ROOT)
    except NoAuthError:
        client.stop()
        client.close()
        raise ServiceError(f"zookeeper: a znode under {ZK_ROOT} belongs to another identity than {ZK_USER!r} with "
                           f"the password in {cfg.home / 'secrets.json'}") from None
    return client
