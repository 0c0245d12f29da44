"""``haorch node``: run one orchestrator replica in the foreground."""

from __future__ import annotations

import os
import re

import click

from node.cli.common import config
from node.errors import UsageError
from node.logs import configure_logging


def node_number(node_id: str) -> int:
    """``node-3`` -> 3 (the HTTP port is derived from it); UsageError otherwise."""
    match = re.fullmatch(r"node-([1-9]|[12][0-9])", node_id)
    if not match:
        raise UsageError(f"node id must be node-1 .. node-29, got {node_id!r}")
    return int(match.group(1))


@click.group()
def node() -> None:
    """Orchestrator replicas (one leader, the others standby)."""


@node.command()
@click.option("--id", "node_id", required=True, help="Node id: node-1 .. node-29 (sets its HTTP port).")
def run(node_id: str) -> None:
    """Run one replica in the foreground until SIGTERM/SIGINT (a leader hands over first)."""
    from node.node_main import run_node

    cfg = config()
    number = node_number(node_id)
    configure_logging(os.environ.get("HAORCH_LOG_LEVEL", "INFO"))
    run_node(cfg, node_id, number)
