"""API tokens and the audit log: token create|list|revoke, audit.

The CLI acts as ``local:<unix user>`` (it holds the stores' credentials already) and writes an audit row for each
token it creates or revokes, and for each such request that failed (a taken name, an unknown one).
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import click

from node.access.audit import RECENT_MAX, TOKEN_CREATE, TOKEN_REVOKE, Audit
from node.access.roles import Action, Role, local_principal
from node.access.tokens import Tokens
from node.cli.common import audited_locally, config, emit, json_option, table
from node.stores.records import Records

T = TypeVar("T")
RETRY_FOR_S = 10.0  # a CLI user waits this long for MariaDB, then reads why it failed


def _when(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else None


@click.group()
def token() -> None:
    """API tokens: each carries a role (viewer, operator, admin)."""


@token.command("create")
@click.option("--role", required=True, type=click.Choice([str(r) for r in Role]),
              help="viewer: reads; operator: also submits, cancels, retries, reads the audit log; admin: also "
                   "templates and tokens.")
@click.option("--name", required=True, help="A unique name (1-64 of A-Z a-z 0-9 . _ @ -), never reused.")
@json_option
def token_create(role: str, name: str, as_json: bool) -> None:
    """Create a token; it is printed once and cannot be shown again."""
    records = Records(config(), retry_for_s=RETRY_FOR_S)
    try:
        created = audited_locally(records, Action.TOKENS, TOKEN_CREATE, f"token:{name}",
                                  lambda: Tokens(records).create(role, name, local_principal().name),
                                  lambda c: f"role={c['role']} prefix={c['prefix']}")
    finally:
        records.close()

    def human(c: dict[str, Any]) -> None:
        click.echo(f"created token {c['name']!r} (role {c['role']}, prefix {c['prefix']}):", err=True)
        click.echo(c["token"])
        click.echo("Store it now: it cannot be shown again (haorch keeps only its hash).", err=True)
    emit(created, as_json, human)


@token.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Also revoked tokens.")
@json_option
def token_list(include_revoked: bool, as_json: bool) -> None:
    """List tokens (names, roles, prefixes; never the tokens)."""
    records = Records(config(), retry_for_s=RETRY_FOR_S)
    try:
        rows = Tokens(records).list(include_revoked=include_revoked)
    finally:
        records.close()

    def human(rs: list[dict[str, Any]]) -> None:
        table([{**r, "created_at": _when(r["created_at"]), "last_used_at": _when(r["last_used_at"]),
                "revoked_at": _when(r["revoked_at"])} for r in rs],
              ["name", "role", "prefix", "created_at", "created_by", "last_used_at"]
              + (["revoked_at", "revoked_by"] if include_revoked else []))
    emit(rows, as_json, human)


@token.command("revoke")
@click.argument("name")
@json_option
def token_revoke(name: str, as_json: bool) -> None:
    """Revoke the token NAME: every node refuses it within 5 s. Revoking a revoked token changes nothing."""
    records = Records(config(), retry_for_s=RETRY_FOR_S)
    try:
        revoked = audited_locally(records, Action.TOKENS, TOKEN_REVOKE, f"token:{name}",
                                  lambda: Tokens(records).revoke(name, local_principal().name),
                                  lambda r: "already revoked" if r["already_revoked"] else f"role={r['role']}")
    finally:
        records.close()

    def human(r: dict[str, Any]) -> None:
        when = f"at {_when(r['revoked_at'])} by {r['revoked_by']}"
        click.echo(f"token {r['name']!r} was already revoked {when}" if r["already_revoked"]
                   else f"revoked token {r['name']!r} (prefix {r['prefix']}) {when}")
    emit(revoked, as_json, human)


@click.command()
@click.option("--limit", type=click.IntRange(1, RECENT_MAX), default=50, show_default=True, help="Rows to show.")
@click.option("--before", "before_id", type=click.IntRange(min=1), default=None,
              help="Only rows with a smaller id (the next page: the last id shown).")
@click.option("--target", default=None, help="Only rows about this target (e.g. an experiment id, token:NAME).")
@json_option
def audit(limit: int, before_id: int | None, target: str | None, as_json: bool) -> None:
    """The audit log, newest first: who did what to which target, and the outcome."""
    records = Records(config(), retry_for_s=RETRY_FOR_S)
    try:
        rows = Audit(records).recent(limit=limit, before_id=before_id, target=target)
    finally:
        records.close()
    emit(rows, as_json, lambda rs: table([{**r, "at": _when(r["at"])} for r in rs],
                                         ["id", "at", "who", "role", "action", "target", "outcome", "node_id",
                                          "detail"]))
