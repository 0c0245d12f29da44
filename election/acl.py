"""ZooKeeper ACLs for an election's znodes: every right to one digest identity, at most read to anyone else.

Usage::

    from election import make_client, secure_tree

    client = make_client(hosts, 2.0, "node-1", auth=("digest", "haorch:s3cret"))  # creates with owner_acl(...)
    secure_tree(client, "/haorch")   # znodes made without an ACL (e.g. by an older version) get the client's

ZooKeeper's default ACL (``world:anyone``, every right) lets any process that reaches the ensemble delete a
leader's lock znode (electing someone else while the leader still acts), lower the epoch counter (so that a new
leader gets an epoch the fences already saw), or fake the beacon. With :func:`owner_acl` only a client that added
the same digest credentials may create, change or delete anything under the root; everyone else may read (the
contenders, the current epoch), which gives nothing away but the addresses the beacon advertises anyway.
Deleting a znode needs the DELETE right on its *parent*, so the root's ACL protects the lock, epoch and beacon
znodes from deletion and each znode's own ACL protects its data.
"""

from __future__ import annotations

import logging

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.security import ACL, make_acl, make_digest_acl

log = logging.getLogger(__name__)


def owner_acl(auth: tuple[str, str], world_read: bool = True) -> list[ACL]:
    """Every right to the digest identity of ``auth`` (``("digest", "user:password")``); read to anyone when
    ``world_read``, nothing otherwise."""
    scheme, credential = auth
    user, sep, password = credential.partition(":")
    if scheme != "digest" or not sep or not user:
        raise ValueError(f"owner_acl needs digest credentials ('digest', 'user:password'), got scheme {scheme!r}")
    acl = [make_digest_acl(user, password, all=True)]
    if world_read:
        acl.append(make_acl("world", "anyone", read=True))
    return acl


def secure_tree(client: KazooClient, root: str, acl: list[ACL] | None = None) -> int:
    """Give ``root`` and every znode below it ``acl`` (default: the client's ``default_acl``), parents first;
    the number of znodes changed. Idempotent: a znode that has the ACL already is left alone, one that vanishes
    meanwhile (an ephemeral lock) is skipped, a missing root changes nothing. Raises kazoo's ``NoAuthError``
    when a znode belongs to another identity (e.g. a different password)."""
    wanted = acl or client.default_acl
    if not wanted:
        raise ValueError("secure_tree needs an ACL: pass one or make the client with auth=...")
    changed = 0
    pending = [root]
    while pending:
        path = pending.pop(0)
        try:
            current, _stat = client.get_acls(path)
            if set(current) != set(wanted):
                client.set_acls(path, list(wanted))
                changed += 1
            pending += [f"{path.rstrip('/')}/{child}" for child in sorted(client.get_children(path))]
        except NoNodeError:
            continue
    if changed:
        log.warning("acl: secured %d znode(s) under %s that had another ACL", changed, root)
    return changed
