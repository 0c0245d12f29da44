"""LeaderElection on a healthy ensemble: one leader, leader_id, resign/stop hand-over, re-winning, bad callbacks."""

import time

import pytest
from election_harness import first_elected, wait_until
from kazoo.recipe.election import Election

from election import SessionState


def contenders(cand):
    return Election(cand.client, cand.election.path).contenders()


def test_exactly_one_of_three_leads_and_leader_id_names_it(make_candidate):
    cands = [make_candidate(f"node-{i}") for i in range(3)]
    leader, _, epoch = first_elected(cands, 0.0, 5.0)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert [c.name for c in cands if c.election.is_leader] == [leader.name]
        time.sleep(0.01)
    assert leader.election.epoch == epoch
    assert all(c.election.epoch is None for c in cands if c is not leader)
    assert {c.election.leader_id() for c in cands} == {leader.name}
    assert all(c.election.session_state is SessionState.CONNECTED for c in cands)
    assert sum(len(c.of_kind("elected")) for c in cands) == 1


@pytest.mark.parametrize("session_timeout_s", [0.5, 2.0])
def test_resign_hands_over_fast_and_rejoins(make_candidate, session_timeout_s):
    cands = [make_candidate(f"node-{i}", session_timeout_s) for i in range(3)]
    old, _, old_epoch = first_elected(cands, 0.0, 5.0)
    others = [c for c in cands if c is not old]

    started = time.monotonic()
    assert old.election.resign() is True
    new, elected_at, new_epoch = first_elected(others, started, 2.0)
    handover = elected_at - started
    print(f"\nresign hand-over at session timeout {session_timeout_s}s: {handover * 1000:.1f} ms")
    assert handover < 1.0
    assert new_epoch > old_epoch
    revoked_at, _, reason = old.of_kind("revoked")[0]
    assert reason == "resigned" and revoked_at <= elected_at
    assert not old.election.is_leader and old.election.epoch is None
    wait_until(lambda: old.name in contenders(new), 2.0, "the resigned node to rejoin as a candidate")
    assert new.election.leader_id() == new.name


def test_stop_hands_over_and_leaves(make_candidate):
    cands = [make_candidate(f"node-{i}", 2.0) for i in range(3)]
    old, _, old_epoch = first_elected(cands, 0.0, 5.0)
    others = [c for c in cands if c is not old]

    started = time.monotonic()
    old.election.stop()
    new, elected_at, new_epoch = first_elected(others, started, 2.0)
    print(f"\nstop hand-over: {(elected_at - started) * 1000:.1f} ms")
    assert elected_at - started < 1.0 and new_epoch > old_epoch
    assert [e[2] for e in old.of_kind("revoked")] == ["stopped"]
    assert old.name not in contenders(new)
    assert old.election.resign() is False


def test_the_same_node_rewinning_gets_a_new_epoch(make_candidate):
    solo = make_candidate("solo")
    _, _, first = first_elected([solo], 0.0, 5.0)
    resigned_at = time.monotonic()
    assert solo.election.resign()
    _, _, second = first_elected([solo], resigned_at, 2.0)
    assert second > first
    assert solo.election.epoch == second
    assert [e[1] for e in solo.events] == ["elected", "revoked", "elected"]


def test_callback_exceptions_are_logged_not_fatal(make_candidate, caplog):
    calls = []

    def flaky_elected(epoch):
        calls.append(epoch)
        if len(calls) == 1:
            raise RuntimeError("boom in on_elected")

    def broken_revoked(reason):
        raise RuntimeError("boom in on_revoked")

    cand = make_candidate("flaky", on_elected=flaky_elected, on_revoked=broken_revoked)
    wait_until(lambda: len(calls) >= 2, 5.0, "a second election after on_elected failed")
    assert calls[1] > calls[0]
    assert [e[2] for e in cand.of_kind("revoked")] == ["on_elected_failed"]
    wait_until(lambda: cand.election.is_leader, 1.0, "leadership after the retry")
    assert cand.election.epoch == calls[1]
    assert "boom in on_elected" in caplog.text and "boom in on_revoked" in caplog.text


def test_deleted_lock_node_revokes_and_the_next_term_gets_a_new_epoch(make_candidate):
    solo = make_candidate("solo")
    _, _, first = first_elected([solo], 0.0, 5.0)
    [node] = solo.client.get_children(solo.election.path)
    deleted_at = time.monotonic()
    solo.client.delete(f"{solo.election.path}/{node}")
    revoked_at, _, reason = wait_until(lambda: (solo.of_kind("revoked") or [None])[0], 1.0, "revocation")
    assert reason == "lock_node_deleted" and revoked_at - deleted_at < 0.5
    _, _, second = first_elected([solo], deleted_at, 2.0)
    assert second > first and solo.election.epoch == second
