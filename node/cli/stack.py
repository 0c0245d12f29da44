"""``haorch stack``: the service processes (ZooKeeper x3, RabbitMQ, MariaDB, Neo4j, Prometheus)."""

from __future__ import annotations

import subprocess
import sys

import click

from node.cli.common import config, emit, json_option, stderr, table
from node.config import TOPOLOGIES, with_overrides
from node.errors import UsageError
from node.runtime.programs import names, recorded
from node.stack import manager


def _progress(message: str) -> None:
    stderr.print(f"[dim]stack[/dim] {message}")


@click.group()
def stack() -> None:
    """Start, stop and inspect the service stack (ZooKeeper x3, RabbitMQ, MariaDB, Neo4j, Prometheus)."""


@stack.command()
@click.option("--topology", type=click.Choice(TOPOLOGIES), default=None,
              help="single: one RabbitMQ and one MariaDB; ha: a 3-node RabbitMQ cluster (quorum queues on all 3) and "
                   "a 3-member Galera cluster. Remembered by the state dir [default: its last, else single]")
@json_option
def up(topology: str | None, as_json: bool) -> None:
    """Start every service that is not running and create schemas (idempotent)."""
    cfg = with_overrides(config(), topology=topology) if topology else config()
    result = manager.up(cfg, progress=_progress)
    data = {"started": result.started, "already_running": result.already_running, "seconds": round(result.seconds, 2),
            "home": str(cfg.home)}
    emit(data, as_json, lambda d: click.echo(
        f"stack up in {d['seconds']} s: started {len(d['started'])}, already running {len(d['already_running'])} "
        f"(state dir {d['home']})"))


@stack.command()
@click.option("--purge", is_flag=True, help="Also delete the state dir (data, logs, passwords).")
@json_option
def down(purge: bool, as_json: bool) -> None:
    """Stop every process haorch started (cluster first, then services). Data stays unless --purge."""
    cfg = config()
    stopped = manager.down(cfg, purge=purge, progress=_progress)
    emit({"stopped": stopped, "purged": purge}, as_json,
         lambda d: click.echo(f"stopped {len(d['stopped'])} process(es)" + (", state dir deleted" if purge else "")))


@stack.command()
@json_option
def status(as_json: bool) -> None:
    """Show each service process: pid, port, health (exit 1 unless all are healthy)."""
    rows = manager.status(config())

    def human(rows: list[dict]) -> None:
        for row in rows:
            row["rss"] = f"{row['rss_bytes'] // 2**20} MiB" if row.get("rss_bytes") else None
            row["healthy"] = "yes" if row["healthy"] else "NO"
        table(rows, ["service", "pid", "port", "healthy", "rss"])

    emit(rows, as_json, human)
    if not all(r["healthy"] in (True, "yes") for r in rows):
        sys.exit(1)


@stack.command()
@click.argument("service")
@click.option("-n", "--lines", default=50, show_default=True, help="How many lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
def logs(service: str, lines: int, follow: bool) -> None:
    """Print the log of SERVICE (a stack service, a node like node-1, or a worker)."""
    cfg = config()
    proc = recorded(cfg, service)
    if cfg.runtime == "docker":
        known = names(cfg)
        found = service in known
    else:
        known = sorted(p.stem for p in cfg.log_dir.glob("*.log")) if cfg.log_dir.exists() else []
        found = proc.log_file.exists()
    if not found:
        raise UsageError(f"no log for {service!r}; known: {', '.join(known) or 'none (is the stack up?)'}")
    sys.exit(subprocess.call(proc.log_command(lines, follow)))
