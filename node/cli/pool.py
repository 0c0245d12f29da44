"""Concurrency pools: pool set|list|delete.

A pool bounds how many tasks of it are dispatched at once; a task's pool is its template's ``pool``, else its kind,
so ``haorch pool set job_submission 4`` limits a kind. MariaDB's ``pools`` table is the record; the leader reads it
at every sweep, so a change is in force within about a second. The CLI acts as ``local:<unix user>`` and audits each
set and delete (node/cli/token.py does the same for tokens).
"""

from __future__ import annotations

import time
from typing import Any

import click

from node.access.audit import POOL_DELETE, POOL_SET
from node.access.roles import Action
from node.cli.common import audited_locally, config, emit, json_option, table
from node.errors import UsageError
from node.stores.connect import neo4j_driver
from node.stores.dags import DagStore
from node.stores.pools import Pools, check_pool, pool_problem
from node.stores.records import Records

RETRY_FOR_S = 10.0  # a CLI user waits this long for MariaDB, then reads why it failed


def _when(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else None


@click.group()
def pool() -> None:
    """Concurrency pools: at most SLOTS tasks of a pool dispatched at once (a task's pool: its template's `pool`,
    else its kind). A pool that is not set is unbounded."""


# ignore_unknown_options: a negative SLOTS ("-1") reaches the check, which says what is allowed
@pool.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("slots", type=int)
@click.option("--description", default=None, help="What the limit protects (kept when not given).")
@json_option
def pool_set(name: str, slots: int, description: str | None, as_json: bool) -> None:
    """Bound pool NAME to SLOTS (>= 1) tasks at once; in force within a second. Setting it again changes nothing."""
    check_pool(name, slots, description or "")
    records = Records(config(), retry_for_s=RETRY_FOR_S)
    try:
        row = audited_locally(records, Action.POOLS, POOL_SET, f"pool:{name}",
                              lambda: Pools(records).set(name, slots, description),
                              lambda r: f"slots={r['slots']}" + ("" if r["changed"] else " (unchanged)")
                              + (f" was={r['previous']}" if r["changed"] and r["previous"] is not None else ""))
    finally:
        records.close()

    def human(r: dict[str, Any]) -> None:
        before = "unbounded" if r["previous"] is None else f"{r['previous']} slots"
        click.echo(f"pool {r['name']!r}: {r['slots']} slots" + (f" (was {before})" if r["changed"] else
                                                                   " (unchanged)"))
    emit(row, as_json, human)


@pool.command("list")
@json_option
def pool_list(as_json: bool) -> None:
    """Every bounded pool: its slots, its tasks dispatched now (in use) and its ready tasks held for a slot."""
    cfg = config()
    records = Records(cfg, retry_for_s=RETRY_FOR_S)
    try:
        rows = Pools(records).list()
    finally:
        records.close()
    if rows:
        with neo4j_driver(cfg) as driver:
            usage = DagStore(driver).pool_usage([r["name"] for r in rows], time.time())
        rows = [{**r, **usage.get(r["name"], {"in_use": 0, "waiting": 0})} for r in rows]
    emit(rows, as_json, lambda rs: table([{**r, "updated_at": _when(r["updated_at"])} for r in rs],
                                         ["name", "slots", "in_use", "waiting", "updated_at", "description"]))


@pool.command("delete")
@click.argument("name")
@json_option
def pool_delete(name: str, as_json: bool) -> None:
    """Lift pool NAME's limit (its held tasks are dispatched within a second). Deleting it again changes nothing."""
    problem = pool_problem(name)
    if problem is not None:
        raise UsageError(problem)
    records = Records(config(), retry_for_s=RETRY_FOR_S)
    try:
        out = audited_locally(records, Action.POOLS, POOL_DELETE, f"pool:{name}",
                              lambda: Pools(records).delete(name),
                              lambda r: f"was slots={r['slots']}" if r["deleted"] else "there was none")
    finally:
        records.close()

    def human(r: dict[str, Any]) -> None:
        click.echo(f"pool {r['name']!r} deleted: unbounded now (it had {r['slots']} slots)" if r["deleted"]
                   else f"pool {r['name']!r} was not set: it is unbounded")
    emit(out, as_json, human)
