"""An in-memory execution ledger with the semantics of :class:`node.stores.ledger.Ledger` (claims included)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from fakes.journal import Journal
from node.stores.ledger import ABANDONED, CLAIM_LEASE_S, Finish, Key, LedgerRow, Start


class FakeLedger:
    """Implements :class:`node.worker.ports.ExecutionLedger` (and ``in_progress`` for the leader's takeover).
    ``clock`` stands for MariaDB's clock (claim deadlines)."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal if journal is not None else Journal()
        self.rows_by_id: dict[int, LedgerRow] = {}
        self.deadlines: dict[int, float] = {}
        self.clock = time.time
        self._next_id = 1

    def add(self, row: Start, ended_at: float | None = None, outcome: str | None = None,
            result: dict | None = None, error: str | None = None) -> int:
        """Plant a row (a claim or execution by an earlier worker); returns its id."""
        row_id = self._next_id
        self._next_id += 1
        self.rows_by_id[row_id] = LedgerRow(row_id, *row[:6], ended_at, outcome, result, error, 0)
        self.deadlines[row_id] = self.clock() + row.hold_s
        return row_id

    def _by_key(self) -> dict[Key, LedgerRow]:
        return {row.key: row for row in self.rows_by_id.values()}

    def claim(self, starts: list[Start]) -> dict[Key, int]:
        taken = self._by_key()
        won: dict[Key, int] = {}
        for start in starts:
            key = (start.experiment_id, start.task, start.attempt)
            if key not in taken and key not in won:
                won[key] = self.add(start)
        if starts:
            self.journal.append(f"ledger.claim {len(won)}")
        return won

    def rows(self, keys: Iterable[Key]) -> dict[Key, LedgerRow]:
        wanted = set(keys)
        now = self.clock()
        return {row.key: row._replace(expired=self.deadlines[row.id] < now)
                for row in self.rows_by_id.values() if row.key in wanted}

    def outputs(self, tasks: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        wanted = set(tasks)
        return {(row.experiment_id, row.task): row.result or {} for row in self.rows_by_id.values()
                if (row.experiment_id, row.task) in wanted and row.outcome == "success"}

    def in_progress(self, keys: Iterable[Key]) -> dict[Key, float]:
        return {key: row.started_at for key, row in self.rows(keys).items() if row.ended_at is None}

    def finish(self, updates: list[Finish]) -> set[int]:
        ended = set()
        for u in updates:
            row = self.rows_by_id.get(u.id)
            if row is None or row.ended_at is not None:
                continue
            self.rows_by_id[u.id] = row._replace(ended_at=u.ended_at, outcome=u.outcome, result=u.result,
                                                 error=u.error,
                                                 started_at=row.started_at if u.started_at is None else u.started_at)
            ended.add(u.id)
        if updates:
            self.journal.append(f"ledger.finish {len(updates)}")
        return ended

    def abandon(self, ids: list[int], reason: str) -> dict[int, LedgerRow]:
        now = self.clock()
        out = {}
        for row_id in ids:
            row = self.rows_by_id.get(row_id)
            if row is not None and row.ended_at is None and self.deadlines[row_id] < now:
                self.rows_by_id[row_id] = row._replace(ended_at=now, outcome="failure",
                                                       error=f"{ABANDONED}: {reason}")
                out[row_id] = self.rows_by_id[row_id]._replace(expired=True)
        self.journal.append(f"ledger.abandon {len(out)}")
        return out

    def renew(self, ids: list[int], lease_s: float = CLAIM_LEASE_S) -> int:
        moved = 0
        for row_id in ids:
            row = self.rows_by_id.get(row_id)
            if row is not None and row.ended_at is None:
                self.deadlines[row_id] = self.clock() + lease_s
                moved += 1
        self.journal.append(f"ledger.renew {moved}")
        return moved

    def release(self, ids: list[int]) -> None:
        for row_id in ids:
            row = self.rows_by_id.get(row_id)
            if row is not None and row.ended_at is None:
                del self.rows_by_id[row_id]
        self.journal.append(f"ledger.release {len(ids)}")

    def mark_replayed(self, ids: Iterable[int]) -> None:
        for row_id in ids:
            row = self.rows_by_id[row_id]
            self.rows_by_id[row_id] = row._replace(replayed_count=row.replayed_count + 1)

    def close(self) -> None:
        pass

    def executions(self, key: Key) -> int:
        """How many rows (executions) ``key`` has."""
        return sum(1 for r in self.rows_by_id.values() if r.key == key)
