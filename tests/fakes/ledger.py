"""An in-memory execution ledger with the semantics of :class:`node.stores.ledger.Ledger`."""

from __future__ import annotations

from collections.abc import Iterable

from fakes.journal import Journal
from node.stores.ledger import Finish, Key, LedgerRow, Start


class FakeLedger:
    """Implements :class:`node.worker.ports.ExecutionLedger` (and ``in_progress`` for the leader's takeover)."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal if journal is not None else Journal()
        self.rows: dict[int, LedgerRow] = {}

    def add(self, row: Start, ended_at: float | None = None, outcome: str | None = None,
            result: dict | None = None, error: str | None = None) -> int:
        """Plant a row (an execution by an earlier worker); returns its id."""
        row_id = len(self.rows) + 1
        self.rows[row_id] = LedgerRow(row_id, *row, ended_at, outcome, result, error, 0)
        return row_id

    def completed(self, keys: Iterable[Key]) -> dict[Key, LedgerRow]:
        wanted = set(keys)
        found: dict[Key, LedgerRow] = {}
        for row in self.rows.values():
            if row.key in wanted and row.ended_at is not None:
                found.setdefault(row.key, row)
        self.journal.append("ledger.completed")
        return found

    def in_progress(self, keys: Iterable[Key]) -> dict[Key, float]:
        wanted = set(keys)
        return {r.key: r.started_at for r in self.rows.values() if r.key in wanted and r.ended_at is None}

    def begin(self, rows: list[Start]) -> list[int]:
        ids = [self.add(row) for row in rows]
        if rows:
            self.journal.append(f"ledger.begin {len(rows)}")
        return ids

    def finish(self, updates: list[Finish]) -> None:
        for u in updates:
            row = self.rows[u.id]
            self.rows[u.id] = row._replace(ended_at=u.ended_at, outcome=u.outcome, result=u.result, error=u.error,
                                           started_at=row.started_at if u.started_at is None else u.started_at)
        if updates:
            self.journal.append(f"ledger.finish {len(updates)}")

    def mark_replayed(self, ids: Iterable[int]) -> None:
        for row_id in ids:
            self.rows[row_id] = self.rows[row_id]._replace(replayed_count=self.rows[row_id].replayed_count + 1)

    def close(self) -> None:
        pass

    def executions(self, key: Key) -> int:
        """How many rows (executions) ``key`` has."""
        return sum(1 for r in self.rows.values() if r.key == key)
