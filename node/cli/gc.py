"""``haorch gc``: delete finished experiments past their retention by hand, as the leader does in the background.

The same steps as the leader's (``node/retention/collector.py``), each fenced by the epoch the fence holds when
it starts; audited as ``local:<unix user>``. Idempotent: a second run finds nothing left, and a run killed
anywhere is finished by the next run or by the leader.
"""

from __future__ import annotations

import time
from typing import Any

import click

from node.access.audit import GC
from node.access.roles import Action
from node.cli.common import audited_locally, config, emit, json_option, stderr, table
from node.retention.collector import Collector, Run, collect
from node.stores.connect import neo4j_driver
from node.stores.purge import Purge
from node.stores.records import Records

RETRY_FOR_S = 10.0  # a CLI user waits this long for MariaDB, then reads why it failed
CLI_NODE = "cli"  # the node id of a by-hand gc (archive records, failpoints)
PROGRESS_EVERY_S = 2.0


def _when(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else None


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted: per type, how many and the oldest.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Delete at most N experiments.")
@json_option
def gc(dry_run: bool, limit: int | None, as_json: bool) -> None:
    """Delete finished experiments past their retention (their Neo4j subgraph and MariaDB rows; archived first
    when archive_dir is set), oldest first, in batches of gc_batch."""
    cfg = config()
    records = Records(cfg, retry_for_s=RETRY_FOR_S)
    driver = neo4j_driver(cfg)
    try:
        collector = Collector(cfg, records, Purge(driver, cfg.neo4j_tx_timeout_s), CLI_NODE)
        if dry_run:
            rows = collector.plan()
            emit({"dry_run": True, "total": sum(r["count"] for r in rows), "types": rows}, as_json, _show_plan)
            return
        shown = [time.monotonic()]

        def progress(run: Run) -> None:
            if time.monotonic() - shown[0] >= PROGRESS_EVERY_S:
                shown[0] = time.monotonic()
                stderr.print(f"gc: {run.deleted} deleted so far ({run.kept} kept, {run.steps} steps)")

        done = audited_locally(records, Action.GC, GC, "gc", lambda: collect(collector, limit, progress),
                               lambda r: f"deleted {r.deleted}, kept {r.kept}, archived {r.archived}")
    finally:
        records.close()
        driver.close()
    emit({"dry_run": False, **done.to_dict(), "archive_dir": cfg.archive_dir or None}, as_json, _show_run)


def _show_plan(plan: dict[str, Any]) -> None:
    if not plan["types"]:
        click.echo("nothing past retention")
        return
    table([{**r, "oldest_finished_at": _when(r["oldest_finished_at"])} for r in plan["types"]],
          ["type", "count", "oldest_finished_at", "retention_days"])
    click.echo(f"{plan['total']} experiment(s) would be deleted")


def _show_run(run: dict[str, Any]) -> None:
    archived = f", {run['archived']} archived to {run['archive_dir']}" if run["archive_dir"] else ""
    click.echo(f"deleted {run['deleted']} experiment(s) past retention ({run['kept']} kept{archived}) in "
               f"{run['seconds']:.1f} s; pruned {run['leader_terms_pruned']} leader_terms row(s)")
