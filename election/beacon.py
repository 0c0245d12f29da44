"""Notice a dead leader before its ZooKeeper session expires: a TCP beacon the leader holds open.

Usage::

    beacon = LeaderBeacon(client, "node-2", ("127.0.0.1", 17302)).start()   # every candidate
    beacon.publish(election.lock_node)     # in on_elected: "I lead, my lock znode is ..."
    beacon.withdraw()                      # in on_revoked
    beacon.stop()

A killed leader's session lives on in ZooKeeper for the whole session timeout, and so does its election lock.
But the kernel closes a dead process's sockets at once. So the leader listens on a loopback port and advertises
it in an ephemeral znode; every other candidate keeps a connection to it open and reads nothing. EOF (or a
refused connection) means the process is gone: the watcher deletes the dead leader's lock znode, and the next
candidate wins in milliseconds instead of after the session timeout.

Only a process death or a deliberate close produces EOF: a frozen (SIGSTOP) or partitioned leader keeps its
sockets, so those cases still wait for the session to expire. And a wrong guess is safe: the leader whose lock
node is deleted is revoked by its own watch (``lock_node_deleted``), and its epoch is fenced anyway.
"""

from __future__ import annotations

import json
import logging
import socket
import threading

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError

log = logging.getLogger(__name__)


class LeaderBeacon:
    """Both sides of the beacon for one candidate: serves it while leading, watches it otherwise."""

    def __init__(self, client: KazooClient, identifier: str, address: tuple[str, int],
                 path: str = "/haorch/beacon", bind_host: str | None = None) -> None:
        """``address`` is what candidates connect to (published while leading); the socket binds to ``bind_host``
        (e.g. ``0.0.0.0``) on the same port, or to ``address`` itself."""
        self.client = client
        self.identifier = identifier
        self.address = address
        self.bind_host = bind_host or address[0]
        self.path = path
        self._server: socket.socket | None = None
        self._accepted: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._watched: str | None = None  # lock node of the leader being watched
        self.deaths_detected = 0

    def start(self) -> LeaderBeacon:
        """Bind the beacon port (so a conflict shows at start-up) and begin following the published beacon."""
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.bind_host, self.address[1]))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), name=f"beacon-accept-{self.identifier}",
                         daemon=True).start()
        self.client.DataWatch(self.path, self._on_beacon)
        return self

    def stop(self) -> None:
        self._stopped.set()
        self.withdraw()
        if self._server is not None:
            self._server.close()

    # --- leader side -------------------------------------------------------------------------------------
    def publish(self, lock_node: str | None) -> None:
        """Advertise this node's beacon as the leader's (ephemeral: it dies with the session)."""
        if lock_node is None:
            return
        data = json.dumps({"id": self.identifier, "addr": f"{self.address[0]}:{self.address[1]}",
                           "lock": lock_node}).encode()
        try:
            try:
                self.client.create(self.path, data, ephemeral=True, makepath=True)
            except NodeExistsError:
                _, stat = self.client.get(self.path)
                if stat.ephemeralOwner == self.client.client_id[0]:
                    self.client.set(self.path, data, version=stat.version)
                else:  # a dead leader's, whose session lives on: the beacon would vanish when that session expires
                    self.client.delete(self.path, version=stat.version)
                    self.client.create(self.path, data, ephemeral=True, makepath=True)
        except KazooException as exc:  # the beacon only speeds failover up; the election does not need it
            log.warning("beacon: not published id=%s error=%r", self.identifier, exc)

    def withdraw(self) -> None:
        """Stop advertising and drop the watchers' connections (they will find the lock already released)."""
        try:
            data, stat = self.client.get(self.path)
            if json.loads(data).get("id") == self.identifier and stat.ephemeralOwner == self.client.client_id[0]:
                self.client.delete(self.path, version=stat.version)
        except (KazooException, ValueError, TypeError):
            pass
        with self._lock:
            accepted, self._accepted = self._accepted, []
        for conn in accepted:
            conn.close()

    def _accept(self, server: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with self._lock:
                self._accepted.append(conn)

    # --- watcher side ------------------------------------------------------------------------------------
    def _on_beacon(self, data: bytes | None, _stat: object) -> None:
        """DataWatch callback (kazoo's event thread): follow a new leader's beacon in a thread of its own."""
        if self._stopped.is_set() or not data:
            return
        try:
            info = json.loads(data)
            host, port = info["addr"].rsplit(":", 1)
            lock_node, leader = info["lock"], info["id"]
        except (ValueError, KeyError):
            log.warning("beacon: unreadable beacon data at %s", self.path)
            return
        if leader == self.identifier or lock_node == self._watched:
            return
        self._watched = lock_node
        threading.Thread(target=self._follow, args=(leader, (host, int(port)), lock_node),
                         name=f"beacon-watch-{self.identifier}", daemon=True).start()

    def _follow(self, leader: str, address: tuple[str, int], lock_node: str) -> None:
        try:
            with socket.create_connection(address, timeout=1.0) as conn:
                conn.settimeout(None)
                while self._watched == lock_node and not self._stopped.is_set():
                    if not conn.recv(64):
                        break
        except ConnectionRefusedError:
            pass  # nothing listens: the leader's process is already gone
        except OSError as exc:
            log.info("beacon: cannot follow leader=%s error=%r (session expiry still applies)", leader, exc)
            return
        if self._watched != lock_node or self._stopped.is_set():
            return
        self._reap(leader, lock_node)

    def _reap(self, leader: str, lock_node: str) -> None:
        """The leader's process is gone: delete its lock znode so the next candidate wins now."""
        try:
            self.client.delete(lock_node)
        except NoNodeError:
            return  # released already (a graceful handover) or its session expired
        except KazooException as exc:
            log.warning("beacon: could not delete lock of dead leader=%s node=%s error=%r", leader, lock_node, exc)
            return
        self.deaths_detected += 1
        log.warning("beacon: leader=%s closed its beacon; deleted its lock node %s", leader, lock_node)
