"""Who makes an API request, and whether their role allows what they ask.

Every ``/api`` route needs a token (``node/access/tokens.py``): ``Authorization: Bearer TOKEN``, or the console's
cookie ``haorch_token`` (the console's own fetches; the header wins when both are sent). No token, or an unknown,
malformed or revoked one: 401 with ``WWW-Authenticate: Bearer``. A role too low: 403 naming the role needed.
``/metrics``, ``/healthz``, ``/readyz``, ``/openapi.json`` and ``/docs`` need none. Roles: ``node/access/roles.py``;
reading the audit log needs ``operator`` (``Action.AUDIT``): it names every token holder and what they did.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from node.access.roles import Action, Principal, refusal
from node.errors import AccessDenied, NotAuthenticated
from node.http.context import AppContext

COOKIE = "haorch_token"

bearer = HTTPBearer(auto_error=False, scheme_name="bearer", bearerFormat="haorch_...",
                    description="An API token (`haorch token create`); the console sends it as the cookie "
                                "haorch_token instead.")


def context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def principal(request: Request,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    """The token's principal; NotAuthenticated (401) without a valid one. A sync dependency: FastAPI runs it in
    its thread pool, where the token check may query MariaDB (its answer is cached, node/access/tokens.py)."""
    token = credentials.credentials if credentials is not None else request.cookies.get(COOKIE)
    if not token:
        raise NotAuthenticated("this API needs a token: send the header 'Authorization: Bearer TOKEN'")
    found = context(request).tokens().authenticate(token)
    if found is None:
        raise NotAuthenticated("the token is not valid (unknown, malformed or revoked)")
    return found


def require(who: Principal, action: Action) -> None:
    """AccessDenied (403) unless ``who``'s role allows ``action``: for reads, which are not audited (mutations go
    through ``node/http/actions.py``, which audits refusals too)."""
    problem = refusal(who, action)
    if problem:
        raise AccessDenied(problem)
