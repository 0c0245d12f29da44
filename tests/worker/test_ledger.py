"""The execution ledger in the real MariaDB: claims (one winner per attempt, also under a race), finish, abandon,
release, mark_replayed, and its give-up."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from worker_harness import Bus, ledger_rows

from node.config import with_overrides
from node.errors import ServiceError
from node.stores.ledger import Finish, Ledger, Start

pytestmark = pytest.mark.stack


def test_batched_round_trip(stack, bus: Bus) -> None:
    ledger = Ledger(stack)
    try:
        keys = [("exp-l", f"t{i}", 1) for i in range(3)]
        won = ledger.claim([Start(*key, worker="w-1", epoch=5, started_at=100.0 + i, hold_s=60)
                            for i, key in enumerate(keys)])
        ids = [won[key] for key in keys]
        assert ids == sorted(ids)
        assert all(row.ended_at is None and not row.expired for row in ledger.rows(keys).values())
        assert ledger.in_progress(keys) == {keys[0]: 100.0, keys[1]: 101.0, keys[2]: 102.0}
        assert ledger.finish([Finish(ids[0], 110.0, "success", {"n": 1}, None, started_at=105.0),
                              Finish(ids[2], 111.0, "failure", None, "x")]) == {ids[0], ids[2]}
        rows = ledger.rows([*keys, ("exp-l", "t0", 2)])
        assert ledger.in_progress(keys) == {keys[1]: 101.0}
        assert set(rows) == set(keys)
        assert rows[keys[0]].result == {"n": 1} and rows[keys[0]].worker == "w-1" and rows[keys[0]].epoch == 5
        assert rows[keys[0]].started_at == 105.0  # the real start replaces the claim time
        assert (rows[keys[2]].outcome, rows[keys[2]].error, rows[keys[2]].started_at, rows[keys[2]].ended_at) == (
            "failure", "x", 102.0, 111.0)

        assert ledger.claim([Start(*keys[0], worker="w-2", epoch=6, started_at=120.0)]) == {}  # taken: not twice
        assert ledger.finish([Finish(ids[0], 121.0, "success", {"n": 2}, None)]) == set()  # an end is final
        ledger.mark_replayed([ids[0], ids[0], ids[2]])
    finally:
        ledger.close()
    rows_by_id = {r["id"]: r for r in ledger_rows(stack, "exp-l")}
    assert len(rows_by_id) == 3
    assert (rows_by_id[ids[0]]["replayed_count"], rows_by_id[ids[1]]["replayed_count"],
            rows_by_id[ids[2]]["replayed_count"]) == (2, 0, 1)
    assert rows_by_id[ids[1]]["ended_at"] is None and rows_by_id[ids[0]]["result"] == '{"n":1}'


def test_of_workers_claiming_the_same_attempts_at_once_each_attempt_goes_to_exactly_one(stack) -> None:
    """Eight clients race for the same 50 attempts, each in its own transaction: every attempt is won once."""
    keys = [(f"exp-race-{time.time_ns()}", f"t{i}", 1) for i in range(50)]
    results: list[dict] = []

    def race(n: int) -> None:
        ledger = Ledger(stack)
        try:
            results.append(ledger.claim([Start(*key, worker=f"w-{n}", epoch=1, started_at=time.time(), hold_s=60)
                                         for key in keys]))
        finally:
            ledger.close()

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8
    winners = Counter(key for won in results for key in won)
    assert winners == Counter(dict.fromkeys(keys, 1))


def test_a_claim_retried_after_its_commit_went_through_is_still_its_own(stack) -> None:
    ledger = Ledger(stack)
    try:
        start = Start(f"exp-retry-{time.time_ns()}", "t", 1, "w-1", 1, time.time(), hold_s=60)
        first = ledger.claim([start])
        assert ledger.claim([start]) == first  # same worker, same claim time: the lost acknowledgement's retry
        assert ledger.claim([start._replace(worker="w-2")]) == {}
    finally:
        ledger.close()


def test_only_an_expired_open_claim_is_abandoned_and_a_released_claim_can_be_taken_again(stack) -> None:
    ledger = Ledger(stack)
    exp = f"exp-abandon-{time.time_ns()}"
    try:
        won = ledger.claim([Start(exp, "late", 1, "w-1", 1, time.time(), hold_s=-1),
                            Start(exp, "live", 1, "w-1", 1, time.time(), hold_s=60),
                            Start(exp, "unstarted", 1, "w-1", 1, time.time(), hold_s=60)])
        late, live, unstarted = won[(exp, "late", 1)], won[(exp, "live", 1)], won[(exp, "unstarted", 1)]
        rows = ledger.rows(list(won))
        assert rows[(exp, "late", 1)].expired and not rows[(exp, "live", 1)].expired
        abandoned = ledger.abandon([late, live], "test")
        assert list(abandoned) == [late] and abandoned[late].outcome == "failure"
        assert (abandoned[late].error or "").startswith("abandoned: test") and abandoned[late].ended_at
        assert ledger.abandon([late], "again") == {}  # ended already
        ledger.release([unstarted, late])  # an ended claim is never released
        assert set(ledger.rows(list(won))) == {(exp, "late", 1), (exp, "live", 1)}
        assert set(ledger.claim([Start(exp, "unstarted", 1, "w-2", 1, time.time(), hold_s=60)])) == {
            (exp, "unstarted", 1)}
    finally:
        ledger.close()


def test_gives_up_with_one_line_when_mariadb_is_unreachable(stack) -> None:
    nowhere = with_overrides(stack, port_base=stack.port_base + 700)  # nothing listens on its MariaDB port
    ledger = Ledger(nowhere, retry_for_s=1.0)
    t0 = time.monotonic()
    unreachable = r"^mariadb at 127\.0\.0\.1:\d+ unavailable for 1 s \(OperationalError 2003\)$"
    with pytest.raises(ServiceError, match=unreachable):
        ledger.rows([("e", "t", 1)])
    assert time.monotonic() - t0 < 5
