"""The web console in a real browser (headless Chromium from Debian, driven by Playwright) against a real cluster of
two nodes and two workers on the session's stack (issue 15): refused without a token, each page opened, an
experiment followed to COMPLETED by the page's live updates, one cancelled and a failed one retried from their
pages, and a failover appearing in the history after the leader is killed — seen on the standby that serves the
page and takes over.

Screenshots of each page go to ``$HAORCH_SCREENSHOTS`` when it is set (``make screenshots`` sets docs/img), else
to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from playwright.sync_api import expect
from polling import wait_until

from node import cluster as cluster_ops
from node.access.tokens import Tokens
from node.config import Config, load_config
from node.experiments import Experiments
from node.stores.records import Records

pytestmark = pytest.mark.stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ENV = {"HAORCH_TASK_TIMEOUT_GRACE_S": "0.5", "HAORCH_SWEEP_INTERVAL_S": "0.2"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def two_nodes(stack: Config) -> Iterator[Config]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENV.items():
            mp.setenv(key, value)
        cfg = load_config(stack.home)
        cluster_ops.up(cfg, nodes=2, workers=2, wait_s=120.0)
        try:
            yield cfg
        finally:
            cluster_ops.down(cfg)


@pytest.fixture(scope="module")
def tokens(two_nodes: Config) -> Iterator[dict[str, str]]:
    records = Records(two_nodes)
    store = Tokens(records)
    made = {role: store.create(role, unique(f"browser-{role}"), "test")["token"]
            for role in ("viewer", "operator", "admin")}
    yield made
    records.close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: `make setup` installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("HAORCH_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def standby_url(cfg: Config) -> str:
    """The URL of a node that does not lead (it serves the console too, and takes over when the leader dies)."""
    rows = cluster_ops.status(cfg)
    standby = next(r for r in rows if r["role"] == "standby")
    return cfg.node_url(int(standby["node_id"].split("-")[1]))


def login(browser, base: str, token: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{base}/experiments")
    assert "/login" in page.url  # every page but /login needs a token
    page.fill("#token", token)
    page.click("#login-btn")
    page.wait_for_selector('[data-test="user-role"]')
    return page


def register(cfg: Config, tmp_path: Path, template: dict) -> None:
    path = tmp_path / f"{template['type']}.yaml"
    path.write_text(yaml.safe_dump(template, sort_keys=False))
    with Experiments(cfg) as exps:
        exps.register(path)


def state_of(page) -> str:
    return page.inner_text('[data-test="exp-state"]').strip()


def followed_to(page, state: str) -> None:
    """Wait until the page's live updates reach `state` and its one reload has rendered the final page.

    The script shows the terminal state, then reloads: reading the page between the two hits a destroyed context.
    The server-rendered terminal page has an empty live status (the script's last word was "Finished: ...")."""
    expect(page.locator('[data-test="exp-state"]')).to_contain_text(state, timeout=60_000)
    expect(page.locator('[data-test="live-status"]')).to_have_text("", timeout=30_000)
    expect(page.locator('[data-test="exp-state"]')).to_contain_text(state)


def test_without_a_token_nothing_is_shown_and_the_api_says_401(two_nodes: Config, browser) -> None:
    base = two_nodes.node_url(1)
    page = browser.new_page()
    for path in ("/experiments", "/templates", "/cluster", "/audit"):
        page.goto(base + path)
        assert "/login" in page.url, path
    page.fill("#token", "haorch_not-a-real-token")
    page.click("#login-btn")
    assert page.is_visible('[data-test="login-error"]')
    response = httpx.get(f"{base}/api/experiments", timeout=10)
    assert response.status_code == 401 and list(response.json()) == ["error"]
    assert httpx.get(f"{base}/metrics", timeout=10).status_code == 200  # stays open
    page.close()


def test_follow_cancel_and_retry_from_the_pages(two_nodes: Config, tokens: dict[str, str], browser,
                                                tmp_path: Path, shots: Path) -> None:
    cfg = two_nodes
    base = standby_url(cfg)
    flaky, slow = unique("flaky").replace("-", "_"), unique("slow").replace("-", "_")
    register(cfg, tmp_path, {"type": flaky, "description": "fails twice, then works (browser test)", "tasks": [
        {"name": "stage_in", "kind": "data_staging"},
        {"name": "simulate", "kind": "job_submission", "executor": "fail", "params": {"first_n": 2}, "retries": 2,
         "backoff_s": 0.1, "depends_on": ["stage_in"]},
        {"name": "analyse", "kind": "monitoring", "depends_on": ["simulate"]},
        {"name": "stage_out", "kind": "output_staging", "depends_on": ["analyse", "stage_in"]}]})
    register(cfg, tmp_path, {"type": slow, "tasks": [
        {"name": "wait", "kind": "job_submission", "executor": "sleep", "params": {"ms": 60000}, "timeout_s": 120},
        {"name": "after", "kind": "output_staging", "depends_on": ["wait"]}]})
    with Experiments(cfg) as exps:
        running = exps.submit("chain", unique("chain"), {"ms": "1500"})["experiment_id"]
        doomed = exps.submit(flaky, unique("flaky"))["experiment_id"]
        long = exps.submit(slow, unique("slow"))["experiment_id"]

    viewer = login(browser, base, tokens["viewer"])
    viewer.goto(f"{base}/experiments/{long}")
    assert viewer.is_disabled("#cancel-btn")  # a viewer reads only
    assert viewer.is_visible('[data-test="role-note"]')
    viewer.close()

    page = login(browser, base, tokens["operator"])
    # cancel from the page (while its first task sleeps)
    page.goto(f"{base}/experiments/{long}")
    page.click("#cancel-btn")
    page.wait_for_selector('[data-test="flash"]')
    assert state_of(page) == "CANCELLED"

    # followed to COMPLETED by the page's own live updates: no reload by the test
    page.goto(f"{base}/experiments/{running}")
    assert page.query_selector('[data-test="dag"] svg') is not None
    page.screenshot(path=str(shots / "console-experiment-running.png"), full_page=True)
    followed_to(page, "COMPLETED")
    assert len(page.query_selector_all('[data-test="task-row"]')) == 4
    assert len(page.query_selector_all('[data-test="ledger-row"]')) == 4

    # a failed one retried from its page, then followed to COMPLETED
    with Experiments(cfg) as exps:
        assert exps.wait([doomed], 60)[0]["state"] == "FAILED"
    page.goto(f"{base}/experiments/{doomed}")
    assert state_of(page) == "FAILED"
    assert "injected failure" in page.inner_text("#tasks-table")
    page.screenshot(path=str(shots / "console-experiment-failed.png"), full_page=True)
    page.click("#retry-btn")
    page.wait_for_selector('[data-test="flash"]')
    followed_to(page, "COMPLETED")
    attempts = {row.get_attribute("data-task"): row.query_selector('[data-test="task-attempt"]').inner_text().strip()
                for row in page.query_selector_all('[data-test="task-row"]')}
    # simulate: a new attempt (3) with its 2 attempts again (up to 4); stage_in succeeded before: not run again
    assert (attempts["simulate"], attempts["stage_in"]) == ("3 / 4", "1 / 1")
    assert "retry" in page.inner_text("#transitions-table")
    page.screenshot(path=str(shots / "console-experiment.png"), full_page=True)

    # the listing finds them; the audit shows who cancelled and retried
    page.goto(f"{base}/experiments?q={doomed}")
    assert [e.inner_text().strip() for e in page.query_selector_all('[data-test="exp-link"]')] == [doomed]
    page.goto(f"{base}/experiments")
    page.screenshot(path=str(shots / "console-experiments.png"), full_page=True)
    page.goto(f"{base}/audit")
    actions = " ".join(e.inner_text() for e in page.query_selector_all('[data-test="audit-action"]'))
    assert "cancel" in actions and "retry" in actions
    page.screenshot(path=str(shots / "console-audit.png"), full_page=True)
    page.goto(f"{base}/templates")
    page.screenshot(path=str(shots / "console-templates.png"), full_page=True)
    page.goto(f"{base}/templates/{flaky}")
    assert page.query_selector('[data-test="dag"] svg') is not None
    page.screenshot(path=str(shots / "console-template.png"), full_page=True)
    page.close()


def test_a_failover_appears_in_the_history(two_nodes: Config, tokens: dict[str, str], browser,
                                           shots: Path) -> None:
    cfg = two_nodes
    base = standby_url(cfg)  # the page stays up: the node serving it is the one that takes over
    page = login(browser, base, tokens["viewer"])
    page.goto(f"{base}/cluster")
    before = int(page.inner_text('[data-test="leader-epoch"]').strip())
    killed = cluster_ops.kill_leader(cfg, "KILL")
    try:
        cluster_ops.wait_for_leader(cfg, 60, newer_than=before)
        # the term row is written at election, its phases once the new leader first advances a DAG
        with Experiments(cfg) as exps:
            exps.submit("chain", unique("after-failover"))

        def newest_term() -> list[str]:
            page.goto(f"{base}/cluster")
            row = page.query_selector('[data-test="term-row"]')  # newest first
            if row is None or int(row.get_attribute("data-epoch") or 0) <= before:
                return []
            return [c.inner_text().strip() for c in row.query_selector_all("td")]

        wait_until(lambda: any(newest_term()[3:]), 60, "the takeover and its phases in the failover history")
        assert int(page.inner_text('[data-test="leader-epoch"]').strip()) > before
        assert page.query_selector('[data-test="term-row"] .bar') is not None  # a bar per phase
        dead = page.query_selector(f'[data-test="node-row"][data-node="{killed["node_id"]}"]')
        assert dead is not None and dead.get_attribute("data-role") == "unreachable"  # shown, as down
        page.screenshot(path=str(shots / "console-cluster.png"), full_page=True)
    finally:
        cluster_ops.up(cfg, nodes=2, workers=2, wait_s=120.0)  # the killed node back, for what follows
    page.close()
