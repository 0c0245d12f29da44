"""Unblock a new leader's Neo4j fence raise held up by an older leader's open transaction.

Every write of a leader (each DAG-advancing transaction, and the deletion of Outbox nodes) and every cancel and
retry writes the ``(:Fence)`` node first, so it holds that node's lock until it commits. A leader frozen
(SIGSTOP, a long pause, a half-open connection) in the middle of such a transaction keeps the lock for as long as
it is frozen (or until its server-side timeout, ``neo4j_tx_timeout_s``; Neo4j has none by default), and the new
leader's ``raise_fence`` would wait for it that long. While the new leader raises its fence, this guard looks for
its own raise blocked on the fence and terminates the blockers: any other holder of the fence lock acts for an
older epoch (or is a user's cancel or retry, which fails and can be run again), and its work is rolled back (the
older leader sees ``Transaction.Terminated`` and steps down)::

    with FenceGuard(dags.driver, epoch):
        dags.raise_fence(epoch, node_id)
"""

from __future__ import annotations

import logging
import re

from node.periodic import Periodic

log = logging.getLogger(__name__)

_TX_ID = re.compile(r"[\w-]+-transaction-\d+")

_BLOCKED_RAISES = ("SHOW TRANSACTIONS YIELD transactionId, currentQuery, parameters, status "
                   "WHERE status STARTS WITH 'Blocked by' AND currentQuery CONTAINS 'Fence' "
                   "AND parameters.epoch = $epoch RETURN transactionId AS id, status")


class FenceGuard:
    """A thread that, every ``interval_s`` while the ``with`` block runs, terminates what blocks our raise."""

    def __init__(self, driver, epoch: int, interval_s: float = 0.2) -> None:
        self.driver = driver
        self.epoch = epoch
        self.terminated: list[str] = []
        self._periodic = Periodic(self.sweep, interval_s, "fence-guard")

    def __enter__(self) -> FenceGuard:
        self._periodic.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._periodic.__exit__(*exc)

    def sweep(self) -> list[str]:
        """Terminate the transactions blocking a fence raise of ours; returns their ids."""
        records, _, _ = self.driver.execute_query(_BLOCKED_RAISES, epoch=self.epoch)
        ours = {r["id"] for r in records}
        blockers = sorted({b for r in records for b in _TX_ID.findall(r["status"])} - ours)
        if blockers and not self._periodic.stopped:
            self.driver.execute_query("TERMINATE TRANSACTIONS $ids", ids=blockers)
            self.terminated += blockers
            log.warning("leader: terminated %s holding the neo4j fence for an older epoch (raising epoch=%d)",
                        ", ".join(blockers), self.epoch)
        return blockers
