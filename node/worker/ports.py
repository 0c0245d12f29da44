"""What the worker's answer path needs from the execution ledger.

:class:`~node.stores.ledger.Ledger` (MariaDB) implements it; ``tests/fakes`` implements it in memory. The queues
are :class:`~node.stores.ports.Publisher` and :class:`~node.stores.ports.Consumer`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from node.stores.ledger import Finish, Key, LedgerRow, Start


class ExecutionLedger(Protocol):
    """One row per execution attempt: read the ended ones, insert starts, record ends, count replays."""

    def completed(self, keys: Iterable[Key]) -> dict[Key, LedgerRow]: ...

    def begin(self, rows: list[Start]) -> list[int]: ...

    def finish(self, updates: list[Finish]) -> None: ...

    def mark_replayed(self, ids: Iterable[int]) -> None: ...

    def close(self) -> None: ...
