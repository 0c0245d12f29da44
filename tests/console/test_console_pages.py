"""The console's pages on the real stack: the node's app (node/http/app.py) served by uvicorn on node-1's port,
requests with real tokens over HTTP. Every page renders with a token and redirects to /login without one; the
login form sets the cookie; cancel, retry and template registration go through their forms and are audited; a
viewer sees the buttons disabled and is refused."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from node.access.tokens import Tokens
from node.config import Config
from node.console.routes import PAGE_SIZE, router
from node.experiments import Experiments
from node.http.server import NodeHTTPServer
from node.stores.mysql_schema import ensure_schema
from node.stores.records import Records

pytestmark = pytest.mark.stack

TERM_EPOCH = 990_000_001  # a leader_terms row of this test's own, far above any real epoch


@dataclass
class Console:
    url: str
    tokens: dict[str, str]  # role -> token
    names: dict[str, str]  # role -> token name
    experiment: str  # a QUEUED chain experiment (no leader runs: it stays QUEUED until cancelled)
    prefix: str  # ids of PAGE_SIZE + 7 experiments start with this

    def client(self, role: str | None = None) -> httpx.Client:
        cookies = {"haorch_token": self.tokens[role]} if role else {}
        return httpx.Client(base_url=self.url, cookies=cookies, follow_redirects=False, timeout=30.0)

    def get(self, role: str | None, path: str, **kw: Any) -> httpx.Response:
        with self.client(role) as client:
            return client.get(path, **kw)


@pytest.fixture(scope="module")
def console(stack: Config) -> Iterator[Console]:
    cfg = stack
    ensure_schema(cfg)
    records = Records(cfg, retry_for_s=10.0)
    tokens = Tokens(records)
    run = uuid.uuid4().hex[:6]
    names = {role: f"console-{role}-{run}" for role in ("viewer", "operator", "admin")}
    secrets = {role: tokens.create(role, name, "test")["token"] for role, name in names.items()}
    server = NodeHTTPServer(cfg, cfg.node_http_port(1), lambda: (True, {"node_id": "node-1", "alive": True,
                                                                         "dependencies": {"mariadb": True,
                                                                                          "neo4j": False}}),
                            lambda: (True, {"node_id": "node-1", "role": "leader", "epoch": 7,
                                            "session": "CONNECTED", "ready": True, "last_error": None}),
                            bind_host=cfg.member_host(1), node_id="node-1")
    app = server.server.config.app
    assert isinstance(app, FastAPI)
    if not any(getattr(r, "path", None) == "/experiments" for r in app.routes):  # until app.py mounts the console
        app.include_router(router)
    server.start()
    with Experiments(cfg) as exps:
        exps.install_builtins()
        experiment = exps.submit("chain", f"console-{run}", notify=False)["experiment_id"]
        prefix = f"cpage-{run}-"
        exps.submit_many("chain", [f"{prefix}{i:03d}" for i in range(PAGE_SIZE + 7)], notify=False)

    def term(cur: Any) -> None:
        cur.execute("REPLACE INTO leader_terms (epoch, node_id, elected_at, phases) VALUES (%s, %s, %s, %s)",
                    (TERM_EPOCH, "node-3", time.time(), json.dumps({"detect": 1.5, "elect": 0.25, "fence": 0.25,
                                                                     "rescan": 0.5, "redispatch": 0.25,
                                                                     "first_advance": 0.25, "total": 3.0})))
    records.transaction(term)
    try:
        yield Console(f"http://{cfg.member_host(1)}:{cfg.node_http_port(1)}", secrets, names, experiment, prefix)
    finally:
        server.stop()
        records.transaction(lambda cur: cur.execute("DELETE FROM leader_terms WHERE epoch = %s", (TERM_EPOCH,)))
        records.close()


def _count(html: str, test: str) -> int:
    return len(re.findall(rf'data-test="{test}"', html))


def test_pages_need_a_login(console: Console) -> None:
    for path in ("/experiments", f"/experiments/{console.experiment}", "/templates", "/templates/chain", "/cluster",
                 "/audit", "/experiments?state=RUNNING"):
        resp = console.get(None, path)
        assert resp.status_code == 302, path
        assert resp.headers["location"].startswith("/login?next="), path
    assert console.get(None, "/").headers["location"] == "/experiments"
    assert console.get(None, f"/experiments/{console.experiment}/live").status_code == 401
    with console.client() as client:
        client.cookies.set("haorch_token", "haorch_not-a-real-token")
        assert client.get("/experiments").status_code == 302
        refused = client.post(f"/experiments/{console.experiment}/cancel")
        assert refused.status_code == 303 and refused.headers["location"].startswith("/login")


def test_login_form_sets_the_cookie_and_logout_clears_it(console: Console) -> None:
    with console.client() as client:
        form = client.get("/login", params={"next": "/cluster"})
        assert form.status_code == 200 and 'id="token"' in form.text and 'value="/cluster"' in form.text
        bad = client.post("/login", data={"token": "haorch_nope", "next": "/cluster"})
        assert bad.status_code == 401 and _count(bad.text, "login-error") == 1
        good = client.post("/login", data={"token": console.tokens["operator"], "next": "/cluster"})
        assert good.status_code == 303 and good.headers["location"] == "/cluster"
        cookie = next(h for h in good.headers.get_list("set-cookie") if h.startswith("haorch_token="))
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= attributes and "secure" not in attributes
        page = client.get("/cluster")
        assert page.status_code == 200
        assert f'data-test="user">{console.names["operator"]}<' in page.text
        assert 'data-test="user-role">operator<' in page.text
        assert _count(page.text, "flash") == 1  # "Logged in as ...", shown once
        assert _count(client.get("/cluster").text, "flash") == 0
        out = client.post("/logout")
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert client.get("/experiments").status_code == 302
        evil = client.post("/login", data={"token": console.tokens["viewer"], "next": "//evil.example/x"})
        assert evil.headers["location"] == "/experiments"


def test_experiments_page_filters_and_pages(console: Console) -> None:
    page = console.get("viewer", "/experiments")
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert not re.search(r'(src|href|action)="(https?:)?//', page.text), "pages load nothing from elsewhere"
    assert _count(page.text, "count-state") == 5 and _count(page.text, "count-total") == 1
    first = console.get("viewer", "/experiments", params={"q": console.prefix})
    assert _count(first.text, "exp-row") == PAGE_SIZE
    link = re.search(r'id="next-page" rel="next" href="([^"]+)"|href="([^"]+)" id="next-page"', first.text)
    assert link is not None
    second = console.get("viewer", (link.group(1) or link.group(2)).replace("&amp;", "&"))
    ids = re.findall(r'data-test="exp-row" data-id="([^"]+)"', second.text)
    assert ids == [f"{console.prefix}{i:03d}" for i in range(PAGE_SIZE, PAGE_SIZE + 7)]
    assert 'id="next-page"' not in second.text and 'id="first-page"' in second.text
    one = console.get("viewer", "/experiments", params={"q": console.experiment, "type": "chain",
                                                         "state": "QUEUED", "since": "2000-01-01"})
    assert re.findall(r'data-test="exp-row" data-id="([^"]+)"', one.text) == [console.experiment]
    none = console.get("viewer", "/experiments", params={"q": console.experiment, "until": "2000-01-01"})
    assert _count(none.text, "exp-row") == 0 and _count(none.text, "no-rows") == 1
    bad = console.get("viewer", "/experiments", params={"since": "last tuesday"})
    assert bad.status_code == 400 and _count(bad.text, "filter-error") == 1


def test_experiment_page_and_live_fragments(console: Console) -> None:
    page = console.get("viewer", f"/experiments/{console.experiment}")
    assert page.status_code == 200
    assert 'data-test="exp-state">QUEUED<' in page.text
    assert _count(page.text, "task-row") == 4  # chain: stage_in, submit_job, monitor, stage_out
    assert len(re.findall(r'class="node state&#45;PENDING"', page.text)) == 4
    assert 'data-terminal="false"' in page.text and "/console/static/console.js" in page.text
    assert re.search(r'id="cancel-btn"[^>]*disabled', page.text) and _count(page.text, "role-note") == 1
    assert 'id="retry-btn"' not in page.text
    assert _count(page.text, "transition-row") >= 1  # the submit's QUEUED row
    live = console.get("viewer", f"/experiments/{console.experiment}/live")
    assert live.status_code == 200
    data = live.json()
    assert data["state"] == "QUEUED" and data["terminal"] is False
    assert set(data["fragments"]) >= {"exp-state-box", "task-rows", "graph", "ledger-rows", "transition-rows"}
    assert data["fragments"]["task-rows"].count('data-test="task-row"') == 4
    assert console.get("viewer", "/experiments/no-such-experiment").status_code == 404
    assert console.get("viewer", "/experiments/no-such-experiment/live").status_code == 404


def test_cancel_and_retry_through_the_forms(console: Console) -> None:
    with console.client("viewer") as viewer:
        refused = viewer.post(f"/experiments/{console.experiment}/cancel")
        assert refused.status_code == 303
        assert "needs role operator" in viewer.get(refused.headers["location"]).text
    with console.client("operator") as client:
        done = client.post(f"/experiments/{console.experiment}/cancel")
        assert done.status_code == 303 and done.headers["location"] == f"/experiments/{console.experiment}"
        page = client.get(done.headers["location"])
        assert 'data-test="flash">Cancelled: 4 task(s) cancelled.<' in page.text
        assert 'data-test="exp-state">CANCELLED<' in page.text and 'data-terminal="true"' in page.text
        assert 'id="cancel-btn"' not in page.text and re.search(r'id="retry-btn"(?![^>]*disabled)', page.text)
        retried = client.post(f"/experiments/{console.experiment}/retry")
        assert "Retrying: 4 task(s) will run again." in client.get(retried.headers["location"]).text
        cross = client.post(f"/experiments/{console.experiment}/cancel", headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403
        audit = client.get("/audit")
        assert audit.status_code == 200
    rows = re.findall(r'data-test="audit-row" data-outcome="(\w+)">\s*<td>\d+</td><td>.*?</td><td>([^<]+)</td>'
                      r'<td>\w+</td><td data-test="audit-action">(\w+)</td>', audit.text, re.S)
    mine = [(outcome, action) for outcome, who, action in rows if who in console.names.values()]
    assert mine[:3] == [("ok", "retry"), ("ok", "cancel"), ("refused", "cancel")]


def test_audit_needs_operator(console: Console) -> None:
    page = console.get("viewer", "/audit")
    assert page.status_code == 403 and "needs role operator" in page.text
    assert 'id="nav-audit"' not in console.get("viewer", "/templates").text
    assert 'id="nav-audit"' in console.get("operator", "/templates").text


def test_templates_pages_and_registration(console: Console) -> None:
    listing = console.get("viewer", "/templates")
    assert listing.status_code == 200 and 'data-type="chain"' in listing.text
    assert _count(listing.text, "register-note") == 1 and 'id="register-form"' not in listing.text
    one = console.get("viewer", "/templates/chain")
    assert one.status_code == 200 and _count(one.text, "version-row") >= 1
    assert len(re.findall(r'class="node template&#45;task"', one.text)) == 4
    assert console.get("viewer", "/templates/no_such_type").status_code == 404
    type_ = f"console_{uuid.uuid4().hex[:8]}"
    text = (f"type: {type_}\ndescription: from the console test\ntasks:\n  - name: first\n    kind: k\n"
            "  - name: second\n    kind: k\n    depends_on: [first]\n  - name: third\n    kind: k\n"
            "    depends_on: [first]\n")
    with console.client("operator") as operator:
        refused = operator.post("/templates", files={"text": (None, text)})
        assert refused.status_code == 403 and "Not registered" in refused.text
    with console.client("admin") as admin:
        assert 'id="register-form"' in admin.get("/templates").text
        done = admin.post("/templates", files={"file": ("t.yaml", text.encode(), "application/x-yaml"),
                                               "text": (None, "")})
        assert done.status_code == 303 and done.headers["location"] == f"/templates/{type_}"
        page = admin.get(done.headers["location"])
        assert f"{type_}: registered as version 1 (3 tasks)." in page.text
        assert len(re.findall(r'class="node template&#45;task"', page.text)) == 3
        again = admin.post("/templates", data={"text": text})
        assert "unchanged, still version 1" in admin.get(again.headers["location"]).text
        broken = admin.post("/templates", data={"text": "type: x\ntasks: [\n"})
        assert broken.status_code == 400 and "not valid YAML" in broken.text and "tasks: [" in broken.text


def test_cluster_page(console: Console) -> None:
    page = console.get("viewer", "/cluster")
    assert page.status_code == 200
    row = re.search(r'<tr data-test="node-row" data-node="node-1" data-role="(\w+)" class="serving">', page.text)
    assert row is not None and row.group(1) == "leader"  # its own /readyz, fetched over HTTP
    assert 'data-test="leader-epoch">7<' in page.text
    assert "mariadb up" in page.text and "neo4j down" in page.text
    term = re.search(rf'<tr data-test="term-row" data-epoch="{TERM_EPOCH}">(.*?)</tr>', page.text, re.S)
    assert term is not None
    bars = dict(re.findall(r'class="bar phase-(\w+)" style="width: ([\d.]+)%"', term.group(1)))
    # widths are shares of the slowest takeover shown (other tests' terms may be slower): compare within the row
    assert list(bars)[:2] == ["detect", "elect"]
    assert float(bars["detect"]) / float(bars["elect"]) == pytest.approx(1.5 / 0.25, rel=0.01)


def test_static_files(console: Console) -> None:
    js = console.get(None, "/console/static/console.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert console.get(None, "/console/static/console.css").headers["content-type"].startswith("text/css")
    assert console.get(None, "/console/static/routes.py").status_code == 404
