"""The execution ledger in the real MariaDB: batched begin/finish/completed/mark_replayed, and its give-up."""

from __future__ import annotations

import time

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
        ids = ledger.begin([Start(*key, worker="w-1", epoch=5, started_at=100.0 + i) for i, key in enumerate(keys)])
        assert len(ids) == 3 and ids == sorted(ids)
        assert ledger.completed(keys) == {}  # started is not completed
        assert ledger.in_progress(keys) == {keys[0]: 100.0, keys[1]: 101.0, keys[2]: 102.0}
        ledger.finish([Finish(ids[0], 110.0, "success", {"n": 1}, None, started_at=105.0),
                       Finish(ids[2], 111.0, "failure", None, "x")])
        done = ledger.completed([*keys, ("exp-l", "t0", 2)])
        assert ledger.in_progress(keys) == {keys[1]: 101.0}
        assert set(done) == {keys[0], keys[2]}
        assert done[keys[0]].result == {"n": 1} and done[keys[0]].worker == "w-1" and done[keys[0]].epoch == 5
        assert done[keys[0]].started_at == 105.0  # the real start replaces begin's
        assert (done[keys[2]].outcome, done[keys[2]].error, done[keys[2]].started_at, done[keys[2]].ended_at) == (
            "failure", "x", 102.0, 111.0)

        again = ledger.begin([Start(*keys[0], worker="w-2", epoch=6, started_at=120.0)])  # a duplicate execution
        ledger.finish([Finish(again[0], 121.0, "success", {"n": 2}, None)])
        assert ledger.completed([keys[0]])[keys[0]].id == ids[0]  # the first execution is the one replayed
        ledger.mark_replayed([ids[0], ids[0], ids[2]])
    finally:
        ledger.close()
    rows = {r["id"]: r for r in ledger_rows(stack, "exp-l")}
    assert len(rows) == 4  # duplicates are kept: the checker counts them
    assert (rows[ids[0]]["replayed_count"], rows[ids[1]]["replayed_count"], rows[ids[2]]["replayed_count"]) == (2, 0, 1)
    assert rows[ids[1]]["ended_at"] is None


def test_gives_up_with_one_line_when_mariadb_is_unreachable(stack) -> None:
    nowhere = with_overrides(stack, port_base=stack.port_base + 700)  # nothing listens on its MariaDB port
    ledger = Ledger(nowhere, retry_for_s=1.0)
    t0 = time.monotonic()
    unreachable = r"^mariadb at 127\.0\.0\.1:\d+ unavailable for 1 s \(OperationalError 2003\)$"
    with pytest.raises(ServiceError, match=unreachable):
        ledger.completed([("e", "t", 1)])
    assert time.monotonic() - t0 < 5
