"""API tokens and the audit log on the real MariaDB: create, list, revoke, authenticate (with its cache), the audit
rows and their pages, and the ``haorch token`` / ``haorch audit`` commands as a user runs them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from node.access.audit import Audit
from node.access.roles import Principal, Role, local_principal
from node.access.tokens import TOKEN_PREFIX, Tokens, thread_records
from node.config import Config
from node.errors import ConflictError, NotFoundError, UsageError
from node.stores.connect import mysql_connect
from node.stores.mysql_schema import ensure_schema
from node.stores.records import Records

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def cfg(stack: Config) -> Config:
    ensure_schema(stack)  # idempotent: running it again on the stack's database must change nothing
    return stack


@pytest.fixture
def records(cfg: Config):
    records = Records(cfg, retry_for_s=10.0)
    yield records
    records.close()


def _name(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


def _row(cfg: Config, name: str) -> dict:
    conn = mysql_connect(cfg)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM api_tokens WHERE name = %s", (name,))
            columns = [d[0] for d in cur.description]
            found = cur.fetchone()
            return dict(zip(columns, found, strict=True)) if found else {}
    finally:
        conn.close()


def test_create_list_authenticate_revoke(records: Records) -> None:
    tokens = Tokens(records)
    name = _name("ci")
    created = tokens.create("operator", name, "local:tester")
    token = created["token"]
    assert token.startswith(TOKEN_PREFIX) and len(token) == len(TOKEN_PREFIX) + 43
    assert created["name"] == name and created["role"] == "operator" and created["prefix"] == token[:12]
    assert tokens.authenticate(token) == Principal(name, Role.OPERATOR)

    listed = {r["name"]: r for r in tokens.list()}
    assert set(listed[name]) == {"name", "role", "prefix", "created_at", "created_by", "revoked_at", "revoked_by",
                                 "last_used_at"}
    assert listed[name]["created_by"] == "local:tester" and listed[name]["last_used_at"] is not None

    revoked = tokens.revoke(name, "local:tester")
    assert revoked["already_revoked"] is False and revoked["revoked_by"] == "local:tester"
    assert tokens.authenticate(token) is None  # at once in the revoking process, cache or not
    assert name not in {r["name"] for r in tokens.list()}
    assert {r["name"]: r for r in tokens.list(include_revoked=True)}[name]["revoked_at"] == revoked["revoked_at"]

    again = tokens.revoke(name, "local:someone-else")
    assert again["already_revoked"] is True
    assert (again["revoked_at"], again["revoked_by"]) == (revoked["revoked_at"], "local:tester")
    with pytest.raises(NotFoundError, match="no token named"):
        tokens.revoke(_name("never"), "local:tester")


def test_only_the_hash_is_stored(cfg: Config, records: Records) -> None:
    name = _name("hash")
    token = Tokens(records).create(Role.VIEWER, name, "local:tester")["token"]
    row = _row(cfg, name)
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert row["prefix"] == token[:12]
    assert not any(isinstance(v, str) and token[12:20] in v for v in row.values()), row


def test_a_revocation_reaches_another_node_within_the_cache_time(cfg: Config, records: Records) -> None:
    other = Records(cfg, retry_for_s=10.0)
    try:
        here, there = Tokens(records, cache_s=0.5), Tokens(other, cache_s=0.5)
        name = _name("rev")
        token = here.create("admin", name, "local:tester")["token"]
        assert there.authenticate(token) == Principal(name, Role.ADMIN)
        here.revoke(name, "local:tester")
        assert there.authenticate(token) is not None  # still cached on the other node
        time.sleep(0.6)
        assert there.authenticate(token) is None

        unknown = TOKEN_PREFIX + "x" * 43  # negative answers are cached too
        assert there.authenticate(unknown) is None
        assert list(there._cache.values())[-1].principal is None
    finally:
        other.close()


def test_a_name_is_never_reused(records: Records) -> None:
    tokens = Tokens(records)
    name = _name("dup")
    tokens.create("viewer", name, "local:tester")
    with pytest.raises(ConflictError) as live:
        tokens.create("admin", name, "local:tester")
    assert str(live.value) == f"token name {name!r} is taken by a live token; names are never reused; pick another"
    tokens.revoke(name, "local:tester")
    with pytest.raises(ConflictError, match="taken by a revoked token; names are never reused"):
        tokens.create("viewer", name, "local:tester")
    assert [r["role"] for r in tokens.list(include_revoked=True) if r["name"] == name] == ["viewer"]


@pytest.mark.parametrize("name", ["", "x" * 65, "has space", "semi;colon", "new\nline", "é"])
def test_bad_names_are_refused(records: Records, name: str) -> None:
    with pytest.raises(UsageError, match="bad token name"):
        Tokens(records).create("viewer", name, "local:tester")


def test_an_unknown_role_is_refused(records: Records) -> None:
    with pytest.raises(UsageError, match="unknown role 'root': one of viewer, operator, admin"):
        Tokens(records).create("root", _name("role"), "local:tester")


@pytest.mark.parametrize("token", ["", "haorch_", "Bearer haorch_abc", "other_" + "a" * 43, "haorch_" + "a" * 194,
                                   "haorch_é" + "a" * 42, "haorch_a b", "haorch_a\nb"])
def test_malformed_tokens_cost_no_query(token: str) -> None:
    def no_records() -> Records:
        raise AssertionError("a malformed token was looked up")
    assert Tokens(no_records).authenticate(token) is None


def test_last_used_is_written_at_most_once_a_minute(cfg: Config, records: Records) -> None:
    tokens = Tokens(records, cache_s=0.0)  # every check reads MariaDB
    name = _name("touch")
    token = tokens.create("viewer", name, "local:tester")["token"]
    assert _row(cfg, name)["last_used_at"] is None
    tokens.authenticate(token)
    first = _row(cfg, name)["last_used_at"]
    assert first is not None
    for _ in range(3):
        assert tokens.authenticate(token) is not None
    assert _row(cfg, name)["last_used_at"] == first


def test_the_cache_is_bounded(records: Records) -> None:
    tokens = Tokens(records, cache_entries=3)
    unknown = [TOKEN_PREFIX + f"{i:043d}" for i in range(5)]
    for token in unknown:
        tokens.authenticate(token)
    assert len(tokens._cache) == 3
    assert list(tokens._cache) == [hashlib.sha256(t.encode()).hexdigest() for t in unknown[2:]]  # oldest went


def test_one_tokens_serves_many_threads(cfg: Config, records: Records) -> None:
    name = _name("threads")
    token = Tokens(records).create("operator", name, "local:tester")["token"]
    shared = Tokens(thread_records(cfg), cache_s=0.0)
    answers: list[Principal | None] = []
    failures: list[BaseException] = []

    def check() -> None:
        try:
            for _ in range(20):
                answers.append(shared.authenticate(token))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
    threads = [threading.Thread(target=check) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert answers == [Principal(name, Role.OPERATOR)] * 160


def test_audit_rows_page_newest_first(records: Records) -> None:
    audit = Audit(records)
    target = _name("exp")
    for i in range(5):
        audit.record("token:ci", "operator", "submit", target, "ok", f"n={i}", "node-1")
    audit.record("local:me", "admin", "cancel", _name("other"), "refused", None, "node-2")

    first = audit.recent(limit=2, target=target)
    assert [r["detail"] for r in first] == ["n=4", "n=3"]
    second = audit.recent(limit=2, before_id=first[-1]["id"], target=target)
    assert [r["detail"] for r in second] == ["n=2", "n=1"]
    third = audit.recent(limit=2, before_id=second[-1]["id"], target=target)
    assert [r["detail"] for r in third] == ["n=0"]
    row = first[0]
    assert set(row) == {"id", "at", "who", "role", "action", "target", "detail", "outcome", "node_id"}
    assert (row["who"], row["role"], row["action"], row["outcome"], row["node_id"]) == \
        ("token:ci", "operator", "submit", "ok", "node-1")
    latest = audit.recent(limit=1)[0]
    assert (latest["action"], latest["outcome"], latest["detail"]) == ("cancel", "refused", None)
    with pytest.raises(UsageError, match=r"limit must be 1\.\.1000"):
        audit.recent(limit=0)


def test_audit_values_are_cut_to_their_columns(records: Records) -> None:
    audit = Audit(records)
    target = _name("long") + "t" * 300
    audit.record("w" * 200, "r" * 20, "a" * 40, target, "error", "d" * 2000, "n" * 100)
    row = audit.recent(limit=1, target=target[:255])[0]
    assert [len(row[c]) for c in ("who", "role", "action", "target", "detail", "node_id")] == \
        [128, 16, 32, 255, 1024, 64]
    with pytest.raises(ValueError, match="audit outcome 'maybe'"):
        audit.record("w", "r", "a", "t", "maybe", None, "n")


def test_an_audit_row_that_cannot_be_written_is_logged(cfg: Config, caplog: pytest.LogCaptureFixture) -> None:
    nowhere = Records(dataclasses.replace(cfg, mariadb=f"{cfg.host}:1"), retry_for_s=0.0)
    with caplog.at_level(logging.WARNING, logger="node.access.audit"):
        Audit(nowhere).record("local:me", "admin", "token.revoke", "token:x", "ok", None, "cli")  # does not raise
    assert "audit: row not written" in caplog.text and "token:x" in caplog.text


# --- the CLI, as a user runs it ----------------------------------------------------------------------------------
def _haorch(cfg: Config, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HAORCH_HOME": str(cfg.home), "HAORCH_PORT_BASE": str(cfg.port_base)}
    return subprocess.run([sys.executable, "-m", "node.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_token_and_audit_commands(cfg: Config, records: Records) -> None:
    name = _name("cli")
    me = local_principal().name

    made = _haorch(cfg, "token", "create", "--role", "operator", "--name", name, "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert {"token", "name", "role", "prefix", "created_at"} <= set(created)
    assert Tokens(records).authenticate(created["token"]) == Principal(name, Role.OPERATOR)

    human = _haorch(cfg, "token", "create", "--role", "viewer", "--name", name + "-h")
    assert human.returncode == 0, human.stderr
    assert human.stdout.strip().startswith(TOKEN_PREFIX) and len(human.stdout.strip().splitlines()) == 1
    assert "cannot be shown again" in human.stderr

    taken = _haorch(cfg, "token", "create", "--role", "viewer", "--name", name)
    assert taken.returncode == 2
    assert taken.stderr.strip().splitlines() == [
        f"haorch: token name {name!r} is taken by a live token; names are never reused; pick another"]

    listed = _haorch(cfg, "token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows[name]["created_by"] == me and "token" not in rows[name] and "token_hash" not in rows[name]
    table = _haorch(cfg, "token", "list")
    assert table.stdout.splitlines()[0].split()[:3] == ["NAME", "ROLE", "PREFIX"] and name in table.stdout

    first = _haorch(cfg, "token", "revoke", name, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["already_revoked"] is False
    second = _haorch(cfg, "token", "revoke", name)
    assert second.returncode == 0 and "was already revoked" in second.stdout
    unknown = _haorch(cfg, "token", "revoke", name + "-nope")
    assert unknown.returncode == 2 and "no token named" in unknown.stderr
    assert name not in {r["name"] for r in json.loads(_haorch(cfg, "token", "list", "--json").stdout)}
    assert name in {r["name"] for r in json.loads(_haorch(cfg, "token", "list", "--all", "--json").stdout)}

    trail = _haorch(cfg, "audit", "--target", f"token:{name}", "--json")
    assert trail.returncode == 0, trail.stderr
    assert [(r["action"], r["outcome"], r["who"], r["role"]) for r in json.loads(trail.stdout)] == [
        ("token.revoke", "ok", me, "admin"), ("token.revoke", "ok", me, "admin"),
        ("token.create", "error", me, "admin"), ("token.create", "ok", me, "admin")]
    shown = _haorch(cfg, "audit", "--limit", "3")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0].split()[:4] == ["ID", "AT", "WHO", "ROLE"]
    assert len(shown.stdout.splitlines()) == 4
