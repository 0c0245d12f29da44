"""The HTTP app of a node (FastAPI; ``node/http/server.py`` serves it with uvicorn); with ``api=False`` (for
workers) it serves the first three routes only. Every ``/api`` route needs a token (``node/http/auth.py``); the
least role each one needs is in brackets (``node/access/roles.py``)::

    GET    /healthz                        process alive, dependency view: 200 | 503                   open
    GET    /readyz                         leader: acting; standby: ready to take over: 200 | 503      open
    GET    /metrics                        Prometheus text format                                      open
    GET    /openapi.json, /docs            the OpenAPI schema (bearer scheme "bearer"), Swagger UI     open
    POST   /api/experiments                {"type", "experiment_id"?, "params"?}: 201, 200 if it existed
                                                                                                   [operator]
    POST   /api/experiments/batch          {"type", "experiment_ids": [1..1000 ids], "params"?}: 201
                                           {"type", "submitted", "created": [the new ids]}; one
                                           transaction per store, idempotent on each id            [operator]
    GET    /api/experiments                ?state=&type=&since=&until=&q=&limit=&after=              [viewer]
                                           one page, oldest first, as a JSON list (the body clients have
                                           always read); header X-Next-Cursor: the next page's cursor
                                           (absent after the last). since/until: created_at in UNIX
                                           seconds, since inclusive, until exclusive; q: an id prefix
    GET    /api/experiments/ID             status with tasks                                         [viewer]
    GET    /api/experiments/ID/transitions its transition rows, oldest first                         [viewer]
    POST   /api/experiments/ID/cancel      cancel (a finished one is reported as it is)            [operator]
    POST   /api/experiments/ID/retry       resume a FAILED or CANCELLED one from its failed step   [operator]
    GET    /api/templates                  latest version of every type (installs missing built-ins) [viewer]
    GET    /api/templates/TYPE?version=N   one template with its tasks (version: default latest)     [viewer]
    POST   /api/templates                  body: a template file's text (YAML or JSON): 201, 200 if
                                           unchanged                                                  [admin]
    GET    /api/audit?limit=&before=&target=  audit rows, newest first; before: the last id seen   [operator]
    GET    /api/tokens?all=true            tokens, never their secret; all: revoked ones too          [admin]
    POST   /api/tokens                     {"name", "role"}: 201 with the token, shown only here      [admin]
    DELETE /api/tokens/NAME                revoke (idempotent)                                        [admin]

A submission that would bring the experiments in flight (QUEUED or RUNNING) above ``max_in_flight`` gets 429 with
``Retry-After`` (nothing is stored; a resubmission of an existing id is still answered).

Errors are one line of JSON ``{"error": "..."}``: 400 (bad input, malformed JSON, a bad query parameter), 401 (no
valid token; with ``WWW-Authenticate: Bearer``), 403 (role too low), 404 (unknown id or route), 405, 409
(conflict), 411 (a body without Content-Length, or chunked), 413 (a body over ``REQUEST_BODY_MAX_BYTES``), 503
(a store down) or 500 (a bug). 411 and 413 are answered from the headers alone, before authentication and before
the body is read (:class:`BodyLimit`); the limits are declared in ``node/model/api_limits.py``. Mutations go
through ``node/http/actions.py``, which audits them. Nodes also serve the web console's pages at the root
(``node/console/routes.py``: its docstring lists them; they are not in the OpenAPI schema), which
``node/node_main.py`` passes in as ``pages``: the console builds on this package, not the other way round.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from node import __version__
from node.access.audit import RECENT_MAX
from node.access.roles import Action, Principal
from node.errors import AccessDenied, Busy, ConflictError, HaorchError, NotAuthenticated, NotFoundError, UsageError
from node.experiments import BUILTIN_TYPES
from node.http import actions
from node.http.auth import context, principal, require
from node.http.context import AppContext
from node.model.api_limits import REQUEST_BODY_MAX_BYTES, SUBMIT_BATCH_MAX

log = logging.getLogger(__name__)

#: the routes that read a body: without Content-Length they get 411
BODY_ROUTES = frozenset({("POST", "/api/experiments"), ("POST", "/api/experiments/batch"), ("POST", "/api/templates"),
                         ("POST", "/api/tokens")})
SUBMIT_SCHEMA = {"type": "object", "required": ["type"], "properties": {
    "type": {"type": "string"}, "experiment_id": {"type": "string"},
    "params": {"type": "object", "additionalProperties": {"type": "string"}}}}
BATCH_SCHEMA = {"type": "object", "required": ["type", "experiment_ids"], "properties": {
    "type": {"type": "string"},
    "experiment_ids": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": SUBMIT_BATCH_MAX},
    "params": {"type": "object", "additionalProperties": {"type": "string"}}}}
TOKEN_SCHEMA = {"type": "object", "required": ["name", "role"], "properties": {
    "name": {"type": "string"}, "role": {"type": "string", "enum": ["viewer", "operator", "admin"]}}}

Ctx = Annotated[AppContext, Depends(context)]
Who = Annotated[Principal, Depends(principal)]


def reply(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    """JSON (values it cannot encode as their str(), as the API always did)."""
    return Response(json.dumps(body, default=str), status, headers, media_type="application/json")


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """``{"error": message}`` with the message on one line."""
    return reply(status, {"error": " ".join(message.splitlines())}, headers)


def status_for(exc: HaorchError) -> int:
    for kind, status in ((NotAuthenticated, 401), (AccessDenied, 403), (NotFoundError, 404), (ConflictError, 409),
                         (UsageError, 400), (Busy, 429)):
        if isinstance(exc, kind):
            return status
    return 503


def _is_count(text: str) -> bool:
    """Decimal digits that int() takes (it refuses thousands of them), as a Content-Length must be."""
    return text.isascii() and text.isdigit() and len(text) <= 18


class BodyLimit:
    """Refuses a request body from its headers alone, before anything reads it: 411 for a chunked body, or a
    route of :data:`BODY_ROUTES` without Content-Length; 400 for an invalid Content-Length; 413 above
    REQUEST_BODY_MAX_BYTES. uvicorn then discards what the client still sends of the body (keeping the
    connection until its keep-alive timeout), so the client reads the answer rather than a reset."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = self.refusal(scope) if scope["type"] == "http" else None
        if problem is None:
            return await self.app(scope, receive, send)
        await error(*problem)(scope, receive, send)

    @staticmethod
    def refusal(scope: Scope) -> tuple[int, str] | None:
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        declared = headers.get("content-length")
        if "transfer-encoding" in headers:
            return 411, f"a chunked body is not accepted: send Content-Length (limit {REQUEST_BODY_MAX_BYTES} bytes)"
        if declared is None:
            if (scope["method"], scope["path"].rstrip("/")) in BODY_ROUTES:
                return 411, f"Content-Length required (request body limit {REQUEST_BODY_MAX_BYTES} bytes)"
            return None
        if not _is_count(declared):
            return 400, f"invalid Content-Length {declared[:40]!r}"
        if int(declared) > REQUEST_BODY_MAX_BYTES:
            return 413, f"request body is {int(declared)} bytes (limit {REQUEST_BODY_MAX_BYTES})"
        return None


async def json_object(request: Request) -> dict[str, Any]:
    """The JSON object in the body (whatever its Content-Type says; empty: ``{}``)."""
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError:
        raise UsageError("request body is not JSON") from None
    if not isinstance(data, dict):
        raise UsageError("request body must be a JSON object")
    return data


async def text_body(request: Request) -> str:
    try:
        return (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("request body is not UTF-8 text") from None


def create_app(ctx: AppContext, pages: Sequence[APIRouter] = ()) -> FastAPI:
    """The app for ``ctx`` (on ``app.state.ctx``): the probes and /metrics, and with ``ctx.api`` the API and the
    routers of ``pages`` (the web console)."""
    app = FastAPI(title="haorch", version=__version__, redoc_url=None,
                  docs_url="/docs" if ctx.api else None, openapi_url="/openapi.json" if ctx.api else None)
    app.state.ctx = ctx
    app.add_middleware(BodyLimit)
    _errors(app)
    app.include_router(_probes())
    if ctx.api:
        app.include_router(_api())
        for router in pages:
            app.include_router(router)
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(HaorchError)
    async def haorch_error(_request: Request, exc: HaorchError) -> Response:
        status = status_for(exc)
        headers = ({"WWW-Authenticate": "Bearer"} if status == 401 else
                   {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Busy) else None)
        return error(status, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = " ".join(str(part) for part in first.get("loc", ()))
        return error(400, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
        return error(exc.status_code, message, exc.headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> Response:
        log.error("http: %s %s failed", request.method, request.url.path, exc_info=exc)
        return error(500, f"{type(exc).__name__}: {exc}")


def _probes() -> APIRouter:
    router = APIRouter(tags=["probes"])

    @router.get("/healthz")
    def healthz(ctx: Ctx) -> Response:
        ok, info = ctx.healthz()
        return reply(200 if ok else 503, info)

    @router.get("/readyz")
    def readyz(ctx: Ctx) -> Response:
        ok, info = ctx.readyz()
        return reply(200 if ok else 503, info)

    @router.get("/metrics")
    def metrics(ctx: Ctx) -> Response:
        return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)
    return router


def _api() -> APIRouter:
    router = APIRouter(prefix="/api", dependencies=[Depends(principal)])

    # --- experiments -------------------------------------------------------------------------------------
    @router.post("/experiments", tags=["experiments"], status_code=201, openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": SUBMIT_SCHEMA}}}})
    def submit(ctx: Ctx, who: Who, body: Annotated[dict[str, Any], Depends(json_object)]) -> Response:
        params = body.get("params") or {}
        if not isinstance(body.get("type"), str) or not isinstance(params, dict):
            raise UsageError("expected {\"type\": str, \"experiment_id\"?: str, \"params\"?: object}")
        experiment_id = body.get("experiment_id")
        if experiment_id is not None and not isinstance(experiment_id, str):
            raise UsageError(f"experiment id must be a string, got {type(experiment_id).__name__}")
        out = actions.submit(ctx, who, body["type"], experiment_id, {k: str(v) for k, v in params.items()})
        return reply(201 if out["created"] else 200, out)

    @router.post("/experiments/batch", tags=["experiments"], status_code=201, openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": BATCH_SCHEMA}}}})
    def submit_batch(ctx: Ctx, who: Who, body: Annotated[dict[str, Any], Depends(json_object)]) -> Response:
        ids, params = body.get("experiment_ids"), body.get("params") or {}
        if not isinstance(body.get("type"), str) or not isinstance(params, dict) or not isinstance(ids, list) \
                or not all(isinstance(i, str) for i in ids):
            raise UsageError("expected {\"type\": str, \"experiment_ids\": [str, ...], \"params\"?: object}")
        if not 1 <= len(ids) <= SUBMIT_BATCH_MAX:
            raise UsageError(f"experiment_ids must hold 1-{SUBMIT_BATCH_MAX} ids, got {len(ids)}")
        if len(set(ids)) != len(ids):
            raise UsageError("experiment_ids holds the same id more than once")
        out = actions.submit_many(ctx, who, body["type"], ids, {k: str(v) for k, v in params.items()})
        return reply(201, out)

    @router.get("/experiments", tags=["experiments"])
    def list_experiments(ctx: Ctx, state: str | None = None,
                         type_: Annotated[str | None, Query(alias="type")] = None,
                         since: float | None = None, until: float | None = None,
                         q: Annotated[str | None, Query(description="experiment id prefix")] = None,
                         limit: int | None = None,
                         after: str | None = None) -> Response:
        page = ctx.experiments().list(state, limit, after, type_=type_, since=since, until=until, prefix=q)
        return reply(200, page.rows, {"X-Next-Cursor": page.next} if page.next else None)

    @router.get("/experiments/{experiment_id}", tags=["experiments"])
    def status(ctx: Ctx, experiment_id: str) -> Response:
        return reply(200, ctx.experiments().status(experiment_id))

    @router.get("/experiments/{experiment_id}/transitions", tags=["experiments"])
    def transitions(ctx: Ctx, experiment_id: str) -> Response:
        records = ctx.records()
        records.get_experiment(experiment_id)  # NotFoundError (404) for an unknown id, not an empty list
        return reply(200, records.transitions(experiment_id))

    @router.post("/experiments/{experiment_id}/cancel", tags=["experiments"])
    def cancel(ctx: Ctx, who: Who, experiment_id: str) -> Response:
        return reply(200, actions.cancel(ctx, who, experiment_id))

    @router.post("/experiments/{experiment_id}/retry", tags=["experiments"])
    def retry(ctx: Ctx, who: Who, experiment_id: str) -> Response:
        return reply(200, actions.retry(ctx, who, experiment_id))

    # --- templates ---------------------------------------------------------------------------------------
    @router.get("/templates", tags=["templates"])
    def templates(ctx: Ctx) -> Response:
        exps = ctx.experiments()
        rows = exps.dags.list_templates()
        if not set(BUILTIN_TYPES) <= {r["type"] for r in rows}:  # a fresh store: as `haorch template list` does
            exps.install_builtins()
            rows = exps.dags.list_templates()
        return reply(200, rows)

    @router.get("/templates/{template_type}", tags=["templates"])
    def template(ctx: Ctx, template_type: str,
                 version: Annotated[int | None, Query(ge=1)] = None) -> Response:
        found, number = ctx.experiments().dags.get_template(template_type, version)
        return reply(200, {"version": number, **found.to_dict()})

    @router.post("/templates", tags=["templates"], openapi_extra={"requestBody": {"required": True, "content": {
        "application/yaml": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "object"}}}}})
    def register(ctx: Ctx, who: Who, text: Annotated[str, Depends(text_body)]) -> Response:
        out = actions.register_template(ctx, who, text)
        return reply(201 if out["created"] else 200, out)

    # --- audit and tokens --------------------------------------------------------------------------------
    @router.get("/audit", tags=["access"])
    def audit(ctx: Ctx, who: Who, limit: Annotated[int, Query(ge=1, le=RECENT_MAX)] = 100,
              before: int | None = None, target: str | None = None) -> Response:
        require(who, Action.AUDIT)
        return reply(200, ctx.audit().recent(limit, before, target))

    @router.get("/tokens", tags=["access"])
    def tokens(ctx: Ctx, who: Who, all_: Annotated[bool, Query(alias="all")] = False) -> Response:
        require(who, Action.TOKENS)
        return reply(200, ctx.tokens().list(include_revoked=all_))

    @router.post("/tokens", tags=["access"], status_code=201, openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": TOKEN_SCHEMA}}}})
    def create_token(ctx: Ctx, who: Who, body: Annotated[dict[str, Any], Depends(json_object)]) -> Response:
        name, role = body.get("name"), body.get("role")
        if not isinstance(name, str) or not isinstance(role, str):
            raise UsageError("expected {\"name\": str, \"role\": \"viewer\" | \"operator\" | \"admin\"}")
        return reply(201, actions.create_token(ctx, who, name, role))

    @router.delete("/tokens/{name}", tags=["access"])
    def revoke_token(ctx: Ctx, who: Who, name: str) -> Response:
        return reply(200, actions.revoke_token(ctx, who, name))

    return router
