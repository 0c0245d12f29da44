"""``haorch cluster``: the 3-node service (nodes and workers as background processes)."""

from __future__ import annotations

import sys

import click

from node import cluster as cluster_ops
from node.cli.common import config, emit, json_option, stderr, table


def _progress(message: str) -> None:
    stderr.print(f"[dim]cluster[/dim] {message}")


@click.group()
def cluster() -> None:
    """Start, stop and inspect orchestrator nodes and workers."""


@cluster.command()
@click.option("--nodes", type=click.IntRange(1, 29), default=3, show_default=True, help="Orchestrator replicas.")
@click.option("--workers", type=click.IntRange(0, 99), default=2, show_default=True, help="Worker processes.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Tasks at once per worker.")
@json_option
def up(nodes: int, workers: int, concurrency: int | None, as_json: bool) -> None:
    """Start nodes and workers that are not running (idempotent) and wait for a leader."""
    out = cluster_ops.up(config(), nodes, workers, concurrency, progress=_progress)
    emit(out, as_json, lambda d: click.echo(f"cluster up: {d['leader']} leads (epoch {d['epoch']}); "
                                            f"started {len(d['started'])} process(es)"))


@cluster.command()
@json_option
def down(as_json: bool) -> None:
    """Stop workers, standbys, then the leader."""
    stopped = cluster_ops.down(config(), progress=_progress)
    emit({"stopped": stopped}, as_json, lambda d: click.echo(f"stopped {len(d['stopped'])} process(es)"))


@cluster.command()
@json_option
def status(as_json: bool) -> None:
    """Show each node: pid, role, epoch, HTTP port (exit 1 when no node leads)."""
    rows = cluster_ops.status(config())
    emit(rows, as_json, lambda rs: table(rs, ["node_id", "pid", "role", "epoch", "http_port"]))
    if not any(r["role"] == "leader" for r in rows):
        sys.exit(1)


@cluster.command()
@click.option("--rolling/--all-at-once", default=True, show_default=True,
              help="One node at a time (standbys first, the leader last, each back before the next) or all together.")
@json_option
def restart(rolling: bool, as_json: bool) -> None:
    """Restart every running node with SIGTERM (a leader hands over), e.g. after an upgrade."""
    rows = cluster_ops.restart(config(), rolling, progress=_progress)
    emit(rows, as_json, lambda rs: table(rs, ["node_id", "seconds"]))


@cluster.command("kill-leader")
@click.option("--signal", "sig", type=click.Choice(["KILL", "TERM", "STOP"], case_sensitive=False), default="KILL",
              show_default=True, help="KILL: crash; TERM: graceful handover; STOP: freeze (resume: kill -CONT; "
                                      "a container: docker pause, resume with docker unpause).")
@json_option
def kill_leader(sig: str, as_json: bool) -> None:
    """Signal the current leader (chaos by hand)."""
    out = cluster_ops.kill_leader(config(), sig)
    emit(out, as_json, lambda d: click.echo(f"sent SIG{d['signal']} to {d['node_id']} (pid {d['pid']}, "
                                            f"epoch {d['epoch']})"))
