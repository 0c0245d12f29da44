"""``haorch dashboard``: the Grafana dashboard rendered to PNG + HTML from the stack's Prometheus."""

from __future__ import annotations

from pathlib import Path

import click

from node import dashboard as dashboard_ops
from node.cli.common import config, emit, json_option


@click.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the PNGs and index.html (created if missing).")
@click.option("--minutes", type=click.FloatRange(min=0.5, max=7 * 24 * 60), default=15.0, show_default=True,
              help="Time window: the last M minutes.")
@json_option
def dashboard(out: Path, minutes: float, as_json: bool) -> None:
    """Render every panel of the dashboard haorch-cluster.json from Prometheus to PNG and index.html."""
    result = dashboard_ops.render(config(), out, minutes)
    emit(result, as_json, lambda d: click.echo(
        f"{len(d['panels'])} panels over the last {minutes:g} min -> {d['index']} (overview: {d['overview']})"))
