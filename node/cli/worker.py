"""``haorch worker``: run a worker in the foreground (consume requests, execute, publish responses)."""

from __future__ import annotations

import os
import sys

import click

from node.cli.common import config
from node.logs import configure_logging


@click.group()
def worker() -> None:
    """Workers: execute task requests from haorch.requests."""


@worker.command()
@click.option("--id", "worker_id", default="worker-1", show_default=True,
              help="Worker id, recorded in the ledger; worker-N serves /metrics on port worker_http_port(N).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Tasks executed at once (default: worker_concurrency from the config).")
def run(worker_id: str, concurrency: int | None) -> None:
    """Run one worker in the foreground until SIGTERM/SIGINT (finishes its current batch, exits 0)."""
    from node.worker.main import run_worker

    cfg = config()
    configure_logging(os.environ.get("HAORCH_LOG_LEVEL", "INFO"))
    sys.exit(run_worker(cfg, worker_id, cfg.worker_concurrency if concurrency is None else concurrency))
