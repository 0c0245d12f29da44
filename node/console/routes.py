"""The web console: server-rendered pages over the node's stores, mounted at the root of the node's app.

    GET  /                              -> /experiments
    GET  /login, POST /login            token form; sets the cookie haorch_token (HttpOnly, SameSite=Strict)
    GET|POST /logout                    clears it
    GET  /experiments                   listing: filters, cursor pages, counts by state
    GET  /experiments/ID                graph, tasks, ledger, transitions, cancel/retry
    GET  /experiments/ID/live           JSON: state and the page's changing parts (polled by console.js)
    POST /experiments/ID/cancel|retry   node/http/actions.py, then back to the page with a flash message
    GET  /templates, /templates/TYPE    types; one type's graph and versions
    POST /templates                     register (admin), from a file upload or pasted text
    GET  /cluster                       nodes (their /readyz and /healthz), leader, failover history
    GET  /audit                         the audit log (operator and admin)
    GET  /console/static/NAME           console.css, console.js

Every page but /login needs a token (the cookie, or ``Authorization: Bearer``); without one it redirects (302) to
/login. Mutations are POST forms: the cookie is SameSite=Strict (no other site's page sends it) and a POST whose
Origin is another site is refused. Handlers that read stores are sync (FastAPI runs them in its thread pool, where
``ctx.experiments()`` is the thread's own); the POST handlers read their form on the event loop and do the rest in
the pool. A store that fails shows an error page (503); nothing is retried here beyond what the stores retry.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from node.access.roles import Action, Principal
from node.console import probes, views
from node.console.graph import RENDERER
from node.errors import AccessDenied, HaorchError, NotAuthenticated, NotFoundError, UnknownTypeError, UsageError
from node.http import actions
from node.http.auth import COOKIE, principal, require
from node.http.context import AppContext
from node.model.api_limits import REQUEST_BODY_MAX_BYTES
from node.model.states import ExperimentState

FLASH_COOKIE = "haorch_flash"
PAGE_SIZE = 50
AUDIT_PAGE_SIZE = 100
FORM_MAX_BYTES = REQUEST_BODY_MAX_BYTES  # what node/http/app.py lets through; a larger POST is refused unread
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
#: pages load nothing from elsewhere (the graph's SVG is inline; bar widths are style attributes)
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

router = APIRouter(include_in_schema=False)

_env = jinja2.Environment(loader=jinja2.PackageLoader("node.console", "templates"),
                          autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                          trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
_env.filters["iso"] = views.utc_iso
_env.filters["rel"] = views.relative


def _ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def _who(request: Request) -> Principal | None:
    """The request's principal (header or cookie, as node/http/auth.py resolves it), None without a valid token."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    credentials = (HTTPAuthorizationCredentials(scheme=scheme, credentials=token.strip())
                   if scheme.lower() == "bearer" and token.strip() else None)
    try:
        return principal(request, credentials)
    except NotAuthenticated:
        return None


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=302)


def _safe_next(target: str) -> str:
    """A local path to go to after logging in (anything else: /experiments)."""
    parts = urlsplit(target)
    if target.startswith("/") and not target.startswith("//") and not parts.scheme and not parts.netloc \
            and "\\" not in target:
        return target
    return "/experiments"


def _flash(response: Response, request: Request, kind: str, text: str) -> Response:
    response.set_cookie(FLASH_COOKIE, quote(f"{kind}:{text[:500]}"), max_age=60, path="/", httponly=True,
                        samesite="strict", secure=_https(request))
    return response


def _render(request: Request, name: str, who: Principal | None, code: int = 200, /,
            notice: dict[str, str] | None = None, **values: Any) -> HTMLResponse:
    """A page; shows ``notice`` or else the flash message a redirect left (and clears it)."""
    flash = notice
    raw = request.cookies.get(FLASH_COOKIE)
    if raw and flash is None:
        kind, _, text = unquote(raw).partition(":")
        flash = {"kind": kind if kind in ("ok", "error") else "ok", "text": text}
    html = _env.get_template(name).render(
        principal=who, node_id=_ctx(request).node_id, flash=flash, page=values.pop("page", ""),
        can_audit=who is not None and who.may(Action.AUDIT), **values)
    response = HTMLResponse(html, status_code=code)
    _secure_headers(response)
    if raw:
        response.delete_cookie(FLASH_COOKIE, path="/", httponly=True, samesite="strict", secure=_https(request))
    return response


def _secure_headers(response: Response) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"


def _error_page(request: Request, who: Principal | None, exc: HaorchError, back: str = "") -> HTMLResponse:
    if isinstance(exc, NotFoundError | UnknownTypeError):
        status, heading = 404, "Not found"
    elif isinstance(exc, AccessDenied):
        status, heading = 403, "Not allowed"
    elif isinstance(exc, UsageError):
        status, heading = 400, "Bad request"
    else:
        status, heading = 503, "A store is unavailable"
    return _render(request, "error.html", who, status, page="error", heading=heading, message=str(exc), back=back,
                   status=status)


def _page(request: Request, build: Callable[[Principal], HTMLResponse], back: str = "") -> Response:
    """``build(principal)`` for a logged-in user, the login redirect otherwise, an error page for a HaorchError."""
    who = _who(request) if COOKIE in request.cookies or "authorization" in request.headers else None
    if who is None:
        return _to_login(request)
    try:
        return build(who)
    except HaorchError as exc:
        return _error_page(request, who, exc, back)


# --- forms ---------------------------------------------------------------------------------------------------
class _FormTooLarge(UsageError):
    pass


async def _body(request: Request, limit: int = FORM_MAX_BYTES) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _FormTooLarge(f"the form is {declared} bytes (limit {limit})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _FormTooLarge(f"the form is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of a urlencoded or multipart form (a file field as its text, UTF-8); the first value of each."""
    if content_type.startswith("multipart/form-data"):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"MIME-Version: 1.0\r\nContent-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
        fields: dict[str, str] = {}
        if message.is_multipart():
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True)
                if isinstance(name, str) and isinstance(payload, bytes):
                    fields.setdefault(name, payload.decode("utf-8", errors="replace"))
        return fields
    out: dict[str, str] = {}
    for key, value in parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True):
        out.setdefault(key, value)
    return out


def _cross_site(request: Request) -> bool:
    """A POST whose Origin (when the browser sends one) is not this host: refused."""
    origin = request.headers.get("origin")
    return origin is not None and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", "")


# --- login -----------------------------------------------------------------------------------------------------
@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/experiments", status_code=302)


@router.get("/login")
def login_form(request: Request, next: str = "/experiments") -> HTMLResponse:
    return _render(request, "login.html", None, page="login", next=_safe_next(next), error="")


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the token (Tokens.authenticate) and set it as the cookie; the form again, 401, when it is not valid."""
    try:
        form = parse_form(request.headers.get("content-type", ""), await _body(request, 16 * 1024))
    except _FormTooLarge as exc:
        return _render(request, "login.html", None, 413, page="login", next="/experiments", error=str(exc))
    token, target = form.get("token", "").strip(), _safe_next(form.get("next", "/experiments"))
    try:
        who = await run_in_threadpool(_ctx(request).tokens().authenticate, token) if token else None
    except HaorchError as exc:
        return _render(request, "login.html", None, 503, page="login", next=target,
                       error=f"cannot check the token now: {exc}")
    if who is None:
        return _render(request, "login.html", None, 401, page="login", next=target,
                       error="That token is not valid (unknown, malformed or revoked).")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, token, path="/", httponly=True, samesite="strict", secure=_https(request))
    return _flash(response, request, "ok", f"Logged in as {who.name} ({who.role}).")


@router.api_route("/logout", methods=["GET", "POST"])
def logout(request: Request) -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=_https(request))
    return response


# --- experiments ---------------------------------------------------------------------------------------------
@router.get("/experiments")
def experiments_page(request: Request) -> Response:
    """One page query (Experiments.list) and one count query (Records.state_counts), whatever the table's size."""
    def build(who: Principal) -> HTMLResponse:
        filters = views.ListFilter.from_query(dict(request.query_params))
        exps = _ctx(request).experiments()
        rows: list[dict[str, Any]] = []
        next_cursor, error = None, ""
        try:
            checked = filters.checked()
            page = exps.list(checked["state"], PAGE_SIZE, checked["after"], type_=checked["type_"],
                             since=checked["since"], until=checked["until"], prefix=checked["prefix"])
            rows, next_cursor = [views.experiment_row(r) for r in page.rows], page.next
        except UsageError as exc:
            error = str(exc)
        counts = views.state_counts(exps.records.state_counts())
        return _render(request, "experiments.html", who, 400 if error else 200, page="experiments",
                       filters=filters, rows=rows, counts=counts, states=list(ExperimentState), error=error,
                       types=_type_names(request),
                       next_query=filters.query(after=next_cursor) if next_cursor else None,
                       first_query=filters.query(after=""))
    return _page(request, build)


def _type_names(request: Request) -> list[str]:
    """The registered types for the type box's suggestions; none when Neo4j does not answer (the page works)."""
    try:
        return [t["type"] for t in _ctx(request).experiments().dags.list_templates()]
    except HaorchError:
        return []


def _experiment_parts(request: Request, experiment_id: str) -> dict[str, Any]:
    """What the experiment page shows and its live endpoint refreshes."""
    exps = _ctx(request).experiments()
    status = exps.status(experiment_id)
    tasks = status.pop("tasks")
    return {"exp": status, "tasks": views.task_rows(tasks), "terminal": views.is_terminal(status["state"]),
            "graph": RENDERER.render(views.task_nodes(tasks), experiment_id),
            "ledger": views.ledger_entries(exps.records, experiment_id),
            "transitions": exps.records.transitions(experiment_id)}


@router.get("/experiments/{experiment_id}")
def experiment_page(request: Request, experiment_id: str) -> Response:
    def build(who: Principal) -> HTMLResponse:
        parts = _experiment_parts(request, experiment_id)
        return _render(request, "experiment.html", who, page="experiment",
                       actions=views.actions_for(parts["exp"]["state"], who), **parts)
    return _page(request, build, back="/experiments")


@router.get("/experiments/{experiment_id}/live")
def experiment_live(request: Request, experiment_id: str) -> Response:
    """The experiment's state and its page's changing parts as HTML fragments, by element id (console.js puts
    them in place); 401 without a token (the script stops and says so)."""
    who = _who(request)
    if who is None:
        return JSONResponse({"error": "not logged in"}, status_code=401)
    try:
        parts = _experiment_parts(request, experiment_id)
    except HaorchError as exc:
        return JSONResponse({"error": str(exc)}, status_code=404 if isinstance(exc, NotFoundError) else 503)
    module: Any = _env.get_template("_exp_parts.html").make_module()
    macros: Any = _env.get_template("_macros.html").make_module()
    exp = parts["exp"]
    fragments = {"exp-state-box": str(macros.state_badge(exp["state"], "exp-state")),
                 "exp-updated": str(macros.when(exp["updated_at"])),
                 "exp-finished": str(macros.when(exp["finished_at"])),
                 "graph": str(module.graph_box(parts["graph"])),
                 "task-rows": str(module.task_rows(parts["tasks"])),
                 "ledger-rows": str(module.ledger_rows(parts["ledger"])),
                 "transition-rows": str(module.transition_rows(parts["transitions"]))}
    response = JSONResponse({"state": exp["state"], "terminal": parts["terminal"], "fragments": fragments})
    response.headers["Cache-Control"] = "no-store"
    return response


async def _experiment_action(request: Request, experiment_id: str,
                             act: Callable[[AppContext, Principal, str], dict[str, Any]], verb: str) -> Response:
    back = f"/experiments/{quote(experiment_id, safe='')}"
    if _cross_site(request):
        return Response("cross-site form refused", status_code=403)
    who = await run_in_threadpool(_who, request)
    if who is None:
        return RedirectResponse("/login?" + urlencode({"next": back}), status_code=303)
    await _body(request, 16 * 1024)  # the form carries nothing: the id is in the path
    response = RedirectResponse(back, status_code=303)
    try:
        out = await run_in_threadpool(act, _ctx(request), who, experiment_id)
    except HaorchError as exc:
        return _flash(response, request, "error", f"{verb.capitalize()} failed: {exc}")
    if verb == "cancel":
        text = (f"Cancelled: {out['cancelled_tasks']} task(s) cancelled." if out["state"] == "CANCELLED"
                else f"Nothing to cancel: the experiment is {out['state']}.")
    else:
        text = (f"Retrying: {out['retried_tasks']} task(s) will run again." if out["retried_tasks"]
                else f"Nothing to retry: the experiment is {out['state']}.")
    return _flash(response, request, "ok", text)


@router.post("/experiments/{experiment_id}/cancel")
async def cancel(request: Request, experiment_id: str) -> Response:
    return await _experiment_action(request, experiment_id, actions.cancel, "cancel")


@router.post("/experiments/{experiment_id}/retry")
async def retry(request: Request, experiment_id: str) -> Response:
    return await _experiment_action(request, experiment_id, actions.retry, "retry")


# --- templates -----------------------------------------------------------------------------------------------
@router.get("/templates")
def templates_page(request: Request) -> Response:
    def build(who: Principal) -> HTMLResponse:
        rows = _ctx(request).experiments().dags.list_templates()
        return _render(request, "templates.html", who, page="templates", templates=rows,
                       can_register=who.may(Action.REGISTER), pasted="")
    return _page(request, build)


@router.get("/templates/{type_}")
def template_page(request: Request, type_: str) -> Response:
    def build(who: Principal) -> HTMLResponse:
        exps = _ctx(request).experiments()
        template, version = exps.dags.get_template(type_)
        return _render(request, "template.html", who, page="template", template=template, version=version,
                       graph=RENDERER.render(views.template_nodes(template), f"{type_} v{version}"),
                       versions=views.template_versions(exps.records, type_),
                       can_register=who.may(Action.REGISTER), pasted="")
    return _page(request, build, back="/templates")


@router.post("/templates")
async def register(request: Request) -> Response:
    """Register from the uploaded file, else the pasted text; to the type's page when it worked, the templates
    page with the text and the error otherwise."""
    if _cross_site(request):
        return Response("cross-site form refused", status_code=403)
    who = await run_in_threadpool(_who, request)
    if who is None:
        return RedirectResponse("/login?next=/templates", status_code=303)
    try:
        form = parse_form(request.headers.get("content-type", ""), await _body(request))
    except _FormTooLarge as exc:
        return _flash(RedirectResponse("/templates", status_code=303), request, "error", str(exc))
    text = form.get("file", "").strip() or form.get("text", "").strip()
    if not text:
        return _flash(RedirectResponse("/templates", status_code=303), request, "error",
                      "Choose a template file or paste one.")
    try:
        out = await run_in_threadpool(actions.register_template, _ctx(request), who, text)
    except HaorchError as exc:
        failed = exc

        def again(user: Principal) -> HTMLResponse:
            rows = _ctx(request).experiments().dags.list_templates()
            return _render(request, "templates.html", user, 403 if isinstance(failed, AccessDenied) else 400,
                           page="templates", templates=rows, can_register=user.may(Action.REGISTER), pasted=text,
                           notice={"kind": "error", "text": f"Not registered: {failed}"})
        try:
            return await run_in_threadpool(again, who)
        except HaorchError:
            return _error_page(request, who, failed, "/templates")
    verdict = "registered as version" if out["created"] else "unchanged, still version"
    return _flash(RedirectResponse(f"/templates/{quote(out['type'], safe='')}", status_code=303), request, "ok",
                  f"{out['type']}: {verdict} {out['version']} ({out['tasks']} tasks).")


# --- cluster and audit ---------------------------------------------------------------------------------------
@router.get("/cluster")
def cluster_page(request: Request) -> Response:
    def build(who: Principal) -> HTMLResponse:
        ctx = _ctx(request)
        records = ctx.records()
        terms = views.failover_history(records)
        numbers = probes.node_numbers(ctx.cfg, ctx.node_id, [t.node_id for t in terms])
        nodes = probes.probe_nodes(ctx.cfg, numbers, ctx.node_id)
        return _render(request, "cluster.html", who, page="cluster", nodes=nodes, leader=probes.leader_of(nodes),
                       fence=views.fence(records), terms=terms, phases=views.PHASES)
    return _page(request, build)


@router.get("/audit")
def audit_page(request: Request, before: int | None = None) -> Response:
    def build(who: Principal) -> HTMLResponse:
        require(who, Action.AUDIT)
        rows = _ctx(request).audit().recent(AUDIT_PAGE_SIZE + 1, before)
        more = len(rows) > AUDIT_PAGE_SIZE
        rows = rows[:AUDIT_PAGE_SIZE]
        return _render(request, "audit.html", who, page="audit", rows=rows, before=before,
                       next_before=rows[-1]["id"] if more else None)
    return _page(request, build)


@router.get("/console/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    data = resources.files("node.console").joinpath("static", name).read_bytes()
    return Response(data, media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})
