"""Submits on a real cluster (issue 12): one that died between its MariaDB and Neo4j writes is completed (or failed
with its reason) by the leader, one a store failure interrupts names the id to retry with, oversized and
undeclared params are refused, a row stored cut short by an older version does not break listing, and the
listing is paged."""

from __future__ import annotations

import dataclasses
import functools
import http.client
import json
from typing import Any

import pymysql
import pytest
from core_harness import cli, cli_json, cypher, dag_tasks, query, transitions, unique, wait_all

from node.access.tokens import Tokens
from node.config import Config
from node.errors import IncompleteSubmit
from node.experiments import Experiments, encode_cursor
from node.model.api_limits import LIST_MAX_LIMIT, REQUEST_BODY_MAX_BYTES
from node.model.messages import StaticRequest
from node.stores.connect import mysql_connect_args
from node.stores.records import Records

pytestmark = pytest.mark.stack

LONG_AGO_S = 3600.0  # older than submit_grace_s: the submit that wrote the row is long dead


@functools.cache
def _token(cfg: Config) -> str:
    """An operator's API token for this module's requests."""
    return Tokens(Records(cfg)).create("operator", unique("test-core-limits"), "test")["token"]


def _request(cfg: Config, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    """One raw HTTP request to node 1 (http.client, so that Content-Length can be anything), with a token; the
    answer's headers by lower-case name."""
    conn = http.client.HTTPConnection(cfg.host, cfg.node_http_port(1), timeout=10)
    try:
        conn.putrequest(method, path)
        for name, value in {"Authorization": f"Bearer {_token(cfg)}", **(headers or {})}.items():
            conn.putheader(name, value)
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def _post(cfg: Config, payload: dict[str, Any]) -> tuple[int, Any]:
    body = json.dumps(payload).encode()
    code, out, _ = _request(cfg, "POST", "/api/experiments", body, {"Content-Length": str(len(body))})
    return code, out


def _crashed_submit(cfg: Config, experiment_id: str, version: int | None = None, params: str = "{}",
                    age_s: float = LONG_AGO_S) -> None:
    """What a submitter that died after its MariaDB write leaves: the row and its QUEUED transition, no DAG
    (``params`` replaces the stored params as an older version could have stored them)."""
    with Experiments(cfg) as exps:
        exps.install_builtins()
        _, latest = exps.dags.get_template("chain")
        exps.records.insert_experiment(experiment_id, "chain", latest if version is None else version, {})
    _write(cfg, "UPDATE experiments SET params = %s WHERE experiment_id = %s", (params, experiment_id))
    _age(cfg, experiment_id, age_s)


def _age(cfg: Config, experiment_id: str, age_s: float) -> None:
    _write(cfg, "UPDATE experiments SET created_at = created_at - %s WHERE experiment_id = %s", (age_s, experiment_id))


def _write(cfg: Config, statement: str, args: tuple) -> None:
    conn = pymysql.connect(**mysql_connect_args(cfg))
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
        conn.commit()
    finally:
        conn.close()


def _graph_state(cfg: Config, experiment_id: str) -> str | None:
    rows = cypher(cfg, "MATCH (e:Experiment {experiment_id: $id}) RETURN e.state AS s", id=experiment_id)
    return rows[0]["s"] if rows else None


def test_a_submit_that_died_between_its_writes_is_completed_by_the_leader(workers: Config) -> None:
    cfg = workers
    exp = unique("core-halfsubmit")
    _crashed_submit(cfg, exp, params='{"ms": "7"}')
    assert _graph_state(cfg, exp) is None
    assert wait_all(cfg, [exp], 60) == {exp: "COMPLETED"}
    assert _graph_state(cfg, exp) == "COMPLETED"
    blob = cypher(cfg, "MATCH (t:Task {key: $key}) RETURN t.request AS r", key=f"{exp}/stage_in")[0]["r"]
    assert StaticRequest.decode(bytes(blob)).params == {"ms": "7"}, "the DAG was not built from the recorded params"
    assert {t["status"] for t in dag_tasks(cfg, exp).values()} == {"SUCCEEDED"}
    assert [r["to_state"] for r in transitions(cfg, exp) if r["task"] is None] == ["QUEUED", "RUNNING", "COMPLETED"]


def test_a_half_submit_that_cannot_be_completed_is_failed_with_the_reason(workers: Config) -> None:
    cfg = workers
    gone, cut = unique("core-halfsubmit-gone"), unique("core-halfsubmit-cut")
    _crashed_submit(cfg, gone, version=9999)  # its template version does not exist
    _crashed_submit(cfg, cut, params='{"ms": "' + "x" * 100)  # params cut short, as INSERT IGNORE stored them
    assert wait_all(cfg, [gone, cut], 60) == {gone: "FAILED", cut: "FAILED"}
    assert _graph_state(cfg, gone) == _graph_state(cfg, cut) == "FAILED", "the stores disagree"
    (row,) = [r for r in transitions(cfg, gone) if r["to_state"] == "FAILED"]
    assert "cannot be completed" in row["detail"] and "version 9999" in row["detail"]
    (row,) = [r for r in transitions(cfg, cut) if r["to_state"] == "FAILED"]
    assert "not valid JSON" in row["detail"]


def test_a_row_whose_params_cannot_be_decoded_does_not_break_listing(workers: Config) -> None:
    cfg = workers
    exp = unique("core-cutrow")
    _crashed_submit(cfg, exp, params='{"big": "' + "x" * 65_000, age_s=0.0)  # recent: the leader leaves it be
    (row,) = query(cfg, "SELECT created_at FROM experiments WHERE experiment_id = %s", (exp,))
    from_it = encode_cursor(row["created_at"], "")  # the page starting at this row (ids > '' at its time)
    code, rows, _ = _request(cfg, "GET", f"/api/experiments?after={from_it}")
    assert code == 200, rows
    (mine,) = [r for r in rows if r["experiment_id"] == exp]
    assert mine["params"] is None and "not valid JSON" in mine["params_error"]
    code, status, _ = _request(cfg, "GET", f"/api/experiments/{exp}")
    assert code == 200 and status["params"] is None and status["params_error"]
    listed = cli_json(cfg, "list", "--after", from_it)
    assert exp in [r["experiment_id"] for r in listed["experiments"]]
    _age(cfg, exp, LONG_AGO_S)
    assert wait_all(cfg, [exp], 60) == {exp: "FAILED"}  # by the leader: no QUEUED row left for the verifier


def test_oversized_and_undeclared_submits_are_refused_and_store_nothing(workers: Config) -> None:
    cfg = workers
    exp = unique("core-big")
    big = json.dumps({"type": "chain", "experiment_id": exp, "params": {"ms": "x" * 70_000}}).encode()
    code, out, _ = _request(cfg, "POST", "/api/experiments", big, {"Content-Length": str(len(big))})
    assert code == 413 and str(REQUEST_BODY_MAX_BYTES) in out["error"], out
    # refused from the header alone: a body announced too large is not waited for
    code, out, _ = _request(cfg, "POST", "/api/experiments", None, {"Content-Length": str(10**9)})
    assert code == 413 and "1000000000 bytes" in out["error"]
    code, out, _ = _request(cfg, "POST", "/api/experiments", None, {"Content-Length": "12abc"})
    assert code == 400 and "Content-Length" in out["error"]
    code, out, _ = _request(cfg, "POST", "/api/experiments", None, {})
    assert code == 411 and "Content-Length" in out["error"]
    code, out = _post(cfg, {"type": "chain", "experiment_id": exp, "params": {"ms": "x" * 20_000}})
    assert code == 400 and "param 'ms' is 20000 characters (limit 4096)" in out["error"]
    code, out = _post(cfg, {"type": "chain", "experiment_id": exp, "params": {"cmd": "touch /tmp/owned"}})
    assert code == 400 and "'cmd'" in out["error"] and "overridable: ms" in out["error"]
    for param in ("cmd=touch /tmp/owned", "ms=" + "x" * 5000):
        done = cli(cfg, "submit", "chain", "--id", exp, "--param", param)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert query(cfg, "SELECT COUNT(*) AS n FROM experiments WHERE experiment_id = %s", (exp,)) == [{"n": 0}]
    code, rows, _ = _request(cfg, "GET", "/api/experiments?limit=5")
    assert code == 200 and isinstance(rows, list), "listing broke after refused submits"


def test_a_submit_interrupted_by_a_store_failure_names_the_id_and_a_retry_completes_it(workers: Config) -> None:
    cfg = workers
    exp = unique("core-interrupted")
    with Experiments(cfg) as exps:
        exps.install_builtins()
        down = dataclasses.replace(cfg, port_base=cfg.port_base + 250)  # MariaDB "down": its port is unused
        exps.records = Records(down, retry_for_s=0.5)
        with pytest.raises(IncompleteSubmit) as caught:
            exps.submit("chain", exp, {"ms": "3"})
    message = str(caught.value)
    assert exp in message and "safe to retry with the same id" in message and "\n" not in message
    assert cli_json(cfg, "submit", "chain", "--id", exp, "--param", "ms=3")["experiment_id"] == exp
    assert wait_all(cfg, [exp], 60) == {exp: "COMPLETED"}


def test_listing_is_paged_in_a_stable_order(workers: Config) -> None:
    cfg = workers
    ids = [unique("core-page") for _ in range(3)]
    for exp in ids:
        assert _post(cfg, {"type": "chain", "experiment_id": exp})[0] == 201
    every = [r["experiment_id"] for r in query(cfg, "SELECT experiment_id FROM experiments "
                                                    "ORDER BY created_at, experiment_id")]
    for limit, pages in ((2, 4), (LIST_MAX_LIMIT, len(every) // LIST_MAX_LIMIT + 1)):
        seen: list[str] = []
        after = ""
        for _ in range(pages):
            code, rows, headers = _request(cfg, "GET", f"/api/experiments?limit={limit}{after}")
            assert code == 200 and len(rows) <= limit
            seen += [r["experiment_id"] for r in rows]
            if "x-next-cursor" not in headers:
                break
            after = f"&after={headers['x-next-cursor']}"
        assert seen == every[:len(seen)] and len(seen) == min(len(every), limit * pages)
    code, out, _ = _request(cfg, "GET", f"/api/experiments?limit={LIST_MAX_LIMIT + 1}")
    assert code == 400 and str(LIST_MAX_LIMIT) in out["error"]
    code, out, _ = _request(cfg, "GET", "/api/experiments?after=garbage")
    assert code == 400 and "invalid cursor" in out["error"]
    first = cli_json(cfg, "list", "--limit", "1")
    assert len(first["experiments"]) == 1 and first["next"]
    second = cli_json(cfg, "list", "--limit", "1", "--after", first["next"])
    assert second["experiments"][0]["experiment_id"] == every[1]
    assert wait_all(cfg, ids, 60) == dict.fromkeys(ids, "COMPLETED")
