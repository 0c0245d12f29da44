"""What every command shares: the config, ``--json`` output and progress on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from node.config import Config, load_config

stderr = Console(stderr=True, highlight=False)

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")


def config() -> Config:
    """The config of the current invocation (``--home`` or ``$HAORCH_HOME``)."""
    ctx = click.get_current_context()
    obj = ctx.find_root().obj
    if obj is None or "config" not in obj:
        home = obj.get("home") if obj else None
        cfg = load_config(home)
        ctx.find_root().obj = {**(obj or {}), "config": cfg}
        return cfg
    return obj["config"]


def emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """Print ``data`` as JSON on stdout when asked, otherwise render it for a human."""
    if as_json:
        sys.stdout.write(json.dumps(data, default=str, indent=None) + "\n")
    else:
        human(data)


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain aligned table on stdout (no colours, so it greps and pipes well)."""
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
