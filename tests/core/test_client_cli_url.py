"""The CLI with ``--url`` (``$HAORCH_URL``) against a real node (1 node, 2 workers): the experiment commands go
through the HTTP API with ``$HAORCH_TOKEN`` and print what they print on the stores directly; without a token they
stop with one clear line."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from core_harness import cli_json, unique, wait_all

from node.access.tokens import Tokens
from node.config import Config
from node.paths import REPO_ROOT
from node.stores.records import Records

pytestmark = pytest.mark.stack


@functools.cache
def _token(cfg: Config, role: str) -> str:
    records = Records(cfg)
    try:
        return str(Tokens(records).create(role, unique(f"test-cli-{role}"), "test")["token"])
    finally:
        records.close()


def remote(cfg: Config, *args: str, token: str | None = None, by_env: bool = False) -> subprocess.CompletedProcess:
    """``haorch ARGS --url NODE-1`` (or with ``$HAORCH_URL``) in a subprocess whose home has no stack: only the API
    can answer."""
    env = {"HAORCH_HOME": str(cfg.home / "no-stack-here"), "PATH": "/usr/bin:/bin"}
    if token is not None:
        env["HAORCH_TOKEN"] = token
    argv = list(args)
    if by_env:
        env["HAORCH_URL"] = cfg.node_url(1)
    else:
        argv += ["--url", cfg.node_url(1)]
    return subprocess.run([sys.executable, "-m", "node.cli", *argv], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)


def remote_json(cfg: Config, *args: str, role: str = "operator") -> Any:
    done = remote(cfg, *args, "--json", token=_token(cfg, role))
    assert done.returncode == 0, f"haorch {' '.join(args)} --url: exit {done.returncode}: {done.stderr.strip()}"
    return json.loads(done.stdout)


def test_submit_status_list_wait_and_cancel_through_the_api(workers: Config, slow_type: str) -> None:
    cfg = workers
    exp = unique("core-cli-url")
    out = remote_json(cfg, "submit", "chain", "--id", exp, "--param", "ms=5")
    assert out == {"experiment_id": exp, "type": "chain", "version": out["version"], "created": True}
    waited = remote_json(cfg, "wait", exp, "--timeout", "60")
    assert waited == cli_json(cfg, "wait", exp)  # the same rows as on the stores
    assert remote_json(cfg, "status", exp, role="viewer") == cli_json(cfg, "status", exp)
    page = remote_json(cfg, "list", "--state", "completed", "--limit", "2", role="viewer")
    assert page == cli_json(cfg, "list", "--state", "completed", "--limit", "2")
    human = remote(cfg, "status", exp, token=_token(cfg, "viewer"), by_env=True)
    assert human.returncode == 0 and human.stdout.startswith(f"{exp}  type=chain") and "stage_out" in human.stdout

    slow = unique("core-cli-url-cancel")
    remote_json(cfg, "submit", slow_type, "--id", slow)
    cancelled = remote(cfg, "cancel", slow, token=_token(cfg, "operator"))
    assert cancelled.returncode == 0 and cancelled.stdout.startswith(f"{slow}: CANCELLED ("), cancelled.stderr
    assert wait_all(cfg, [slow], 30) == {slow: "CANCELLED"}
    again = remote_json(cfg, "cancel", slow)
    assert again == cli_json(cfg, "cancel", slow)  # a finished one is reported as it is, either way
    retried = remote_json(cfg, "retry", exp)
    assert retried == {"experiment_id": exp, "state": "COMPLETED", "retried_tasks": 0}


def test_templates_through_the_api(workers: Config, tmp_path: Path) -> None:
    cfg = workers
    assert remote_json(cfg, "template", "list", role="viewer") == cli_json(cfg, "template", "list")
    assert remote_json(cfg, "template", "show", "diamond", role="viewer") == cli_json(cfg, "template", "show",
                                                                                         "diamond")
    type_ = unique("clitype").replace("-", "_")
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"type": type_, "tasks": [{"name": "only", "kind": "data_staging"}]}))
    refused = remote(cfg, "template", "register", str(path), token=_token(cfg, "operator"))
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "register needs role admin" in refused.stderr
    out = remote_json(cfg, "template", "register", str(path), role="admin")
    assert out == {"type": type_, "version": 1, "created": True, "tasks": 1}


def test_errors_through_the_api_are_the_local_ones(workers: Config) -> None:
    cfg = workers
    missing = remote(cfg, "status", "core-cli-url-no-such", token=_token(cfg, "viewer"))
    local = subprocess.run([sys.executable, "-m", "node.cli", "status", "core-cli-url-no-such"], cwd=REPO_ROOT,
                           env={"HAORCH_HOME": str(cfg.home), "HAORCH_PORT_BASE": str(cfg.port_base),
                                "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120)
    assert (missing.returncode, missing.stderr) == (local.returncode, local.stderr) == (2, local.stderr)
    for token in (None, ""):
        done = remote(cfg, "list", token=token)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.strip() == f"haorch: --url {cfg.node_url(1)}: the API needs a token: set HAORCH_TOKEN " \
                                      "to an API token"
    bad = remote(cfg, "list", token="haorch_" + "x" * 43)
    assert bad.returncode == 2 and "token is not valid" in bad.stderr and bad.stderr.count("\n") == 1
    gone = subprocess.run([sys.executable, "-m", "node.cli", "list", "--url", "http://127.0.0.1:1"], cwd=REPO_ROOT,
                          env={"HAORCH_TOKEN": "haorch_x", "PATH": "/usr/bin:/bin",
                               "HAORCH_HOME": str(cfg.home / "no-stack-here")},
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and "did not answer" in gone.stderr and gone.stderr.count("\n") == 1
