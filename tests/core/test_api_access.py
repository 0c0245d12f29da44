"""The HTTP API's access control on a real cluster (1 node, 2 workers): tokens and roles, the audit rows every
mutation writes (refusals too), the OpenAPI schema, and the error bodies (one line of JSON) of requests refused
before their body is read or the token is checked."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from core_harness import unique, wait_all

from node.access.audit import Audit
from node.access.tokens import Tokens
from node.client import Client
from node.config import Config
from node.errors import AccessDenied, NotAuthenticated
from node.stores.records import Records

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def tokens(cluster: Config) -> dict[str, dict[str, Any]]:
    """A token of each role: role -> the created row (with "token")."""
    records = Records(cluster)
    try:
        return {role: Tokens(records).create(role, unique(f"test-{role}"), "test")
                for role in ("viewer", "operator", "admin")}
    finally:
        records.close()


@pytest.fixture
def api(workers: Config, tokens: dict[str, dict[str, Any]]) -> Iterator[dict[str, httpx.Client]]:
    """An httpx client of node 1 per role, and one without a token ("none")."""
    clients = {role: httpx.Client(base_url=workers.node_url(1), timeout=10,
                                  headers={"Authorization": f"Bearer {row['token']}"}) for role, row in tokens.items()}
    clients["none"] = httpx.Client(base_url=workers.node_url(1), timeout=10)
    try:
        yield clients
    finally:
        for client in clients.values():
            client.close()


def _one_line_error(response: httpx.Response) -> str:
    assert "\n" not in response.text.strip(), response.text
    body = response.json()
    assert list(body) == ["error"], body
    return str(body["error"])


def _audit(cluster: Config, target: str) -> list[dict[str, Any]]:
    records = Records(cluster)
    try:
        return Audit(records).recent(100, target=target)
    finally:
        records.close()


def test_a_request_without_a_valid_token_is_refused_401(api: dict[str, httpx.Client]) -> None:
    for headers in ({}, {"Authorization": "Bearer haorch_" + "x" * 43}, {"Authorization": "Basic abc"}):
        response = api["none"].get("/api/experiments", headers=headers)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        assert "token" in _one_line_error(response)
    assert api["none"].get("/healthz").status_code in (200, 503)  # the probes and /metrics need none
    assert api["none"].get("/metrics").status_code == 200


def test_roles_are_enforced_and_every_attempt_is_audited(workers: Config, api: dict[str, httpx.Client],
                                                         tokens: dict[str, dict[str, Any]], slow_type: str) -> None:
    exp = unique("core-api-access")
    refused = api["viewer"].post("/api/experiments", json={"type": slow_type, "experiment_id": exp})
    assert refused.status_code == 403
    assert _one_line_error(refused) == f"submit needs role operator, {tokens['viewer']['name']!r} has viewer"
    assert api["viewer"].get(f"/api/experiments/{exp}").status_code == 404  # nothing was stored

    created = api["operator"].post("/api/experiments", json={"type": slow_type, "experiment_id": exp})
    assert created.status_code == 201 and created.json()["experiment_id"] == exp
    assert api["viewer"].get(f"/api/experiments/{exp}").json()["experiment_id"] == exp
    assert api["viewer"].post(f"/api/experiments/{exp}/cancel").status_code == 403
    cancelled = api["operator"].post(f"/api/experiments/{exp}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED", cancelled.text
    assert wait_all(workers, [exp], 30) == {exp: "CANCELLED"}
    transitions = api["viewer"].get(f"/api/experiments/{exp}/transitions")
    assert transitions.status_code == 200 and transitions.json()[0]["to_state"] == "QUEUED"
    assert api["viewer"].get("/api/experiments/core-no-such/transitions").status_code == 404

    rows = _audit(workers, exp)  # newest first
    seen = [(r["who"], r["role"], r["action"], r["outcome"]) for r in reversed(rows)]
    assert seen == [(tokens["viewer"]["name"], "viewer", "submit", "refused"),
                    (tokens["operator"]["name"], "operator", "submit", "ok"),
                    (tokens["viewer"]["name"], "viewer", "cancel", "refused"),
                    (tokens["operator"]["name"], "operator", "cancel", "ok")], rows
    assert {r["node_id"] for r in rows} == {"node-1"}
    assert "needs role operator" in rows[-1]["detail"]

    # reading the audit log: operators and admins
    assert api["viewer"].get("/api/audit").status_code == 403
    listed = api["operator"].get("/api/audit", params={"target": exp, "limit": 2})
    assert listed.status_code == 200 and [r["id"] for r in listed.json()] == [r["id"] for r in rows[:2]]


def test_a_batch_is_submitted_in_one_request_idempotently(workers: Config, api: dict[str, httpx.Client],
                                                          tokens: dict[str, dict[str, Any]]) -> None:
    ids = [unique("core-api-batch") for _ in range(20)]
    body = {"type": "chain", "experiment_ids": ids, "params": {"ms": "1"}}
    assert api["viewer"].post("/api/experiments/batch", json=body).status_code == 403
    created = api["operator"].post("/api/experiments/batch", json=body)
    assert created.status_code == 201 and created.json() == {"type": "chain", "submitted": 20, "created": ids}
    again = api["operator"].post("/api/experiments/batch", json=body)  # each id is submitted once
    assert again.status_code == 201 and again.json()["created"] == []
    assert set(wait_all(workers, ids, 60).values()) == {"COMPLETED"}
    for bad, problem in (({**body, "experiment_ids": []}, "1-1000 ids"),
                         ({**body, "experiment_ids": ids[:1] * 2}, "more than once"),
                         ({**body, "experiment_ids": [1, 2]}, "expected"),
                         ({**body, "experiment_ids": ["a/b"]}, "experiment id")):
        refused = api["operator"].post("/api/experiments/batch", json=bad)
        assert refused.status_code == 400 and problem in _one_line_error(refused), refused.text
    rows = _audit(workers, f"{ids[0]} .. {ids[-1]} (20)")
    assert [(r["action"], r["outcome"], r["detail"]) for r in reversed(rows)] == [
        ("submit", "refused", f"submit needs role operator, {tokens['viewer']['name']!r} has viewer"),
        ("submit", "ok", "type chain: 20 new of 20"), ("submit", "ok", "type chain: 0 new of 20")]


def test_retry_needs_an_operator_and_reports_a_finished_experiment_as_it_is(workers: Config,
                                                                          api: dict[str, httpx.Client]) -> None:
    exp = unique("core-api-retry")
    assert api["operator"].post("/api/experiments", json={"type": "chain", "experiment_id": exp}).status_code == 201
    assert wait_all(workers, [exp], 60) == {exp: "COMPLETED"}
    assert api["viewer"].post(f"/api/experiments/{exp}/retry").status_code == 403
    again = api["operator"].post(f"/api/experiments/{exp}/retry")
    assert again.status_code == 200 and again.json() == {"experiment_id": exp, "state": "COMPLETED",
                                                         "retried_tasks": 0}
    assert api["operator"].post("/api/experiments/core-no-such/retry").status_code == 404


def test_templates_are_registered_by_admins_only(workers: Config, api: dict[str, httpx.Client]) -> None:
    type_ = unique("apitype").replace("-", "_")
    text = yaml.safe_dump({"type": type_, "description": "from the API", "tasks": [
        {"name": "a", "kind": "data_staging"}, {"name": "b", "kind": "output_staging", "depends_on": ["a"]}]})
    headers = {"Content-Type": "application/yaml"}
    assert api["operator"].post("/api/templates", content=text, headers=headers).status_code == 403
    first = api["admin"].post("/api/templates", content=text, headers=headers)
    assert first.status_code == 201, first.text
    assert first.json() == {"type": type_, "version": 1, "created": True, "tasks": 2}
    again = api["admin"].post("/api/templates", content=text, headers=headers)
    assert again.status_code == 200 and again.json()["created"] is False
    as_json = json.dumps({**yaml.safe_load(text), "description": "changed"})
    second = api["admin"].post("/api/templates", content=as_json, headers={"Content-Type": "application/json"})
    assert second.status_code == 201 and second.json()["version"] == 2
    shown = api["viewer"].get(f"/api/templates/{type_}", params={"version": 1})
    assert shown.status_code == 200 and shown.json()["description"] == "from the API"
    assert api["viewer"].get(f"/api/templates/{type_}").json()["version"] == 2
    assert type_ in [t["type"] for t in api["viewer"].get("/api/templates").json()]
    bad = api["admin"].post("/api/templates", content="type: [unclosed", headers=headers)
    assert bad.status_code == 400 and "not valid YAML" in _one_line_error(bad)
    outcomes = [(r["outcome"], r["action"]) for r in reversed(_audit(workers, f"template:{type_}"))]
    assert outcomes == [("refused", "register"), ("ok", "register"), ("ok", "register"), ("ok", "register")]


def test_tokens_are_managed_by_admins_and_a_revoked_token_stops_working(workers: Config,
                                                                        api: dict[str, httpx.Client]) -> None:
    name = unique("test-made")
    assert api["operator"].post("/api/tokens", json={"name": name, "role": "viewer"}).status_code == 403
    made = api["admin"].post("/api/tokens", json={"name": name, "role": "viewer"})
    assert made.status_code == 201 and made.json()["token"].startswith("haorch_")
    listed = api["admin"].get("/api/tokens").json()
    assert name in [t["name"] for t in listed] and not any("token" in t for t in listed)
    with Client(workers.node_url(1), token=made.json()["token"]) as viewer:
        assert isinstance(viewer.list(limit=1).rows, list)
        with pytest.raises(AccessDenied, match="needs role admin"):
            viewer.tokens()
        assert api["admin"].delete(f"/api/tokens/{name}").json()["already_revoked"] is False
        with pytest.raises(NotAuthenticated):  # at once: the node that revoked it is the node asked
            viewer.list(limit=1)
    assert api["admin"].delete(f"/api/tokens/{name}").json()["already_revoked"] is True
    assert api["admin"].post("/api/tokens", json={"name": name, "role": "viewer"}).status_code == 409
    assert api["admin"].delete("/api/tokens/test-no-such-token").status_code == 404
    actions = [(r["action"], r["outcome"]) for r in reversed(_audit(workers, f"token:{name}"))]
    assert actions == [("token.create", "refused"), ("token.create", "ok"), ("token.revoke", "ok"),
                       ("token.revoke", "ok"), ("token.create", "error")]


def test_the_console_cookie_authenticates_like_the_header(workers: Config, tokens: dict[str, dict[str, Any]]) -> None:
    with httpx.Client(base_url=workers.node_url(1), timeout=10,
                      cookies={"haorch_token": tokens["viewer"]["token"]}) as browser:
        assert browser.get("/api/experiments", params={"limit": 1}).status_code == 200
        assert browser.post("/api/experiments", json={"type": "chain"}).status_code == 403


def test_the_listing_filters(workers: Config, api: dict[str, httpx.Client]) -> None:
    prefix = unique("core-api-filter")
    t0 = time.time()
    ids = [f"{prefix}-{i}" for i in range(3)]
    for exp, type_ in zip(ids, ("chain", "chain", "diamond"), strict=True):
        assert api["operator"].post("/api/experiments", json={"type": type_, "experiment_id": exp}).status_code == 201
    wait_all(workers, ids, 60)

    def listed(**query: Any) -> list[str]:
        response = api["viewer"].get("/api/experiments", params=query)
        assert response.status_code == 200, response.text
        return [r["experiment_id"] for r in response.json()]

    assert listed(q=prefix) == ids
    assert listed(q=prefix, type="chain") == ids[:2]
    assert listed(q=prefix, type="diamond", state="completed") == ids[2:]
    assert listed(q=prefix, since=t0 - 1, until=time.time() + 1) == ids
    assert listed(q=prefix, until=t0 - 1) == []
    first = api["viewer"].get("/api/experiments", params={"q": prefix, "limit": 2})
    assert len(first.json()) == 2 and first.headers["X-Next-Cursor"]
    assert listed(q=prefix, after=first.headers["X-Next-Cursor"]) == ids[2:]
    assert listed(q=prefix + "_%") == []  # LIKE's wildcards are literal in a prefix
    bad = api["viewer"].get("/api/experiments", params={"limit": "abc"})
    assert bad.status_code == 400 and "limit" in _one_line_error(bad)


def test_openapi_lists_the_routes_and_the_bearer_scheme(api: dict[str, httpx.Client]) -> None:
    schema = api["none"].get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "haorch_...",
        "description": schema["components"]["securitySchemes"]["bearer"]["description"]}
    routes = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    assert {("POST", "/api/experiments"), ("POST", "/api/experiments/batch"), ("GET", "/api/experiments"),
            ("GET", "/api/experiments/{experiment_id}"),
            ("GET", "/api/experiments/{experiment_id}/transitions"),
            ("POST", "/api/experiments/{experiment_id}/cancel"), ("POST", "/api/experiments/{experiment_id}/retry"),
            ("GET", "/api/templates"), ("GET", "/api/templates/{template_type}"), ("POST", "/api/templates"),
            ("GET", "/api/audit"), ("GET", "/api/tokens"), ("POST", "/api/tokens"), ("DELETE", "/api/tokens/{name}"),
            ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")} <= routes
    assert schema["paths"]["/api/experiments"]["post"]["security"] == [{"bearer": []}]
    assert api["none"].get("/docs").status_code == 200


def _raw(cfg: Config, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(cfg.host, cfg.node_http_port(1), timeout=10)
    try:
        conn.putrequest(method, path)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_bodies_are_refused_from_their_headers_before_the_token_is_checked(workers: Config,
                                                                            api: dict[str, httpx.Client]) -> None:
    assert _raw(workers, "POST", "/api/experiments", {"Content-Length": str(10**9)})[0] == 413
    assert _raw(workers, "POST", "/api/experiments", {})[0] == 411
    assert _raw(workers, "POST", "/api/templates", {"Transfer-Encoding": "chunked"})[0] == 411
    malformed = api["operator"].post("/api/experiments", content=b"{not json",
                                     headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400 and _one_line_error(malformed) == "request body is not JSON"
    listed = api["operator"].post("/api/experiments", content=b"[1, 2]")
    assert listed.status_code == 400 and _one_line_error(listed) == "request body must be a JSON object"
    for method, path, code in (("GET", "/api/nope", 404), ("GET", "/nope", 404), ("PUT", "/api/experiments", 405)):
        response = api["operator"].request(method, path)
        assert response.status_code == code and _one_line_error(response)
