"""Every mutation a token holder can make — through the HTTP API or the console — in one layer: check the role,
do it (``node/experiments.py``, ``node/access/tokens.py``), and write the audit row.

Each function takes the app's context and the caller's principal and returns what the API answers. An audit row
(``node/access/audit.py``) is written after every attempt: ``refused`` (the role does not allow it: AccessDenied,
HTTP 403), ``error`` (the action raised: the error goes on to the caller) or ``ok``. Its ``who`` is the token's
name, its ``target`` the experiment id, ``template:TYPE`` or ``token:NAME``. The row comes after the mutation, in
its own transaction: a crash between the two (or MariaDB refusing the row, which Audit logs instead of raising)
leaves the mutation done and unaudited; a refusal is audited before AccessDenied is raised.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml

from node.access.audit import (
    CANCEL,
    REGISTER,
    RETRY,
    SUBMIT,
    TOKEN_CREATE,
    TOKEN_REVOKE,
    audited,
    cancelled_detail,
    registered_detail,
    retried_detail,
    submitted_detail,
)
from node.access.roles import Action, Principal
from node.errors import TemplateError
from node.experiments import new_experiment_id
from node.http.context import AppContext
from node.model.executors import KNOWN_EXECUTORS
from node.model.template import Template, parse_template


def _audited(ctx: AppContext, who: Principal, needs: Action, action: str, target: str,
             work: Callable[[], dict[str, Any]], detail: Callable[[dict[str, Any]], str | None] = lambda _: None,
             ) -> dict[str, Any]:
    return audited(ctx.audit(), who, ctx.node_id, needs, action, target, work, detail)


def submit(ctx: AppContext, who: Principal, type_: str, experiment_id: str | None,
           params: dict[str, str]) -> dict[str, Any]:
    """Submit (idempotent on the id; one is generated when None, so that the audit row names it)."""
    experiment_id = new_experiment_id(type_) if experiment_id is None else experiment_id
    return _audited(ctx, who, Action.SUBMIT, SUBMIT, str(experiment_id),
                    lambda: ctx.experiments().submit(type_, experiment_id, params),
                    submitted_detail)


def submit_many(ctx: AppContext, who: Principal, type_: str, ids: list[str], params: dict[str, str]) -> dict[str, Any]:
    """Submit experiments of one type in one MariaDB and one Neo4j transaction (idempotent on each id); one audit
    row for the batch, naming its first and last id and its size."""
    target = f"{ids[0]} .. {ids[-1]} ({len(ids)})" if len(ids) > 1 else ids[0]
    return _audited(ctx, who, Action.SUBMIT, SUBMIT, target,
                    lambda: {"type": type_, "submitted": len(ids),
                             "created": ctx.experiments().submit_many(type_, ids, params)},
                    lambda out: f"type {type_}: {len(out['created'])} new of {out['submitted']}")


def cancel(ctx: AppContext, who: Principal, experiment_id: str) -> dict[str, Any]:
    return _audited(ctx, who, Action.CANCEL, CANCEL, experiment_id,
                    lambda: ctx.experiments().cancel(experiment_id),
                    cancelled_detail)


def retry(ctx: AppContext, who: Principal, experiment_id: str) -> dict[str, Any]:
    return _audited(ctx, who, Action.RETRY, RETRY, experiment_id,
                    lambda: ctx.experiments().retry(experiment_id),
                    retried_detail)


def register_template(ctx: AppContext, who: Principal, text: str) -> dict[str, Any]:
    """Register a template from its file's text (YAML, or JSON), as ``haorch template register`` does
    (Experiments.register_template). A new version only if the template changed."""
    try:
        type_ = parse_template_text(text).type
    except TemplateError:
        type_ = None  # the attempt is audited with the error below (after the role check)
    return _audited(ctx, who, Action.REGISTER, REGISTER, f"template:{type_}" if type_ else "template",
                    lambda: ctx.experiments().register_template(parse_template_text(text)),
                    registered_detail)


def create_token(ctx: AppContext, who: Principal, name: str, role: str) -> dict[str, Any]:
    """A new token (the secret is in this answer only, never in the audit row)."""
    return _audited(ctx, who, Action.TOKENS, TOKEN_CREATE, f"token:{name}",
                    lambda: ctx.tokens().create(role, name, who.name), lambda out: f"role {out['role']}")


def revoke_token(ctx: AppContext, who: Principal, name: str) -> dict[str, Any]:
    return _audited(ctx, who, Action.TOKENS, TOKEN_REVOKE, f"token:{name}",
                    lambda: ctx.tokens().revoke(name, who.name),
                    lambda out: "already revoked" if out["already_revoked"] else None)


def parse_template_text(text: str, source: str = "request body") -> Template:
    """A template file's text: JSON when it starts with '{', YAML otherwise (as ``load_template_file`` reads a
    file); TemplateError with one line when it is neither, or not a valid template."""
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise TemplateError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise TemplateError(f"{source}: not valid YAML: {problem[:200]}") from None
    return parse_template(data, KNOWN_EXECUTORS, source=source)
