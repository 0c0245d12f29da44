"""A KazooClient configured for fast failover.

Usage::

    from election import make_client

    client = make_client("127.0.0.1:2181,127.0.0.1:2182", session_timeout_s=2.0,
                         identifier="node-1", auth=("digest", "haorch:s3cret"))
    try:
        ...  # EpochCounter(client), LeaderElection(client, "node-1", ...)
    finally:
        client.stop()
        client.close()

The session timeout is what the cluster waits before it declares a silent member dead (the floor of a
crash failover); ZooKeeper clamps it to the server's ``minSessionTimeout``/``maxSessionTimeout``. Both retry
policies are capped at a small delay so that a client reconnects (and a request is retried) within a fraction
of a second of the ensemble becoming reachable again, instead of kazoo's default back-off of up to an hour.
"""

from __future__ import annotations

import logging
from typing import Any

from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import ACL

from election.acl import owner_acl

log = logging.getLogger(__name__)


class ZooKeeperUnavailableError(RuntimeError):
    """The client could not connect to ZooKeeper within the start timeout."""


def make_client(
    hosts: str,
    session_timeout_s: float,
    identifier: str,
    *,
    start_timeout_s: float = 10.0,
    max_retry_delay_s: float = 0.5,
    auth: tuple[str, str] | None = None,
    acl: list[ACL] | None = None,
    **kazoo_kwargs: Any,
) -> KazooClient:
    """Create and start a KazooClient; raise ZooKeeperUnavailableError if it is not connected in time.

    ``identifier`` names the kazoo logger (``kazoo.client.<identifier>``) so that several clients in one process
    can be told apart. ``auth`` (e.g. ``("digest", "user:password")``) is added to every session, and every znode
    the client creates (lock, epoch counter, beacon, their parents) gets ``acl``, by default
    :func:`~election.acl.owner_acl` of ``auth``; without ``auth`` znodes are open to anyone (ZooKeeper's default).
    Extra keyword arguments go to KazooClient (e.g. ``randomize_hosts=False``).
    """
    retry = {"max_tries": -1, "delay": 0.02, "backoff": 2, "max_jitter": 0.5, "max_delay": max_retry_delay_s}
    if auth is not None and acl is None:
        acl = owner_acl(auth)
    client = KazooClient(
        hosts=hosts,
        timeout=session_timeout_s,
        connection_retry=dict(retry),
        command_retry=dict(retry),
        logger=logging.getLogger(f"kazoo.client.{identifier}"),
        auth_data=[auth] if auth is not None else None,
        default_acl=acl,
        **kazoo_kwargs,
    )
    try:
        client.start(timeout=start_timeout_s)
    except KazooTimeoutError as exc:  # kazoo has already stopped and closed the client
        raise ZooKeeperUnavailableError(
            f"ZooKeeper at {hosts} not reachable within {start_timeout_s:g}s (client id={identifier})"
        ) from exc
    session_id = (client.client_id or (0, b""))[0]
    log.info(
        "client: connected id=%s session=0x%x timeout_s=%g hosts=%s", identifier, session_id, session_timeout_s, hosts
    )
    return client
