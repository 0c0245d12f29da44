"""LeaderElection when things break: a killed leader process, a partitioned leader, a brief disconnect with the
same session, a ZooKeeper member crash."""

import os
import queue
import subprocess
import sys
import threading
import time

import pytest
from election_harness import REPO_ROOT, first_elected, wait_until
from kazoo.recipe.election import Election

CANDIDATE = REPO_ROOT / "tests" / "election" / "candidate_proc.py"


def contenders(cand):
    return Election(cand.client, cand.election.path).contenders()


@pytest.mark.parametrize("session_timeout_s", [0.5, 2.0])
def test_kill9_leader_fails_over_after_the_session_timeout(zk, paths, make_candidate, session_timeout_s):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(CANDIDATE), zk.hosts, str(session_timeout_s), "proc-leader", *paths],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in proc.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=10)
        assert first.startswith("ELECTED "), first
        proc_epoch = int(first.split()[1])
        cands = [make_candidate(f"node-{i}", session_timeout_s) for i in range(2)]
        wait_until(lambda: len(contenders(cands[0])) == 3, 2.0, "three contenders")
        assert cands[0].election.leader_id() == "proc-leader"

        killed_at = time.monotonic()
        proc.kill()
        proc.wait(5)
        new, elected_at, epoch = first_elected(cands, killed_at, session_timeout_s + 3.0)
        failover = elected_at - killed_at
        print(f"\nkill -9 fail-over at session timeout {session_timeout_s}s: {failover * 1000:.0f} ms")
        assert epoch > proc_epoch
        # Nobody may take over while the dead leader's session lives: the session timeout drives fail-over.
        assert session_timeout_s * 0.5 < failover < session_timeout_s + 2.0
        assert new.election.leader_id() == new.name
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_partitioned_leader_steps_down_before_anyone_takes_over(make_candidate):
    timeout_s = 1.0
    isolated = make_candidate("isolated", timeout_s, proxied=True)
    _, _, old_epoch = first_elected([isolated], 0.0, 5.0)
    others = [make_candidate(f"node-{i}", timeout_s) for i in range(2)]
    wait_until(lambda: len(contenders(others[0])) == 3, 2.0, "three contenders")
    old_session = isolated.client.client_id[0]

    partitioned_at = time.monotonic()
    isolated.link.blackhole()  # silent: only kazoo's read timeout (2/3 of the session) notices
    revoked_at, _, reason = wait_until(lambda: (isolated.of_kind("revoked") or [None])[0], 3.0, "revocation")
    assert reason == "session_suspended" and not isolated.election.is_leader
    new, elected_at, new_epoch = first_elected(others, partitioned_at, timeout_s + 3.0)
    print(
        f"\nblackholed leader: revoked after {(revoked_at - partitioned_at) * 1000:.0f} ms, "
        f"new leader after {(elected_at - partitioned_at) * 1000:.0f} ms (session timeout {timeout_s}s)"
    )
    assert revoked_at - partitioned_at < timeout_s, "must step down before the server can expire the session"
    assert revoked_at < elected_at, "the old leader must stop before the new one starts"
    assert new_epoch > old_epoch

    isolated.link.heal()
    wait_until(lambda: isolated.client.client_id and isolated.client.client_id[0] != old_session, 5.0, "a new session")
    wait_until(lambda: "isolated" in contenders(new), 3.0, "the old leader to rejoin as a candidate")
    assert not isolated.election.is_leader and new.election.is_leader
    assert len(isolated.of_kind("revoked")) == 1 and len(isolated.of_kind("elected")) == 1


def test_brief_disconnect_same_session_never_resumes_the_old_term(make_candidate):
    solo = make_candidate("solo", 2.0, proxied=True)
    _, _, first_epoch = first_elected([solo], 0.0, 5.0)
    session_id = solo.client.client_id[0]

    cut_at = time.monotonic()
    solo.link.cut()
    revoked_at, _, reason = wait_until(lambda: (solo.of_kind("revoked") or [None])[0], 1.0, "revocation")
    print(f"\nrevoked {(revoked_at - cut_at) * 1000:.1f} ms after the cut")
    assert reason == "session_suspended" and revoked_at - cut_at < 0.25
    assert not solo.election.is_leader and solo.election.epoch is None
    time.sleep(0.2)
    healed_at = time.monotonic()
    solo.link.heal()
    _, _, second_epoch = first_elected([solo], healed_at, 3.0)
    assert solo.client.client_id[0] == session_id, "expected the same session back"
    assert second_epoch > first_epoch, "a re-won term must take a fresh epoch"
    assert solo.election.epoch == second_epoch
    nodes = solo.client.get_children(solo.election.path)
    assert len(nodes) == 1, f"the pre-disconnect lock znode must be gone: {nodes}"


def test_brief_disconnect_hands_over_without_waiting_for_the_session_timeout(make_candidate):
    blip = make_candidate("blip", 5.0, proxied=True)
    first_elected([blip], 0.0, 5.0)
    other = make_candidate("other", 5.0)
    wait_until(lambda: len(contenders(other)) == 2, 2.0, "two contenders")

    blip.link.cut()
    wait_until(lambda: blip.of_kind("revoked"), 1.0, "revocation")
    healed_at = time.monotonic()
    blip.link.heal()
    _, elected_at, _ = first_elected([other], healed_at, 3.0)
    print(f"\nhand-over {(elected_at - healed_at) * 1000:.0f} ms after a same-session reconnect")
    assert elected_at - healed_at < 2.0  # far below the 5 s session timeout: the stale znode was deleted
    wait_until(lambda: "blip" in contenders(other), 2.0, "blip to rejoin")
    assert not blip.election.is_leader


def test_zookeeper_member_crash_revokes_and_reelects(zk, make_candidate):
    if not zk.owned:
        pytest.skip("needs an ensemble this fixture started (HAORCH_TEST_ZK_HOSTS is set)")
    first_host = zk.hosts.split(",")[0]
    leader = make_candidate("on-member-1", 2.0, hosts=first_host + "," + zk.hosts, randomize_hosts=False)
    _, _, first_epoch = first_elected([leader], 0.0, 5.0)
    session_id = leader.client.client_id[0]
    try:
        killed_at = time.monotonic()
        zk.kill_member(1)
        revoked_at, _, reason = wait_until(lambda: (leader.of_kind("revoked") or [None])[0], 1.0, "revocation")
        print(f"\nrevoked {(revoked_at - killed_at) * 1000:.1f} ms after ZooKeeper member 1 died")
        assert reason == "session_suspended" and revoked_at - killed_at < 0.5
        _, elected_at, epoch = first_elected([leader], killed_at, 10.0)
        print(f"re-elected {(elected_at - killed_at) * 1000:.0f} ms after the crash")
        assert epoch > first_epoch
        assert leader.client.client_id[0] == session_id
    finally:
        zk.start_member(1)
        zk.wait_ready(30.0)
