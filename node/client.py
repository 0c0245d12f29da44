"""A Python client of a node's HTTP API (``node/http/app.py``), raising what the local calls raise::

    with Client("http://127.0.0.1:17171", token=os.environ["HAORCH_TOKEN"]) as api:
        exp = api.submit("chain", params={"ms": "20"})["experiment_id"]
        api.wait([exp], timeout_s=60)

An error answer becomes the HaorchError of its status, with the server's one-line message: 400 UsageError, 401
NotAuthenticated, 403 AccessDenied, 404 NotFoundError, 409 ConflictError, 5xx (and a node that does not answer,
or answers something that is not JSON) ServiceError. Every call is one request, bounded by ``timeout_s``; none is
retried (submit is idempotent on an id the caller passes, so a caller may retry it with that id).
"""

from __future__ import annotations

import builtins
import ssl
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from node.errors import (
    AccessDenied,
    Busy,
    ConflictError,
    HaorchError,
    NotAuthenticated,
    NotFoundError,
    ServiceError,
    TimeoutExpired,
    UsageError,
)
from node.experiments import BUSY_RETRY_AFTER_S, Page
from node.model.states import TERMINAL_EXPERIMENT_STATES

POLL_S = 0.5  # wait(): between status requests
ERRORS: dict[int, type[HaorchError]] = {400: UsageError, 401: NotAuthenticated, 403: AccessDenied,
                                        404: NotFoundError, 409: ConflictError, 411: UsageError, 413: UsageError}


class Client:
    """One HTTP connection pool to the node at ``url``; close() (or ``with``) when done."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 10.0,
                 verify: bool | str = True) -> None:
        """``verify``: for an https URL, False or the path of the CA file that signed the node's certificate
        (default: the system's CAs)."""
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        checks = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s, verify=checks)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; the HaorchError of its status unless it succeeded."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"node at {self.url} did not answer {method} {path}: "
                               f"{type(exc).__name__}: {exc}".replace("\n", " ")) from None
        if response.is_success:
            return response
        try:
            message = str(response.json()["error"])
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {response.status_code}: {response.text[:200]}".replace("\n", " ")
        if response.status_code == 429:
            retry_after = response.headers.get("Retry-After", "")
            raise Busy(message, int(retry_after) if retry_after.isdigit() else BUSY_RETRY_AFTER_S)
        raise ERRORS.get(response.status_code, ServiceError)(message)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ServiceError(f"node at {self.url} answered {method} {path} with something that is not JSON") \
                from None

    # --- experiments -------------------------------------------------------------------------------------
    def submit(self, type_: str, experiment_id: str | None = None,
               params: dict[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": type_, "params": params or {}}
        if experiment_id is not None:
            body["experiment_id"] = experiment_id
        out: dict[str, Any] = self._json("POST", "/api/experiments", json=body)
        return out

    def submit_many(self, type_: str, ids: builtins.list[str], params: dict[str, str] | None = None) -> dict[str, Any]:
        """Up to SUBMIT_BATCH_MAX experiments of one type in one request: ``{"type", "submitted", "created"}``."""
        out: dict[str, Any] = self._json("POST", "/api/experiments/batch",
                                         json={"type": type_, "experiment_ids": ids, "params": params or {}})
        return out

    def status(self, experiment_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._json("GET", f"/api/experiments/{_segment(experiment_id)}")
        return out

    def transitions(self, experiment_id: str) -> builtins.list[dict[str, Any]]:
        out: builtins.list[dict[str, Any]] = self._json(
            "GET", f"/api/experiments/{_segment(experiment_id)}/transitions")
        return out

    def list(self, state: str | None = None, limit: int | None = None, after: str | None = None, *,
             type_: str | None = None, since: float | None = None, until: float | None = None,
             prefix: str | None = None) -> Page:
        """One page, as :meth:`node.experiments.Experiments.list`."""
        query = {"state": state, "limit": limit, "after": after, "type": type_, "since": since, "until": until,
                 "q": prefix}
        response = self.request("GET", "/api/experiments", params={k: v for k, v in query.items() if v is not None})
        return Page(response.json(), response.headers.get("X-Next-Cursor"))

    def iter_experiments(self, state: str | None = None, page_size: int | None = None, **filters: Any,
                         ) -> Iterator[dict[str, Any]]:
        """Every experiment that matches, page after page (one request per page)."""
        after = None
        while True:
            page = self.list(state, page_size, after, **filters)
            yield from page.rows
            if page.next is None:
                return
            after = page.next

    def cancel(self, experiment_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._json("POST", f"/api/experiments/{_segment(experiment_id)}/cancel")
        return out

    def retry(self, experiment_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._json("POST", f"/api/experiments/{_segment(experiment_id)}/retry")
        return out

    def wait(self, ids: builtins.list[str], timeout_s: float,
             poll_s: float = POLL_S) -> builtins.list[dict[str, Any]]:
        """Poll until every experiment is terminal: their rows (status without tasks), as
        :meth:`node.experiments.Experiments.wait`; TimeoutExpired names those that are not."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = []
            for experiment_id in ids:
                row = self.status(experiment_id)
                row.pop("tasks", None)
                rows.append(row)
            pending = [r["experiment_id"] for r in rows if r["state"] not in TERMINAL_EXPERIMENT_STATES]
            if not pending:
                return rows
            if time.monotonic() > deadline:
                raise TimeoutExpired(f"{len(pending)} of {len(ids)} experiment(s) not finished after {timeout_s:g} s: "
                                     f"{', '.join(pending[:5])}{' ...' if len(pending) > 5 else ''}")
            time.sleep(poll_s)

    # --- templates ---------------------------------------------------------------------------------------
    def templates(self) -> builtins.list[dict[str, Any]]:
        out: builtins.list[dict[str, Any]] = self._json("GET", "/api/templates")
        return out

    def template(self, type_: str, version: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self._json("GET", f"/api/templates/{_segment(type_)}",
                                         params={} if version is None else {"version": version})
        return out

    def register_template(self, text: str) -> dict[str, Any]:
        """Register a template from its file's text (YAML or JSON)."""
        out: dict[str, Any] = self._json("POST", "/api/templates", content=text.encode(),
                                         headers={"Content-Type": "application/yaml"})
        return out

    # --- access ------------------------------------------------------------------------------------------
    def audit(self, limit: int = 100, before: int | None = None,
              target: str | None = None) -> builtins.list[dict[str, Any]]:
        query = {"limit": limit, "before": before, "target": target}
        out: builtins.list[dict[str, Any]] = self._json(
            "GET", "/api/audit", params={k: v for k, v in query.items() if v is not None})
        return out

    def tokens(self, include_revoked: bool = False) -> builtins.list[dict[str, Any]]:
        out: builtins.list[dict[str, Any]] = self._json(
            "GET", "/api/tokens", params={"all": "true"} if include_revoked else {})
        return out

    def create_token(self, name: str, role: str) -> dict[str, Any]:
        out: dict[str, Any] = self._json("POST", "/api/tokens", json={"name": name, "role": role})
        return out

    def revoke_token(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self._json("DELETE", f"/api/tokens/{_segment(name)}")
        return out


def _segment(value: str) -> str:
    """``value`` as one path segment (an id with '?' or '%' must not change the route)."""
    return quote(value, safe="")
