"""The ordered record of effects the fakes share."""

from __future__ import annotations


class Journal(list[str]):
    """Effects in the order they happened, e.g. ``neo4j.advance``, ``mariadb.write_batch``,
    ``publish haorch.requests``, ``ack 3``."""

    def index_of(self, prefix: str) -> int:
        """Index of the first entry starting with ``prefix``; ValueError if there is none."""
        return next(i for i, entry in enumerate(self) if entry.startswith(prefix))

    def has(self, prefix: str) -> bool:
        return any(entry.startswith(prefix) for entry in self)
