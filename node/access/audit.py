"""The audit log: who did what to which target, when, through which node, and how it ended.

One row per mutation (a submit, a cancel, a token created or revoked, ...) and per refused request, written after
the mutation in a transaction of its own, so a crash between the two leaves the mutation done and its row missing.
Rows are read newest first, a page at a time (``before_id``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pymysql
import pymysql.cursors

from node.access.roles import Action, Principal, refusal
from node.errors import AccessDenied, HaorchError, UsageError
from node.stores.records import Records

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTCOMES = ("ok", "refused", "error")
#: the ``action`` of each kind of mutation
SUBMIT, CANCEL, RETRY, REGISTER, TOKEN_CREATE, TOKEN_REVOKE, GC, POOL_SET, POOL_DELETE = (
    "submit", "cancel", "retry", "register", "token.create", "token.revoke", "gc", "pool.set", "pool.delete")
RECENT_MAX = 1000  # rows per page
#: column -> its size in characters (node/stores/mysql_schema.py); longer values are cut to it
SIZES = {"who": 128, "role": 16, "action": 32, "target": 255, "detail": 1024, "outcome": 16, "node_id": 64}
COLUMNS = "id, at, who, role, action, target, detail, outcome, node_id"


class Audit:
    """The ``audit`` table. ``records``: a Records, or a callable that returns the calling thread's (as for
    :class:`~node.access.tokens.Tokens`)."""

    def __init__(self, records: Records | Callable[[], Records]) -> None:
        self._records: Callable[[], Records] = records if callable(records) else (lambda: records)

    def record(self, who: str, role: str, action: str, target: str, outcome: str, detail: str | None,
               node_id: str) -> None:
        """Append one row, each value cut to its column's size. Never raises for a store failure: it comes after
        the mutation it records, which is done and must reach its caller, so when MariaDB does not take the row
        (after the Records' own retries) the row is missing and a warning with its content is logged instead.
        ValueError for an ``outcome`` not in OUTCOMES (a bug of the caller)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"audit outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
        values = {"who": who, "role": role, "action": action, "target": target, "detail": detail,
                  "outcome": outcome, "node_id": node_id}
        cut = {k: None if v is None else v[:SIZES[k]] for k, v in values.items()}
        at = time.time()

        def work(cur: pymysql.cursors.Cursor) -> None:
            cur.execute("INSERT INTO audit (at, who, role, action, target, detail, outcome, node_id) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        (at, cut["who"], cut["role"], cut["action"], cut["target"], cut["detail"], cut["outcome"],
                         cut["node_id"]))
        try:
            self._records().transaction(work)
        except (HaorchError, pymysql.err.MySQLError) as exc:
            log.warning("audit: row not written (%s): at=%.3f %s", exc, at,
                        " ".join(f"{k}={v!r}" for k, v in cut.items()))

    def recent(self, limit: int = 100, before_id: int | None = None, target: str | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` (1..RECENT_MAX) rows newest first: those with an id below ``before_id`` (the last id of
        the previous page) and, when given, about ``target``."""
        if not 1 <= limit <= RECENT_MAX:
            raise UsageError(f"limit must be 1..{RECENT_MAX}, not {limit}")
        clauses: list[str] = []
        args: list[int | str] = []
        if before_id is not None:
            clauses.append("id < %s")
            args.append(before_id)
        if target is not None:
            clauses.append("target = %s")
            args.append(target)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""

        def work(cur: pymysql.cursors.Cursor) -> list[dict[str, Any]]:
            cur.execute(f"SELECT {COLUMNS} FROM audit{where} ORDER BY id DESC LIMIT %s", (*args, limit))
            columns = [d[0] for d in cur.description]
            return [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]
        return self._records().transaction(work)


def audited(audit: Audit, who: Principal, node_id: str, needs: Action, action: str, target: str,
            work: Callable[[], T], detail: Callable[[T], str | None] = lambda _: None) -> T:
    """Run the mutation ``work`` if ``who``'s role allows ``needs``, and audit the attempt: ``refused``
    (AccessDenied raised, nothing done), ``error`` (``work`` raised: the error goes on to the caller) or ``ok`` with
    ``detail`` of the result. The row comes after the mutation, in its own transaction (see the module docstring).
    Every mutation of the API, the console and the CLI goes through here."""
    problem = refusal(who, needs)
    if problem:
        audit.record(who.name, who.role, action, target, "refused", problem, node_id)
        raise AccessDenied(problem)
    try:
        out = work()
    except Exception as exc:
        audit.record(who.name, who.role, action, target, "error", f"{type(exc).__name__}: {exc}", node_id)
        raise
    audit.record(who.name, who.role, action, target, "ok", detail(out), node_id)
    return out


def submitted_detail(out: dict[str, Any]) -> str:
    return f"type {out['type']} v{out['version']}" + ("" if out["created"] else " (existed)")


def cancelled_detail(out: dict[str, Any]) -> str:
    return f"{out['state']}, {out['cancelled_tasks']} task(s) cancelled"


def retried_detail(out: dict[str, Any]) -> str:
    return f"{out['state']}, {out['retried_tasks']} task(s) retried"


def registered_detail(out: dict[str, Any]) -> str:
    return f"{out['type']} v{out['version']}" + ("" if out["created"] else " (unchanged)")
