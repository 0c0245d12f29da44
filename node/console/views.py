"""What the console's pages show, shaped from store data: no HTTP here, and each read is one query.

The reads the stores have no method for are here, each one SELECT in one :meth:`Records.transaction`: an
experiment's ledger entries, a type's template versions, the failover history (``leader_terms``) and the fence row.
A crash of any of them is a read that did not happen: the page shows the error, nothing was written.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pymysql.cursors

from node.access.roles import Action, Principal
from node.console.graph import GraphNode
from node.errors import UsageError
from node.model.states import TERMINAL_EXPERIMENT_STATES, ExperimentState
from node.model.template import Template
from node.stores.records import Records

#: phases of a takeover as node/leader/term.py's PhaseClock.durations() stores them in leader_terms.phases
PHASES = ("detect", "elect", "fence", "rescan", "redispatch", "first_advance")
FAILOVER_ROWS = 50
CANCELLABLE = (ExperimentState.QUEUED, ExperimentState.RUNNING)
RETRYABLE = (ExperimentState.FAILED, ExperimentState.CANCELLED)


# --- time --------------------------------------------------------------------------------------------------------
def utc_iso(ts: float | None) -> str:
    """``2024-05-01T12:00:03Z`` (seconds), or an empty string for no time."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def relative(ts: float | None, now: float | None = None) -> str:
    """``5 s ago``, ``3 min ago``, ``2 h ago``, ``4 d ago`` (``in …`` for a time ahead), or empty for no time."""
    if ts is None:
        return ""
    delta = (time.time() if now is None else now) - ts
    ahead, delta = delta < 0, abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= size:
            amount = f"{int(delta // size)} {unit}"
            break
    else:
        amount = f"{int(delta)} s"
    return f"in {amount}" if ahead else f"{amount} ago"


def seconds(start: float | None, end: float | None) -> str:
    """A duration as ``1.23 s``, or empty when either end is missing."""
    if start is None or end is None:
        return ""
    return f"{max(0.0, end - start):.2f} s"


def parse_time(text: str, name: str) -> float | None:
    """A UTC time from a filter box: ``2024-05-01``, ``2024-05-01T12:00[:SS]`` (``Z`` optional) or UNIX seconds;
    None for an empty box; UsageError naming the box otherwise."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.removesuffix("Z").removesuffix("z"))
    except ValueError:
        raise UsageError(f"{name}: {text[:40]!r} is not a time (2024-05-01, 2024-05-01T12:00:00 or UNIX "
                         "seconds, UTC)") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


# --- experiments list --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ListFilter:
    """The experiments page's filters, as the query string gives them (empty: not set)."""

    state: str = ""
    type: str = ""
    since: str = ""
    until: str = ""
    q: str = ""
    after: str = ""

    @classmethod
    def from_query(cls, query: dict[str, str]) -> ListFilter:
        return cls(**{name: query.get(name, "").strip()[:200] for name in
                      ("state", "type", "since", "until", "q", "after")})

    def checked(self) -> dict[str, Any]:
        """The filters as Experiments.list's keywords (it checks state, type and prefix); UsageError on a bad
        time."""
        return {"state": self.state or None, "type_": self.type or None,
                "since": parse_time(self.since, "created since"), "until": parse_time(self.until, "created until"),
                "prefix": self.q or None, "after": self.after or None}

    def query(self, **changes: str) -> dict[str, str]:
        """The non-empty filters (with ``changes``) for a link's query string."""
        values = {"state": self.state, "type": self.type, "since": self.since, "until": self.until, "q": self.q,
                  "after": self.after, **changes}
        return {k: v for k, v in values.items() if v}


def state_counts(counts: dict[str, int]) -> list[tuple[str, int]]:
    """(state, count) for every experiment state in lifecycle order, 0 for those with none, then the total."""
    rows = [(str(s), counts.get(s, 0)) for s in ExperimentState]
    return [*rows, ("total", sum(counts.values()))]


def experiment_row(row: dict[str, Any]) -> dict[str, Any]:
    """One row of the listing (from the page query's columns only: no further read)."""
    return {"id": row["experiment_id"], "type": row["type"], "version": row["template_version"],
            "state": row["state"], "created_at": row["created_at"], "updated_at": row["updated_at"],
            "finished_at": row["finished_at"], "duration": seconds(row["created_at"], row["finished_at"])}


# --- one experiment ----------------------------------------------------------------------------------------------
def is_terminal(state: str) -> bool:
    return state in TERMINAL_EXPERIMENT_STATES


def _pretty(value: object) -> str:
    return json.dumps(value, indent=1, sort_keys=True, default=str) if value not in (None, {}, []) else ""


def task_rows(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task table from Experiments.status's tasks."""
    return [{"name": t["name"], "kind": t.get("kind") or "", "state": t["status"],
             "attempt": t.get("attempt") or 0, "max_attempts": t.get("max_attempts") or 0,
             "dispatched_at": t.get("dispatched_at"), "finished_at": t.get("finished_at"),
             "duration": seconds(t.get("dispatched_at"), t.get("finished_at")),
             "outputs": _pretty(t.get("outputs")), "error": t.get("last_error") or "",
             "waiting_on": _pretty(t.get("waiting_on")) if not isinstance(t.get("waiting_on"), str)
             else t["waiting_on"], "depends_on": list(t.get("depends_on") or [])} for t in tasks]


def task_nodes(tasks: list[dict[str, Any]]) -> list[GraphNode]:
    """The graph of an experiment from its tasks (Experiments.status)."""
    return [GraphNode(t["name"], tuple(t.get("depends_on") or ()), t["status"], t.get("attempt") or 0,
                      t.get("kind") or "") for t in tasks]


def template_nodes(template: Template) -> list[GraphNode]:
    """The graph of a template: its tasks and their depends_on, without states."""
    return [GraphNode(s.name, s.depends_on, None, 0, s.kind) for s in template.tasks]


@dataclass(frozen=True)
class Actions:
    """Which buttons an experiment's page shows, and whether this user may press them (``note`` says why not)."""

    cancel: bool
    retry: bool
    allowed: bool
    note: str = ""


def actions_for(state: str, principal: Principal) -> Actions:
    allowed = principal.may(Action.CANCEL) and principal.may(Action.RETRY)
    note = "" if allowed else f"your role ({principal.role}) may only read: cancel and retry need operator or admin"
    return Actions(state in CANCELLABLE, state in RETRYABLE, allowed, note)


def ledger_entries(records: Records, experiment_id: str) -> list[dict[str, Any]]:
    """The experiment's execution ledger (one row per attempt a worker claimed), oldest first."""
    def work(cur: pymysql.cursors.Cursor) -> list[dict[str, Any]]:
        cur.execute("SELECT task, attempt, worker, epoch, started_at, ended_at, outcome, error FROM ledger "
                    "WHERE experiment_id = %s ORDER BY id", (experiment_id,))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    rows = records.transaction(work)
    for row in rows:
        row["duration"] = seconds(row["started_at"], row["ended_at"])
    return rows


# --- templates ---------------------------------------------------------------------------------------------------
def template_versions(records: Records, type_: str) -> list[dict[str, Any]]:
    """Every recorded version of a type, newest first: version, registered_at, hash."""
    def work(cur: pymysql.cursors.Cursor) -> list[dict[str, Any]]:
        cur.execute("SELECT version, registered_at, hash FROM templates WHERE type = %s ORDER BY version DESC",
                    (type_,))
        return [{"version": v, "registered_at": at, "hash": h} for v, at, h in cur.fetchall()]
    return records.transaction(work)


# --- cluster -----------------------------------------------------------------------------------------------------
@dataclass
class Term:
    """One leader term and its takeover's phases; ``bars``: (phase, seconds, width % of the longest total shown)."""

    epoch: int
    node_id: str
    elected_at: float
    phases: dict[str, float]
    total: float | None
    bars: list[tuple[str, float, float]] = field(default_factory=list)


def _phases(text: str | None) -> dict[str, float]:
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))} if isinstance(data, dict) else {}


def failover_history(records: Records, limit: int = FAILOVER_ROWS) -> list[Term]:
    """The last ``limit`` leader terms, newest first, each with its phase bars."""
    def work(cur: pymysql.cursors.Cursor) -> list[tuple[Any, ...]]:
        cur.execute("SELECT epoch, node_id, elected_at, phases FROM leader_terms ORDER BY epoch DESC LIMIT %s",
                    (limit,))
        return list(cur.fetchall())
    return terms(records.transaction(work))


def terms(rows: list[tuple[Any, ...]]) -> list[Term]:
    """Terms from ``leader_terms`` rows (epoch, node_id, elected_at, phases JSON); a bar's width is its share of
    the longest total among them, so that rows compare."""
    out = []
    for epoch, node_id, elected_at, text in rows:
        phases = _phases(text)
        total = phases.get("total")
        if total is None and any(p in phases for p in PHASES):
            total = sum(phases.get(p, 0.0) for p in PHASES)
        out.append(Term(epoch, node_id, elected_at, phases, total))
    longest = max((t.total or 0.0 for t in out), default=0.0)
    for t in out:
        t.bars = [(p, t.phases[p], 100.0 * t.phases[p] / longest if longest > 0 else 0.0)
                  for p in PHASES if p in t.phases]
    return out


def fence(records: Records) -> dict[str, Any]:
    """The fence row: the epoch last raised, by which node, when (the leader as MariaDB knows it)."""
    def work(cur: pymysql.cursors.Cursor) -> dict[str, Any]:
        cur.execute("SELECT epoch, holder, raised_at FROM fence WHERE name = 'leader'")
        row = cur.fetchone()
        return {"epoch": row[0], "holder": row[1], "raised_at": row[2]} if row else {}
    return records.transaction(work)
