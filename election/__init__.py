"""Leader election with epochs on ZooKeeper (kazoo), for any project.

Usage::

    from election import LeaderElection, make_client

    client = make_client("127.0.0.1:2181", session_timeout_s=2.0, identifier="node-1")
    election = LeaderElection(client, "node-1", on_elected=print, on_revoked=print).start()

One primitive per module: ``client`` (a KazooClient tuned for fast failover, optionally with digest credentials),
``acl`` (znodes only their owner may change), ``epoch`` (a strictly increasing counter znode), ``session`` (the
session state as an enum and non-blocking callbacks), ``election`` (terms with a fresh epoch each, revoked the
moment the session is SUSPENDED or LOST) and ``beacon`` (an optional TCP beacon that lets candidates notice a
dead leader before its session expires).
"""

from election.acl import owner_acl, secure_tree
from election.beacon import LeaderBeacon
from election.client import ZooKeeperUnavailableError, make_client
from election.election import LeaderElection
from election.epoch import EpochCounter
from election.session import SessionEvent, SessionState, SessionWatcher

__all__ = [
    "EpochCounter",
    "LeaderBeacon",
    "LeaderElection",
    "SessionEvent",
    "SessionState",
    "SessionWatcher",
    "ZooKeeperUnavailableError",
    "make_client",
    "owner_acl",
    "secure_tree",
]
