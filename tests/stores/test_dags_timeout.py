"""The Neo4j fence lock cannot be held, nor waited on, forever: leader transactions carry a server-side timeout
(``DagStore(tx_timeout_s=...)``, ``neo4j_tx_timeout_s``), so a frozen leader mid-transaction is ended by the server
and a transaction blocked behind one gives up as a DependencyError (the term is retried), outside the takeover's
FenceGuard too."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from node.errors import DependencyError
from node.stores.connect import neo4j_driver
from node.stores.dags import DagStore

pytestmark = pytest.mark.stack


def _hold_fence(driver):
    """An open transaction holding the fence node's lock, as a leader frozen mid-batch would."""
    session = driver.session()
    tx = session.begin_transaction()
    tx.run("MATCH (f:Fence {name: 'leader'}) SET f.last_write_at = $now", now=time.time()).consume()
    return session, tx


def _timed_call(work, limit_s: float) -> tuple[float, BaseException | None]:
    """Run ``work`` on a thread; (seconds it took, what it raised), or (inf, None) if it still blocks."""
    outcome: list[BaseException | None] = []
    started = time.monotonic()

    def target() -> None:
        try:
            work()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    return (time.monotonic() - started, outcome[0]) if outcome else (float("inf"), None)


def test_a_leader_transaction_blocked_by_a_frozen_fence_holder_gives_up(stack) -> None:
    with neo4j_driver(stack) as driver:
        dags = DagStore(driver, tx_timeout_s=1.0)
        epoch = dags.fence_epoch()
        session, tx = _hold_fence(driver)
        try:
            took, raised = _timed_call(lambda: dags.due_work(epoch, time.time(), 5.0, limit=1), 30.0)
        finally:
            tx.rollback()
            session.close()
    print(f"\nblocked leader transaction gave up after {took:.1f} s: {raised}")
    assert isinstance(raised, DependencyError), f"blocked for {took:.1f} s (raised {raised!r})"


def test_a_frozen_leaders_transaction_is_ended_by_the_server_and_releases_the_fence(stack) -> None:
    with neo4j_driver(stack) as driver:
        frozen = DagStore(driver, tx_timeout_s=1.0)
        epoch = frozen.fence_epoch()
        locked = threading.Event()

        def freeze(tx) -> None:
            tx.run("MATCH (f:Fence {name: 'leader'}) SET f.last_write_at = $now", now=time.time()).consume()
            locked.set()
            time.sleep(10)  # a leader frozen mid-transaction, holding the fence lock

        def hold() -> None:
            with contextlib.suppress(Exception), driver.session() as session:
                session.execute_write(frozen._timed(freeze))  # ends in a timeout error once it wakes up

        threading.Thread(target=hold, daemon=True).start()
        assert locked.wait(10)
        waiter = DagStore(driver)  # no timeout of its own: it waits for as long as the lock is held
        took, raised = _timed_call(lambda: waiter.due_work(epoch, time.time(), 5.0, limit=1), 30.0)
    print(f"\nwaiter behind a frozen holder went through after {took:.1f} s")
    assert raised is None and took < 8, f"took {took:.1f} s, raised {raised!r} (the holder sleeps 10 s)"


def test_a_writer_frozen_deleting_outbox_nodes_holds_the_fence_lock_where_the_guard_sees_it(stack) -> None:
    """``forget_outbox`` locks the Fence node first: a leader frozen in it blocks the next fence write (the next
    leader's raise, whose guard ends it) instead of holding the Outbox nodes' locks where no guard looks — the
    next leader, deleting the same nodes in its takeover, then waited for it until it woke."""
    box = f"frozen-forget-{time.time_ns()}"
    with neo4j_driver(stack) as driver:
        # a well-formed (empty) batch: a node left behind would be written by the next leader's takeover
        driver.execute_query("CREATE (:Outbox {id: $id, at: $now, epoch: 0, node: 'test', rows: $rows})",
                             id=box, now=time.time(), rows='{"rows": [], "states": {}}')
        frozen = DagStore(driver)
        inside, wake = threading.Event(), threading.Event()

        def freezing(work):
            def frozen_after(tx, *args):
                work(tx, *args)
                inside.set()
                wake.wait(30)  # SIGSTOPped between the delete and the commit
            return frozen_after

        frozen._timed = freezing  # type: ignore[method-assign]
        deleting = threading.Thread(target=frozen.forget_outbox, args=([box],), daemon=True)
        deleting.start()
        try:
            assert inside.wait(10)
            took, raised = _timed_call(lambda: DagStore(driver, tx_timeout_s=1.0).due_work(0, time.time(), 5.0,
                                                                                            limit=1), 30.0)
        finally:
            wake.set()
            deleting.join(10)
        left, _, _ = driver.execute_query("MATCH (o:Outbox {id: $id}) RETURN count(o) AS n", id=box)
        driver.execute_query("MATCH (o:Outbox {id: $id}) DELETE o", id=box)
    print(f"\na fence writer behind the frozen delete: {took:.1f} s, {raised!r}")
    assert isinstance(raised, DependencyError), f"not blocked by the frozen delete: took {took:.1f} s"
    assert left[0]["n"] == 0  # the delete commits once it wakes
