"""An in-memory records store with the semantics of :class:`node.stores.records.Records` the leader relies on:
a fenced transition log and experiment states in which a terminal state is final."""

from __future__ import annotations

from typing import Any

from fakes.journal import Journal
from node.errors import FencedError
from node.model.states import TERMINAL_EXPERIMENT_STATES, TaskStatus


class FakeRecords:
    """Implements :class:`node.leader.ports.Records`; ``transitions`` rows are
    ``(experiment_id, task, from, to, attempt, detail, epoch)``."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal if journal is not None else Journal()
        self.fence = 0
        self.terms: dict[int, str] = {}
        self.transitions: list[tuple[Any, ...]] = []
        self.states: dict[str, str] = {}

    def _check_fence(self, epoch: int) -> None:
        if self.fence > epoch:
            raise FencedError("mariadb", epoch, self.fence)

    def raise_fence(self, epoch: int, node_id: str, elected_at: float) -> None:
        self._check_fence(epoch)
        self.fence = epoch
        self.terms.setdefault(epoch, node_id)
        self.journal.append(f"mariadb.raise_fence {epoch}")

    def write_batch(self, epoch: int, node_id: str, transitions: list[tuple], states: dict[str, str],
                    now: float) -> None:
        self._check_fence(epoch)
        self.transitions += [(*t, epoch) for t in transitions]
        for experiment_id, state in states.items():
            if self.states.get(experiment_id) not in TERMINAL_EXPERIMENT_STATES:
                self.states[experiment_id] = state
        self.journal.append(f"mariadb.write_batch {len(transitions)}")

    def prune_applied_batches(self, limit: int) -> int:
        self.journal.append("mariadb.prune_applied_batches")
        return 0

    def missing_successes(self, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        present = {(t[0], t[1]) for t in self.transitions if t[3] == TaskStatus.SUCCEEDED}
        return [k for k in dict.fromkeys(keys) if k not in present]

    def experiment_states(self, ids: list[str]) -> dict[str, str]:
        return {i: self.states[i] for i in ids if i in self.states}

    def to_states(self, experiment_id: str, task: str | None = None) -> list[str]:
        """The ``to`` states logged for a task of ``experiment_id`` (or for the experiment, when None), in order."""
        return [t[3] for t in self.transitions if t[0] == experiment_id and t[1] == task]
