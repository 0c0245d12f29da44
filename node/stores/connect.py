"""How every client reaches the stores: connection arguments for MariaDB, Neo4j and RabbitMQ from the config.

This module depends on the config alone, so that a store, a worker or a command can connect without importing
the code that *starts* the services (``node/stack/``). Addresses come from the config, never from here::

    conn = pymysql.connect(**mysql_connect_args(cfg))
    with neo4j_driver(cfg) as driver: ...
    pika.BlockingConnection(amqp_parameters(cfg, name="worker-1"))
"""

from __future__ import annotations

from typing import Any

import neo4j
import pika

from node.config import MYSQL_DATABASE, MYSQL_USER, NEO4J_USER, RABBIT_USER, RABBIT_VHOST, Config


def mysql_connect_args(cfg: Config) -> dict[str, Any]:
    """pymysql.connect() keyword arguments for the haorch user over TCP."""
    return {"host": cfg.host, "port": cfg.mysql_port, "user": MYSQL_USER, "password": cfg.secrets.mysql_password,
            "database": MYSQL_DATABASE, "charset": "utf8mb4", "autocommit": False, "connect_timeout": 5,
            "read_timeout": 30, "write_timeout": 30}


def neo4j_driver(cfg: Config, **kwargs: Any) -> neo4j.Driver:
    """A driver for the stack's Neo4j with the generated password."""
    return neo4j.GraphDatabase.driver(cfg.neo4j_uri, auth=(NEO4J_USER, cfg.secrets.neo4j_password),
                                      connection_timeout=5, max_transaction_retry_time=5, **kwargs)


def amqp_parameters(cfg: Config, heartbeat_s: int | None = None, name: str = "haorch") -> pika.ConnectionParameters:
    """Connection parameters for the stack's broker with the generated user."""
    return pika.ConnectionParameters(
        host=cfg.host, port=cfg.rabbit_port, virtual_host=RABBIT_VHOST,
        credentials=pika.PlainCredentials(RABBIT_USER, cfg.secrets.rabbit_password),
        heartbeat=cfg.rabbit_heartbeat_s if heartbeat_s is None else heartbeat_s,
        blocked_connection_timeout=30, connection_attempts=1, socket_timeout=5,
        client_properties={"connection_name": name})
