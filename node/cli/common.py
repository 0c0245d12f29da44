"""What every command shares: the config, ``--json`` output and progress on stderr."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from node.access.audit import Audit, audited
from node.access.roles import Action, local_principal
from node.client import Client
from node.config import Config, load_config
from node.errors import UsageError
from node.stores.records import Records

T = TypeVar("T")
stderr = Console(stderr=True, highlight=False)

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
url_option = click.option("--url", envvar="HAORCH_URL", default=None, metavar="URL",
                          help="Go through the HTTP API of the node at URL (token: $HAORCH_TOKEN) instead of the "
                               "stores [env: HAORCH_URL].")


def api_client(url: str) -> Client:
    """A client of the node at ``url`` with the token in ``$HAORCH_TOKEN`` (and, for https with a private CA,
    its certificate in ``$HAORCH_CA_FILE``); UsageError when there is no token."""
    token = os.environ.get("HAORCH_TOKEN", "").strip()
    if not token:
        raise UsageError(f"--url {url}: the API needs a token: set HAORCH_TOKEN to an API token")
    return Client(url, token=token, verify=os.environ.get("HAORCH_CA_FILE") or True)


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


def audited_locally(records: Records, needs: Action, action: str, target: str, work: Callable[[], T],
                    detail: Callable[[T], str | None] = lambda _: None) -> T:
    """Run a mutation the CLI makes on the stores directly, audited as ``local:<unix user>`` (an admin: it holds
    the stores' credentials already) from ``cli@<host>`` (node/access/audit.py)."""
    return audited(Audit(records), local_principal(), f"cli@{socket.gethostname()}", needs, action, target, work,
                   detail)
