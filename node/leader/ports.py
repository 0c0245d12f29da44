"""What :class:`~node.leader.term.LeaderTerm` needs from the DAG store and the records store.

:class:`~node.stores.dags.DagStore` (Neo4j) and :class:`~node.stores.records.Records` (MariaDB) implement these;
``tests/fakes`` implements them in memory with the same semantics. The queues are
:class:`~node.stores.ports.Publisher` and :class:`~node.stores.ports.Consumer`.
"""

from __future__ import annotations

from typing import Any, Protocol

from node.model.advance import AdvanceResult, Outcome


class Dags(Protocol):
    """The concrete DAGs; every write is fenced (FencedError once a newer epoch raised the fence). ``pools``: the
    slots of the bounded concurrency pools, which every dispatch respects (set by the leader)."""

    pools: dict[str, int]

    def raise_fence(self, epoch: int, node_id: str) -> None: ...

    def rescan(self, epoch: int, after: str, limit: int) -> list[dict[str, Any]]: ...

    def mark_dispatched(self, epoch: int, keys: list[str], now: float) -> AdvanceResult: ...

    def advance(self, epoch: int, outcomes: list[Outcome], submitted: list[str], now: float) -> AdvanceResult: ...

    def due_work(self, epoch: int, now: float, grace_s: float, limit: int, overdue: bool = ...) -> AdvanceResult: ...

    def outbox(self, limit: int, before: float | None = ...) -> list[dict[str, Any]]: ...

    def forget_outbox(self, ids: list[str]) -> None: ...

    def release_retry(self, ids: list[str], now: float) -> int: ...

    def pool_usage(self, names: list[str], now: float) -> dict[str, dict[str, int]]: ...


class Records(Protocol):
    """Experiment rows and the transition log; every write is fenced."""

    def raise_fence(self, epoch: int, node_id: str, elected_at: float) -> None: ...

    def write_batch(self, epoch: int, node_id: str, transitions: list[tuple], states: dict[str, str],
                    now: float, batch_id: str | None = ..., written_by: tuple[int, str] | None = ...,
                    fenced: bool = ..., reopen: bool = ...) -> bool: ...

    def prune_applied_batches(self, limit: int) -> int: ...


class PoolLimits(Protocol):
    """The record of the concurrency pools (:class:`~node.stores.pools.Pools`, MariaDB)."""

    def limits(self) -> dict[str, int]: ...
