"""Concurrency pools: the MariaDB ``pools`` table, the record of how many tasks of a pool may be dispatched at once.

A task takes a slot of its pool (its template's ``pool``, else its kind: :attr:`node.model.template.TaskSpec.pool`)
from its dispatch until its attempt ends. A pool with a row here has ``slots`` slots; a pool without one is
unbounded. The leader reads :meth:`Pools.limits` at the start of each term and at every sweep and enforces them
when it dispatches (:class:`node.stores.dags.DagStore`), so a change is in force within a sweep interval.

    pools = Pools(records)
    pools.set("stager", 4, "the staging servers take 4 transfers")   # {"name", "slots", ..., "changed"}
    pools.limits()                                                   # {"stager": 4}
    pools.delete("stager")                                           # {"name", "deleted": True}

Each call is one MariaDB transaction: a crash leaves the table as it was before the call or after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pymysql.cursors

from node.errors import UsageError
from node.model.limits import MAX_ID_CHARS, name_problem, text_problem
from node.stores.records import Records

#: more slots than any cluster dispatches at once; the ``slots INT`` column holds it
MAX_SLOTS = 1_000_000
DESCRIPTION_MAX_CHARS = 255  # pools.description
COLUMNS = "name, slots, description, updated_at"


def pool_problem(name: str) -> str | None:
    """Why ``name`` cannot name a pool (None: it can). A pool is named by a template's ``pool`` or by a task kind, so
    any kind is a pool name: 1-64 printable characters, not blank, no surrounding spaces."""
    if name_problem(name, "pool name") is not None or name.strip() != name or not name:
        return (f"invalid pool name {name[:80]!r}: 1-{MAX_ID_CHARS} printable characters without surrounding "
                "spaces (a template's pool, or a task kind)")
    return None


def check_pool(name: str, slots: int, description: str = "") -> None:
    """UsageError (one line) unless ``name``, ``slots`` and ``description`` fit a pool row."""
    problem = pool_problem(name)
    if problem is None and not (isinstance(slots, int) and not isinstance(slots, bool) and 1 <= slots <= MAX_SLOTS):
        problem = f"slots must be an integer from 1 to {MAX_SLOTS}, not {slots!r} (delete the pool to lift its limit)"
    if problem is None and len(description) > DESCRIPTION_MAX_CHARS:
        problem = f"a pool's description has at most {DESCRIPTION_MAX_CHARS} characters, not {len(description)}"
    if problem is None:
        problem = text_problem(description, "the pool's description")
    if problem is not None:
        raise UsageError(problem)


def _row(r: tuple) -> dict[str, Any]:
    return {"name": r[0], "slots": int(r[1]), "description": r[2], "updated_at": float(r[3])}


class Pools:
    """The ``pools`` table. ``records``: a Records, or a callable that returns the calling thread's."""

    def __init__(self, records: Records | Callable[[], Records]) -> None:
        self._records: Callable[[], Records] = records if callable(records) else (lambda: records)

    def limits(self) -> dict[str, int]:
        """The slots of every bounded pool: name → slots."""
        return {p["name"]: p["slots"] for p in self.list()}

    def list(self) -> list[dict[str, Any]]:
        """Every pool row, by name: ``{name, slots, description, updated_at}``."""
        def work(cur: pymysql.cursors.Cursor) -> list[dict[str, Any]]:
            cur.execute(f"SELECT {COLUMNS} FROM pools ORDER BY name")
            return [_row(r) for r in cur.fetchall()]
        return self._records().transaction(work)

    def set(self, name: str, slots: int, description: str | None = None) -> dict[str, Any]:
        """Bound pool ``name`` to ``slots`` (``description`` None keeps the current one). Idempotent: setting what
        the row holds changes nothing (``changed`` False). Returns the row with ``changed`` and ``previous`` (the
        slots before, None: the pool was unbounded)."""
        check_pool(name, slots, description or "")

        def work(cur: pymysql.cursors.Cursor) -> dict[str, Any]:
            cur.execute(f"SELECT {COLUMNS} FROM pools WHERE name = %s FOR UPDATE", (name,))
            found = cur.fetchone()
            before = _row(found) if found else None
            text = description if description is not None else (before["description"] if before else "")
            if before is not None and (before["slots"], before["description"]) == (slots, text):
                return {**before, "changed": False, "previous": before["slots"]}
            now = time.time()
            cur.execute("INSERT INTO pools (name, slots, description, updated_at) VALUES (%s, %s, %s, %s) "
                        "ON DUPLICATE KEY UPDATE slots = VALUES(slots), description = VALUES(description), "
                        "updated_at = VALUES(updated_at)", (name, slots, text, now))
            return {"name": name, "slots": slots, "description": text, "updated_at": now, "changed": True,
                    "previous": before["slots"] if before else None}
        return self._records().transaction(work)

    def delete(self, name: str) -> dict[str, Any]:
        """Lift pool ``name``'s limit (its row goes). Idempotent: ``deleted`` False when there was none."""
        problem = pool_problem(name)
        if problem is not None:
            raise UsageError(problem)

        def work(cur: pymysql.cursors.Cursor) -> dict[str, Any]:
            cur.execute("SELECT slots FROM pools WHERE name = %s FOR UPDATE", (name,))
            found = cur.fetchone()
            if found is None:
                return {"name": name, "deleted": False, "slots": None}
            cur.execute("DELETE FROM pools WHERE name = %s", (name,))
            return {"name": name, "deleted": True, "slots": int(found[0])}
        return self._records().transaction(work)
