"""High availability on real processes and servers: faults injected into a 3-node cluster under load.

Every test runs a bounded background load of the four built-in types, injects one fault, then checks that every
experiment completed, each task was advanced exactly once (one SUCCEEDED row, Neo4j ``flags == 1``) and no
successor was dispatched before its predecessors succeeded. The tests share one cluster and run in file order;
each leaves 3 nodes and the whole stack running.
"""

from __future__ import annotations

import signal
import time

import pytest
from ha_harness import (
    finish,
    log_since,
    log_size,
    metric,
    number,
    restart_when_gone,
    restore_nodes,
    wait_explained,
    zk_member_of,
)
from kazoo.exceptions import NoAuthError
from polling import wait_until

from bench import probes
from election import make_client
from node import cluster, failpoints
from node.config import ZK_ROOT
from node.model.states import TERMINAL_EXPERIMENT_STATES
from node.stack import manager
from node.stack.zookeeper import zk_mode
from node.verify import EXACTLY_ONCE_KINDS, Scope, check
from node.verify.snapshot import read

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("three_nodes")]

RATE = 20  # experiments per second submitted by the background load


def _leader(cfg, newer_than: int = 0, timeout_s: float = 20.0) -> dict:
    return cluster.wait_for_leader(cfg, timeout_s, newer_than=newer_than)


def test_sigkill_leader_standby_takes_over_and_nothing_is_lost(ha) -> None:
    load = ha.load(RATE, 60).start()
    wait_until(lambda: load.done >= 16, 30, "load did not start")
    killed = cluster.kill_leader(ha.cfg, "KILL")
    new = _leader(ha.cfg, killed["epoch"])
    elected_s = time.time() - killed["at"]
    first = wait_explained(ha.cfg, lambda: ha.records.first_advance_after(killed["epoch"], killed["at"]), 20,
                           "the new leader never advanced")
    print(f"\nSIGKILL {killed['node_id']} epoch {killed['epoch']} -> {new['node_id']} epoch {new['epoch']}: "
          f"leader after {elected_s * 1000:.0f} ms, first advancement after {(first[2] - killed['at']) * 1000:.0f} ms")
    assert new["node_id"] != killed["node_id"] and new["epoch"] > killed["epoch"]
    restart_when_gone(ha.cfg, killed)
    finish(ha.cfg, ha.exps, load)


def test_sigstop_past_session_timeout_old_leader_writes_nothing_and_rejoins(ha) -> None:
    load = ha.load(RATE, 60).start()
    wait_until(lambda: load.done >= 16, 30, "load did not start")
    frozen = cluster.kill_leader(ha.cfg, "STOP")
    n = number(frozen["node_id"])
    try:
        new = _leader(ha.cfg, frozen["epoch"])
        fence = wait_until(lambda: (f := probes.fence(ha.cfg))[0] >= new["epoch"] and f, 20, "fence never raised")
        raised_at = fence[2]
        wait_explained(ha.cfg, lambda: ha.records.first_advance_after(frozen["epoch"], frozen["at"]), 20,
                       "no advancement")
        time.sleep(1.0)  # the new leader keeps advancing while the old one is frozen
        offset = log_size(ha.cfg, n)
    finally:
        cluster.node_process(ha.cfg, n).signal(signal.SIGCONT)
    rejoined = wait_until(lambda: next((r for r in cluster.status(ha.cfg) if r["node_id"] == frozen["node_id"]
                                        and r["pid"] == frozen["pid"] and r["role"] == "standby"), None), 20,
                          f"{frozen['node_id']} did not rejoin as a standby")
    finish(ha.cfg, ha.exps, load)
    stale = probes.query(ha.cfg, "SELECT COUNT(*) FROM transitions WHERE epoch = %s AND at > %s",
                         (frozen["epoch"], raised_at))[0][0]
    rejections = metric(ha.cfg, n, "haorch_fence_rejections_total")
    text = log_since(ha.cfg, n, offset)
    revoked = "leadership revoked" in text or "stepping down" in text
    print(f"\nSIGSTOP {frozen['node_id']} epoch {frozen['epoch']} -> {new['node_id']} epoch {new['epoch']}; after "
          f"SIGCONT: fence rejections={rejections:g}, revoked in log={revoked}, stale rows={stale}, "
          f"rejoined as {rejoined['role']}")
    assert stale == 0
    assert rejections > 0 or revoked
    assert cluster.leader(ha.cfg)["node_id"] != frozen["node_id"] or cluster.leader(ha.cfg)["epoch"] > new["epoch"]


def test_sigterm_hands_over_within_a_fraction_of_a_second(ha) -> None:
    load = ha.load(RATE, 40).start()
    wait_until(lambda: load.done >= 8, 30, "load did not start")
    stopped = cluster.kill_leader(ha.cfg, "TERM")
    new = _leader(ha.cfg, stopped["epoch"], timeout_s=10)
    handover_s = time.time() - stopped["at"]
    print(f"\nSIGTERM {stopped['node_id']} epoch {stopped['epoch']} -> {new['node_id']} epoch {new['epoch']} "
          f"in {handover_s * 1000:.0f} ms")
    assert handover_s < 3.0
    restart_when_gone(ha.cfg, stopped)
    finish(ha.cfg, ha.exps, load)


def test_losing_one_zookeeper_member_changes_nothing(ha) -> None:
    wait_until(lambda: sum(r["role"] in ("leader", "standby") for r in cluster.status(ha.cfg)) == 3, 30,
               "3 nodes not up")
    before = _leader(ha.cfg)
    # a member that is neither the ensemble's leader nor the one the acting leader is connected to: losing it
    # must not disturb anybody's session (losing those would, by design, make the leader step down)
    linked = zk_member_of(ha.cfg, before["pid"])
    choices = [m for m in (3, 2, 1) if zk_mode(ha.cfg.host, ha.cfg.zk_client_port(m)) == "follower" and m not in linked]
    member = manager.find_service(ha.cfg, f"zookeeper-{choices[0] if choices else 3}")
    load = ha.load(RATE, 40).start()
    try:
        wait_until(lambda: load.done >= 8, 30, "load did not start")
        member.stop()
        finish(ha.cfg, ha.exps, load)
        after = _leader(ha.cfg)
    finally:
        manager.up(ha.cfg)
    print(f"\nstopped {member.name} (leader linked to {sorted(linked)}): leader {before['node_id']} epoch "
          f"{before['epoch']} -> {after['node_id']} epoch {after['epoch']}")
    if choices:
        assert (after["node_id"], after["epoch"]) == (before["node_id"], before["epoch"])


def test_losing_zookeeper_quorum_stops_advancement_until_it_returns(ha) -> None:
    _leader(ha.cfg)
    lost = [manager.find_service(ha.cfg, f"zookeeper-{m}") for m in (1, 2)]
    try:
        for member in lost:
            member.stop()
        wait_until(lambda: cluster.leader(ha.cfg) is None, 10, "a node still leads without a ZooKeeper quorum")
        time.sleep(1.0)  # a batch in progress at the step-down finishes its MariaDB write
        load = ha.load(RATE, 20).start()
        assert load.join(60), "submissions must work without ZooKeeper"
        mark = probes.last_advance_id(ha.cfg)
        time.sleep(3.0)
        assert cluster.leader(ha.cfg) is None
        assert probes.last_advance_id(ha.cfg) == mark, "transitions written without a ZooKeeper quorum"
        pending = [s for s in ha.records.states(load.ids).values() if s not in TERMINAL_EXPERIMENT_STATES]
        assert pending, "no pending work to prove that advancement stopped"
    finally:
        back = time.monotonic()
        manager.up(ha.cfg)
    new = _leader(ha.cfg, timeout_s=30)
    print(f"\nquorum lost for >4 s with {len(pending)} experiments pending; leader {new['node_id']} epoch "
          f"{new['epoch']} {time.monotonic() - back:.1f} s after restarting the members")
    finish(ha.cfg, ha.exps, load)


@pytest.mark.parametrize("service", ["mariadb", "neo4j"])
def test_restarting_a_store_under_load_loses_nothing(ha, service: str) -> None:
    load = ha.load(RATE, 60).start()
    wait_until(lambda: load.done >= 16, 30, "load did not start")
    t0 = time.monotonic()
    try:
        manager.find_service(ha.cfg, service).stop()
        time.sleep(1.0)
    finally:
        manager.up(ha.cfg)
    outage = time.monotonic() - t0
    finish(ha.cfg, ha.exps, load, timeout_s=120)
    rows = cluster.status(ha.cfg)
    print(f"\n{service} down for {outage:.1f} s under load: {len(load.ids)} experiments completed, "
          f"{load.errors} submission retries; nodes: {[(r['node_id'], r['role']) for r in rows]}")
    assert all(r["role"] in ("leader", "standby") for r in rows), rows
    restore_nodes(ha.cfg)


def test_a_leader_killed_between_its_neo4j_and_mariadb_commits_loses_no_transition_row(ha) -> None:
    """The leader stops (failpoint) after a Neo4j commit and the publish of what it dispatched, before its MariaDB
    write and the batch's ack, and is SIGKILLed there; the next leader writes the dead leader's rows from the Neo4j
    outbox during its takeover and re-sends the published attempts (the ledger runs one copy), so every
    experiment's log is complete and ordered (the verifier's dispatch_unrecorded, log_order, success_mismatch) and
    nothing ran twice."""
    load = ha.load(RATE, 60).start()
    wait_until(lambda: load.done >= 16, 30, "load did not start")
    row = cluster.leader(ha.cfg)
    assert row is not None
    n = number(row["node_id"])
    process = cluster.node_process(ha.cfg, n)
    failpoints.arm(ha.cfg, row["node_id"], "leader.between_commits")
    try:
        wait_until(process.frozen, 20, "the leader never reached the failpoint")
        process.signal(signal.SIGKILL)
    finally:
        failpoints.disarm(ha.cfg, row["node_id"], "leader.between_commits")
    new = _leader(ha.cfg, row["epoch"])
    restart_when_gone(ha.cfg, row)
    finish(ha.cfg, ha.exps, load)
    assert "committed in Neo4j only" in log_since(ha.cfg, number(new["node_id"]), 0)


def test_no_two_nodes_ever_acted_in_the_same_epoch(ha) -> None:
    owners = read(ha.cfg, Scope(since=ha.started_at)).epoch_owners()
    print(f"\nepochs: {dict(sorted((e, sorted(n)) for e, n in owners.items()))}")
    assert owners
    assert {e: n for e, n in owners.items() if len(n) != 1} == {}
    report = check(ha.cfg, Scope(experiment_ids=ha.ids))
    assert report.of_kinds(EXACTLY_ONCE_KINDS) == []
    print(f"checker over all {len(ha.ids)} experiments: {report.counters()}")
    assert report.ok, report.to_markdown()


def test_a_client_without_haorch_credentials_cannot_touch_the_election(ha) -> None:
    leader = _leader(ha.cfg)
    outsider = make_client(ha.cfg.zk_hosts, 2.0, "outsider")  # any local process that reaches ZooKeeper
    try:
        locks = outsider.get_children(f"{ZK_ROOT}/election")
        assert len(locks) == 3, locks
        for lock in locks:
            with pytest.raises(NoAuthError):
                outsider.delete(f"{ZK_ROOT}/election/{lock}")
        with pytest.raises(NoAuthError):
            outsider.set(f"{ZK_ROOT}/epoch", b"0")
        for znode in ("beacon", "epoch", "election"):
            with pytest.raises(NoAuthError):
                outsider.delete(f"{ZK_ROOT}/{znode}")
        assert int(outsider.get(f"{ZK_ROOT}/epoch")[0]) >= leader["epoch"]
    finally:
        outsider.stop()
        outsider.close()
    assert _leader(ha.cfg)["epoch"] == leader["epoch"]
