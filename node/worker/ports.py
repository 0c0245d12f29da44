"""What the worker's answer path needs from the execution ledger.

:class:`~node.stores.ledger.Ledger` (MariaDB) implements it; ``tests/fakes`` implements it in memory. The queues
are :class:`~node.stores.ports.Publisher` and :class:`~node.stores.ports.Consumer`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from node.stores.ledger import Finish, Key, LedgerRow, Start


class ExecutionLedger(Protocol):
    """One row per execution attempt, which is its claim: claim, read claims, record ends, abandon expired claims,
    release unstarted ones, count replays, read the outputs of tasks that succeeded (semantics:
    :mod:`node.stores.ledger`)."""

    def claim(self, starts: list[Start]) -> dict[Key, int]: ...

    def rows(self, keys: Iterable[Key]) -> dict[Key, LedgerRow]: ...

    def outputs(self, tasks: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]: ...

    def finish(self, updates: list[Finish]) -> set[int]: ...

    def renew(self, ids: list[int]) -> int: ...

    def abandon(self, ids: list[int], reason: str) -> dict[int, LedgerRow]: ...

    def release(self, ids: list[int]) -> None: ...

    def mark_replayed(self, ids: Iterable[int]) -> None: ...

    def close(self) -> None: ...
