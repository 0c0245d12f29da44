"""``haorch hpc``: the HPC test site (SLURM controller, two compute nodes, slurmdbd, an SSH login node) that
haorch runs as its own processes for tests, the demo and trying HPC tasks out (node/hpc/site.py)."""

from __future__ import annotations

import sys

import click

from node.cli.common import config, emit, json_option, stderr, table
from node.hpc import site


def _progress(message: str) -> None:
    stderr.print(f"[dim]hpc[/dim] {message}")


@click.group()
def hpc() -> None:
    """Start, stop and inspect the HPC test site (SLURM + munge + slurmdbd + an SSH login node, on loopback)."""


@hpc.command()
@json_option
def up(as_json: bool) -> None:
    """Start every program of the site that is not running and register it as site 'local' (idempotent)."""
    cfg = config()
    result = site.up(cfg, progress=_progress)
    data = {"started": result.started, "already_running": result.already_running,
            "seconds": round(result.seconds, 2), "login": result.login, "site": site.SITE_NAME}
    emit(data, as_json, lambda d: click.echo(
        f"hpc site already up ({d['seconds']} s); login: {d['login']}" if not d["started"] else
        f"hpc site up in {d['seconds']} s: started {len(d['started'])}, already running "
        f"{len(d['already_running'])}; login: {d['login']}"))


@hpc.command()
@click.option("--purge", is_flag=True, help="Also delete the site's directory (keys, configs, accounting data).")
@json_option
def down(purge: bool, as_json: bool) -> None:
    """Cancel the site's jobs and stop its processes; forget the site 'local'. Files stay unless --purge."""
    stopped = site.down(config(), purge=purge, progress=_progress)
    emit({"stopped": stopped, "purged": purge}, as_json,
         lambda d: click.echo(f"stopped {len(d['stopped'])} process(es)" + (", site deleted" if purge else "")))


@hpc.command()
@json_option
def status(as_json: bool) -> None:
    """Show each program of the site: pid, port, up (a real probe), and the login; exit 1 unless all are up."""
    rows = site.status(config())

    def human(data: list[dict]) -> None:
        table([{**r, "up": "yes" if r["up"] else "NO"} for r in data], ["name", "pid", "port", "up"])
        click.echo(f"login: {data[-1]['login']}")

    emit(rows, as_json, human)
    if not all(r["up"] for r in rows):
        sys.exit(1)
