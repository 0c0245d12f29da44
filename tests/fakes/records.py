"""An in-memory records store with the semantics of :class:`node.stores.records.Records` the leader relies on:
a fenced transition log and experiment states in which a terminal state is final."""

from __future__ import annotations

from typing import Any

from fakes.journal import Journal
from node.errors import FencedError
from node.model.states import TERMINAL_EXPERIMENT_STATES


class FakeRecords:
    """Implements :class:`node.leader.ports.Records`; ``transitions`` rows are
    ``(experiment_id, task, from, to, attempt, detail, epoch)``."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal if journal is not None else Journal()
        self.fence = 0
        self.terms: dict[int, str] = {}
        self.transitions: list[tuple[Any, ...]] = []
        self.states: dict[str, str] = {}
        self.applied: set[str] = set()  # applied_batches

    def _check_fence(self, epoch: int) -> None:
        if self.fence > epoch:
            raise FencedError("mariadb", epoch, self.fence)

    def raise_fence(self, epoch: int, node_id: str, elected_at: float) -> None:
        self._check_fence(epoch)
        self.fence = epoch
        self.terms.setdefault(epoch, node_id)
        self.journal.append(f"mariadb.raise_fence {epoch}")

    def write_batch(self, epoch: int, node_id: str, transitions: list[tuple], states: dict[str, str],
                    now: float, batch_id: str | None = None, written_by: tuple[int, str] | None = None,
                    fenced: bool = True, reopen: bool = False) -> bool:
        if fenced:
            self._check_fence(epoch)
        if batch_id is not None and batch_id in self.applied:
            return False
        if batch_id is not None:
            self.applied.add(batch_id)
        self.transitions += [(*t, written_by[0] if written_by else epoch) for t in transitions]
        for experiment_id, state in states.items():
            if reopen or self.states.get(experiment_id) not in TERMINAL_EXPERIMENT_STATES:
                self.states[experiment_id] = state
        self.journal.append(f"mariadb.write_batch {len(transitions)}")
        return True

    def prune_applied_batches(self, limit: int) -> int:
        self.journal.append("mariadb.prune_applied_batches")
        return 0

    def to_states(self, experiment_id: str, task: str | None = None) -> list[str]:
        """The ``to`` states logged for a task of ``experiment_id`` (or for the experiment, when None), in order."""
        return [t[3] for t in self.transitions if t[0] == experiment_id and t[1] == task]
