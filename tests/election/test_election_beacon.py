"""LeaderBeacon: a killed leader is replaced before its session expires; a frozen one is not."""

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from election_harness import REPO_ROOT, first_elected, wait_until

from election import LeaderBeacon

CANDIDATE = REPO_ROOT / "tests" / "election" / "candidate_proc.py"
SESSION_TIMEOUT_S = 4.0  # long, so that a failover well under it can only come from the beacon


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def beacon_leader(zk, paths):
    """A leader in its own process with a beacon; yields (proc, epoch, beacon_path)."""
    beacon_path = paths[0] + "-beacon"
    proc = subprocess.Popen([sys.executable, str(CANDIDATE), zk.hosts, str(SESSION_TIMEOUT_S), "proc-leader", *paths,
                             str(free_port()), beacon_path],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in proc.stdout], daemon=True).start()
    first = lines.get(timeout=15)
    assert first.startswith("ELECTED "), first
    try:
        yield proc, int(first.split()[1]), beacon_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait(5)


def _watchers(make_candidate, beacon_path):
    cands = [make_candidate(f"node-{i}", SESSION_TIMEOUT_S) for i in range(2)]
    beacons = [LeaderBeacon(c.client, c.name, ("127.0.0.1", free_port()), beacon_path).start() for c in cands]
    wait_until(lambda: all(b._watched for b in beacons), 5.0, "watchers following the leader's beacon")
    return cands, beacons


def test_killed_leader_is_replaced_before_its_session_expires(beacon_leader, make_candidate):
    proc, old_epoch, beacon_path = beacon_leader
    cands, beacons = _watchers(make_candidate, beacon_path)
    try:
        killed_at = time.monotonic()
        proc.kill()
        _new, elected_at, epoch = first_elected(cands, killed_at, SESSION_TIMEOUT_S)
        failover = elected_at - killed_at
        print(f"\nkill -9 fail-over with the beacon at session timeout {SESSION_TIMEOUT_S}s: {failover * 1000:.0f} ms")
        assert epoch > old_epoch
        assert failover < SESSION_TIMEOUT_S / 4, "the beacon, not session expiry, must drive this fail-over"
        assert sum(b.deaths_detected for b in beacons) >= 1
    finally:
        for beacon in beacons:
            beacon.stop()


def test_frozen_leader_keeps_its_beacon_so_only_session_expiry_replaces_it(beacon_leader, make_candidate):
    proc, old_epoch, beacon_path = beacon_leader
    cands, beacons = _watchers(make_candidate, beacon_path)
    try:
        frozen_at = time.monotonic()
        proc.send_signal(signal.SIGSTOP)
        _new, elected_at, epoch = first_elected(cands, frozen_at, SESSION_TIMEOUT_S + 5.0)
        waited = elected_at - frozen_at
        print(f"\nSIGSTOP fail-over with the beacon at session timeout {SESSION_TIMEOUT_S}s: {waited * 1000:.0f} ms")
        assert waited > SESSION_TIMEOUT_S * 0.5, "a frozen leader's sockets stay open: no early takeover"
        assert epoch > old_epoch
        assert sum(b.deaths_detected for b in beacons) == 0
    finally:
        for beacon in beacons:
            beacon.stop()


def test_a_new_leader_owns_its_beacon_so_it_outlives_the_dead_leader_s_session(make_candidate, paths):
    """The dead leader's beacon znode is ephemeral of ITS session, which lives on for the session timeout: a new
    leader that only overwrote its data would lose its beacon when that session expired, and the next kill would
    wait for session expiry (every third kill of `bench failover` did)."""
    dead, new = make_candidate("dead", SESSION_TIMEOUT_S), make_candidate("new", SESSION_TIMEOUT_S)
    beacon_path = paths[0] + "-owned"
    dead.client.create(beacon_path, b'{"id": "dead", "addr": "127.0.0.1:1", "lock": "x"}', ephemeral=True,
                       makepath=True)
    beacon = LeaderBeacon(new.client, "new", ("127.0.0.1", free_port()), beacon_path).start()
    try:
        beacon.publish("/lock-of-new")
        dead.client.stop()  # its session ends: its ephemeral znodes go
        dead.client.close()
        time.sleep(0.5)
        data, stat = new.client.get(beacon_path)
        assert b'"id": "new"' in data and stat.ephemeralOwner == new.client.client_id[0]
    finally:
        beacon.stop()
