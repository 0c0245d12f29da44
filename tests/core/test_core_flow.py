"""The orchestrator core on a real cluster: built-in types in dependency order, retries, failures, cancel,
idempotent submit and the HTTP API (issue 3)."""

from __future__ import annotations

import functools
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from core_harness import (
    assert_completed_in_order,
    cli,
    cli_json,
    cli_ok,
    cypher,
    dag_tasks,
    experiment_states,
    metric,
    query,
    queue_depth,
    register,
    submit,
    task_rows,
    transitions,
    unique,
    wait_all,
)
from polling import wait_until

from node.access.tokens import Tokens
from node.config import Config
from node.experiments import Experiments, encode_cursor
from node.stores.queues import REQUESTS, RESPONSES, SUBMISSIONS
from node.stores.records import Records

pytestmark = pytest.mark.stack


def test_every_builtin_type_completes_in_dependency_order(workers: Config) -> None:
    cfg = workers
    ids = {t: submit(cfg, t, unique(f"core-{t}")) for t in ("chain", "diamond", "fanout", "retry")}
    done = cli_json(cfg, "wait", *ids.values(), "--timeout", "120")
    assert {r["experiment_id"]: r["state"] for r in done} == {i: "COMPLETED" for i in ids.values()}
    with Experiments(cfg) as exps:  # rows in the order asked, a repeated id twice
        again = exps.wait([ids["retry"], ids["chain"], ids["retry"]], timeout_s=10)
    assert [(r["experiment_id"], r["state"]) for r in again] == [(ids["retry"], "COMPLETED"),
                                                                   (ids["chain"], "COMPLETED"),
                                                                   (ids["retry"], "COMPLETED")]
    rows = {t: assert_completed_in_order(cfg, i) for t, i in ids.items()}

    chain = rows["chain"]
    order = [r["task"] for r in chain if r["to_state"] == "SUCCEEDED"]
    assert order == ["stage_in", "submit_job", "monitor", "stage_out"]

    # fan-in: d and merge are dispatched once, in the batch after their LAST parent succeeded, never earlier
    for type_, join, parents in (("diamond", "d", ["b", "c"]), ("fanout", "merge", [f"work_{i}" for i in range(1, 9)])):
        r = rows[type_]
        (dispatch,) = task_rows(r, join, "DISPATCHED")
        last_parent = max((row for p in parents for row in task_rows(r, p, "SUCCEEDED")), key=lambda x: x["id"])
        assert dispatch["id"] > last_parent["id"]
        assert dispatch["at"] == last_parent["at"], "the fan-in is dispatched by the batch that flags its last parent"
    # the fanout's work tasks all go out together once split succeeded
    fan = rows["fanout"]
    (split_done,) = task_rows(fan, "split", "SUCCEEDED")
    work_dispatches = [r for r in fan if (r["task"] or "").startswith("work_") and r["to_state"] == "DISPATCHED"]
    assert len(work_dispatches) == 8 and {r["at"] for r in work_dispatches} == {split_done["at"]}


def test_retry_then_success(workers: Config) -> None:
    cfg = workers
    exp = submit(cfg, "retry", unique("core-retry"))
    assert wait_all(cfg, [exp], 90) == {exp: "COMPLETED"}
    rows = assert_completed_in_order(cfg, exp)
    flaky = [(r["to_state"], r["attempt"]) for r in task_rows(rows, "flaky")]
    assert flaky == [("DISPATCHED", 1), ("RETRY_WAIT", 1), ("DISPATCHED", 2), ("SUCCEEDED", 2)]
    assert "injected failure" in task_rows(rows, "flaky", "RETRY_WAIT")[0]["detail"]
    assert dag_tasks(cfg, exp)["flaky"]["attempt"] == 2
    # the ledger saw both executions of flaky, the first failed
    ledger = query(cfg, "SELECT attempt, outcome FROM ledger WHERE experiment_id = %s AND task = 'flaky' "
                        "ORDER BY attempt", (exp,))
    assert [(r["attempt"], r["outcome"]) for r in ledger] == [(1, "failure"), (2, "success")]


def test_retries_exhausted_fail_the_experiment_and_cancel_the_rest(workers: Config, tmp_path: Path) -> None:
    cfg = workers
    template = {"type": "core-doomed", "description": "fails for good", "tasks": [
        {"name": "prepare", "kind": "data_staging"},
        {"name": "doomed", "kind": "job_submission", "executor": "fail", "params": {"first_n": 5}, "retries": 2,
         "backoff_s": 0.1, "depends_on": ["prepare"]},
        {"name": "after", "kind": "output_staging", "depends_on": ["doomed"]},
        {"name": "report", "kind": "output_staging", "depends_on": ["after"]},
    ]}
    done = register(cfg, tmp_path, template)
    assert done.returncode == 0, done.stderr
    exp = submit(cfg, "core-doomed", unique("core-doomed"))
    waited = cli(cfg, "wait", exp, "--timeout", "90")
    assert waited.returncode == 1, "wait exits 1 when an experiment did not complete"
    assert experiment_states(cfg, [exp]) == {exp: "FAILED"}

    rows = transitions(cfg, exp)
    doomed = [(r["to_state"], r["attempt"]) for r in task_rows(rows, "doomed")]
    assert doomed == [("DISPATCHED", 1), ("RETRY_WAIT", 1), ("DISPATCHED", 2), ("FAILED", 2)]
    for name in ("after", "report"):
        assert [r["to_state"] for r in task_rows(rows, name)] == ["CANCELLED"], name
    assert [r["to_state"] for r in rows if r["task"] is None] == ["QUEUED", "RUNNING", "FAILED"]
    tasks = dag_tasks(cfg, exp)
    assert {n: t["status"] for n, t in tasks.items()} == {
        "prepare": "SUCCEEDED", "doomed": "FAILED", "after": "CANCELLED", "report": "CANCELLED"}
    assert cypher(cfg, "MATCH (e:Experiment {experiment_id: $id}) RETURN e.state AS s", id=exp) == [{"s": "FAILED"}]
    status = cli_json(cfg, "status", exp)
    assert status["state"] == "FAILED"
    assert "injected failure" in next(t for t in status["tasks"] if t["name"] == "doomed")["last_error"]


def test_a_failure_cancels_the_running_sibling_and_ignores_its_answer(workers: Config, tmp_path: Path) -> None:
    cfg = workers
    template = {"type": "core-branch-fail", "description": "one branch fails while the other runs", "tasks": [
        {"name": "root", "kind": "data_staging"},
        {"name": "bad", "kind": "job_submission", "executor": "fail", "depends_on": ["root"]},
        {"name": "good", "kind": "job_submission", "executor": "sleep", "params": {"ms": 3000},
         "depends_on": ["root"]},
        {"name": "join", "kind": "output_staging", "depends_on": ["bad", "good"]},
    ]}
    assert register(cfg, tmp_path, template).returncode == 0
    exp = submit(cfg, "core-branch-fail", unique("core-branch"))
    assert wait_all(cfg, [exp], 90) == {exp: "FAILED"}
    duplicates_before = metric(cfg, "haorch_duplicate_responses_total")
    finished_at = query(cfg, "SELECT finished_at FROM experiments WHERE experiment_id = %s", (exp,))[0]["finished_at"]
    assert {n: t["status"] for n, t in dag_tasks(cfg, exp).items()} == {
        "root": "SUCCEEDED", "bad": "FAILED", "good": "CANCELLED", "join": "CANCELLED"}
    # good was running when bad failed: its success comes later and must change nothing
    wait_until(lambda: query(cfg, "SELECT 1 FROM ledger WHERE experiment_id = %s AND task = 'good' "
                                "AND outcome = 'success'", (exp,)), 60, "the running sibling to end")
    wait_until(lambda: metric(cfg, "haorch_duplicate_responses_total") > duplicates_before, 30,
             "the leader to count the late response as ignored")
    rows = transitions(cfg, exp)
    assert [r["to_state"] for r in task_rows(rows, "good")] == ["DISPATCHED", "CANCELLED"]
    assert [r["to_state"] for r in task_rows(rows, "join")] == ["CANCELLED"]
    assert [r["to_state"] for r in rows if r["task"] is None] == ["QUEUED", "RUNNING", "FAILED"]
    assert dag_tasks(cfg, exp)["good"]["status"] == "CANCELLED"
    assert query(cfg, "SELECT state, finished_at FROM experiments WHERE experiment_id = %s", (exp,)) == [
        {"state": "FAILED", "finished_at": finished_at}]


def test_cancel_running_experiment_ignores_later_responses(workers: Config, tmp_path: Path) -> None:
    cfg = workers
    template = {"type": "core-slow", "description": "slow chain", "tasks": [
        {"name": "one", "kind": "job_submission", "executor": "sleep", "params": {"ms": 4000}},
        {"name": "two", "kind": "job_submission", "executor": "sleep", "params": {"ms": 4000}, "depends_on": ["one"]},
        {"name": "three", "kind": "output_staging", "depends_on": ["two"]},
    ]}
    assert register(cfg, tmp_path, template).returncode == 0
    exp = submit(cfg, "core-slow", unique("core-cancel"))
    wait_until(lambda: query(cfg, "SELECT 1 FROM ledger WHERE experiment_id = %s AND task = 'one'", (exp,)),
             60, "task one to start on a worker")
    duplicates_before = metric(cfg, "haorch_duplicate_responses_total")

    out = cli_json(cfg, "cancel", exp)
    assert out == {"experiment_id": exp, "state": "CANCELLED", "cancelled_tasks": 3, "undone_tasks": 0}
    assert experiment_states(cfg, [exp]) == {exp: "CANCELLED"}
    assert {n: t["status"] for n, t in dag_tasks(cfg, exp).items()} == {
        "one": "CANCELLED", "two": "CANCELLED", "three": "CANCELLED"}
    finished_at = query(cfg, "SELECT finished_at FROM experiments WHERE experiment_id = %s", (exp,))[0]["finished_at"]

    # the worker finishes "one" and answers; the leader must ignore that response
    wait_until(lambda: query(cfg, "SELECT 1 FROM ledger WHERE experiment_id = %s AND task = 'one' "
                                "AND outcome = 'success'", (exp,)), 60, "task one to end")
    wait_until(lambda: metric(cfg, "haorch_duplicate_responses_total") > duplicates_before, 30,
             "the leader to count the late response as ignored")
    rows = transitions(cfg, exp)
    assert not [r for r in rows if r["to_state"] in ("SUCCEEDED", "COMPLETED")], rows
    assert task_rows(rows, "two", "DISPATCHED") == []
    assert {n: t["status"] for n, t in dag_tasks(cfg, exp).items()} == {
        "one": "CANCELLED", "two": "CANCELLED", "three": "CANCELLED"}
    assert query(cfg, "SELECT state, finished_at FROM experiments WHERE experiment_id = %s", (exp,)) == [
        {"state": "CANCELLED", "finished_at": finished_at}]
    assert query(cfg, "SELECT COUNT(*) AS n FROM ledger WHERE experiment_id = %s AND task <> 'one'", (exp,)) == [
        {"n": 0}]
    # cancelling again is a no-op that reports the state
    assert cli_json(cfg, "cancel", exp)["cancelled_tasks"] == 0


def test_submit_is_idempotent_on_the_id(workers: Config) -> None:
    cfg = workers
    exp = unique("core-idem")
    first = cli_json(cfg, "submit", "diamond", "--id", exp)
    second = cli_json(cfg, "submit", "diamond", "--id", exp)
    assert first["experiment_id"] == second["experiment_id"] == exp
    assert first["created"] is True and second["created"] is False
    assert wait_all(cfg, [exp], 90) == {exp: "COMPLETED"}
    third = cli_json(cfg, "submit", "diamond", "--id", exp)
    assert third["created"] is False
    assert query(cfg, "SELECT COUNT(*) AS n FROM experiments WHERE experiment_id = %s", (exp,)) == [{"n": 1}]
    assert cypher(cfg, "MATCH (e:Experiment {experiment_id: $id}) RETURN count(e) AS n", id=exp) == [{"n": 1}]
    assert cypher(cfg, "MATCH (t:Task {experiment_id: $id}) RETURN count(t) AS n", id=exp) == [{"n": 4}]
    rows = assert_completed_in_order(cfg, exp)
    assert len([r for r in rows if r["to_state"] == "QUEUED"]) == 1
    # the same id with another type is a conflict (exit 2), and changes nothing
    other = cli(cfg, "submit", "chain", "--id", exp)
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1 and exp in other.stderr
    assert cypher(cfg, "MATCH (t:Task {experiment_id: $id}) RETURN count(t) AS n", id=exp) == [{"n": 4}]


@functools.cache
def _token(cfg: Config) -> str:
    """An operator's API token for this module's requests."""
    return Tokens(Records(cfg)).create("operator", unique("test-core-flow"), "test")["token"]


def _http(cfg: Config, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{cfg.node_http_port(1)}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {_token(cfg)}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_http_api_submit_status_and_404(workers: Config) -> None:
    cfg = workers
    exp = unique("core-http")
    code, out = _http(cfg, "POST", "/api/experiments", {"type": "fanout", "experiment_id": exp,
                                                          "params": {"ms": "5"}})
    assert code == 201, out
    assert out["experiment_id"] == exp and out["created"] is True
    assert wait_all(cfg, [exp], 90) == {exp: "COMPLETED"}
    assert_completed_in_order(cfg, exp)
    code, status = _http(cfg, "GET", f"/api/experiments/{exp}")
    assert code == 200
    assert status["state"] == "COMPLETED" and status["params"] == {"ms": "5"}
    assert sorted(t["name"] for t in status["tasks"]) == sorted(["split", "merge"] + [f"work_{i}" for i in range(1, 9)])
    assert {t["status"] for t in status["tasks"]} == {"SUCCEEDED"}
    code, again = _http(cfg, "POST", "/api/experiments", {"type": "fanout", "experiment_id": exp})
    assert code == 200 and again["created"] is False
    from_it = encode_cursor(status["created_at"], "")  # a listing is paged: the page that starts with it
    code, listed = _http(cfg, "GET", f"/api/experiments?state=completed&after={from_it}")
    assert code == 200 and exp in [r["experiment_id"] for r in listed]
    assert {r["state"] for r in listed} == {"COMPLETED"}
    code, err = _http(cfg, "GET", "/api/experiments?state=BOGUS")
    assert code == 400 and "BOGUS" in err["error"]
    code, err = _http(cfg, "GET", "/api/experiments/core-no-such-experiment")
    assert code == 404 and "core-no-such-experiment" in err["error"]
    code, err = _http(cfg, "POST", "/api/experiments", {"type": "no-such-type"})
    assert code == 400 and "no-such-type" in err["error"]


def test_http_submit_of_a_builtin_type_on_a_fresh_template_store(workers: Config) -> None:
    """The API must not depend on a CLI call having installed the built-in types first."""
    cfg = workers
    cypher(cfg, "MATCH (t:Template) OPTIONAL MATCH (t)-[:HAS]->(x) DETACH DELETE t, x")
    exp = unique("core-http-fresh")
    code, out = _http(cfg, "POST", "/api/experiments", {"type": "chain", "experiment_id": exp})
    assert code == 201, out
    assert wait_all(cfg, [exp], 90) == {exp: "COMPLETED"}
    cli_ok(cfg, "template", "list")  # reinstall the built-ins for whatever runs next


def test_concurrent_submits_of_one_id_all_succeed_and_make_one_experiment(workers: Config) -> None:
    """Idempotence must hold when the same id arrives twice at once (a client retrying over a slow link)."""
    cfg = workers
    exp = unique("core-race")
    n = 6
    start = threading.Barrier(n)
    results: list[object] = [None] * n

    def one(i: int) -> None:
        with Experiments(cfg) as exps:
            exps.dags.get_template("chain")  # connect first, so that the submits really overlap
            start.wait()
            try:
                results[i] = exps.submit("chain", exp)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    errors = [r for r in results if not isinstance(r, dict)]
    assert not errors, f"concurrent submits of one id failed: {errors}"
    assert sum(1 for r in results if r["created"]) >= 1  # type: ignore[index]
    assert wait_all(cfg, [exp], 90) == {exp: "COMPLETED"}
    assert cypher(cfg, "MATCH (e:Experiment {experiment_id: $id}) RETURN count(e) AS n", id=exp) == [{"n": 1}]
    assert cypher(cfg, "MATCH (t:Task {experiment_id: $id}) RETURN count(t) AS n", id=exp) == [{"n": 4}]
    assert_completed_in_order(cfg, exp)


def test_cancel_right_after_submit_leaves_both_stores_cancelled(workers: Config) -> None:
    """A cancel racing the leader's first dispatch: MariaDB and Neo4j must both end CANCELLED."""
    cfg = workers
    ids = [unique("core-cancel-race") for _ in range(30)]
    with Experiments(cfg) as exps:
        for exp in ids:
            exps.submit("fanout", exp)
            assert exps.cancel(exp)["state"] == "CANCELLED"
    wait_until(lambda: not query(cfg, "SELECT 1 FROM ledger WHERE ended_at IS NULL"), 60, "the workers to go idle")
    wait_until(lambda: all(queue_depth(cfg, q) == 0 for q in (REQUESTS, RESPONSES, SUBMISSIONS)), 30,
             "the queues to drain")
    time.sleep(0.5)  # the last batch the leader took from the queue reaches MariaDB
    neo = {r["id"]: r["state"] for r in cypher(cfg, "UNWIND $ids AS id MATCH (e:Experiment {experiment_id: id}) "
                                                    "RETURN id, e.state AS state", ids=ids)}
    assert neo == {exp: "CANCELLED" for exp in ids}
    assert experiment_states(cfg, ids) == {exp: "CANCELLED" for exp in ids}


def test_a_cancel_whose_caller_died_between_its_two_writes_is_recorded_by_the_leader(workers: Config,
                                                                                     tmp_path: Path) -> None:
    """The cancel's Neo4j transaction commits (with its Outbox node) and its caller dies before the MariaDB write:
    the leader's sweep writes the rows once the node is older than submit_grace_s, as the cancel would have
    (epoch 0, node ``cancel``): MariaDB ends CANCELLED too, not RUNNING forever."""
    cfg = workers
    template = {"type": "core-slow-cancel", "description": "one slow task", "tasks": [
        {"name": "one", "kind": "job_submission", "executor": "sleep", "params": {"ms": 3000}}]}
    assert register(cfg, tmp_path, template).returncode == 0
    exp = submit(cfg, "core-slow-cancel", unique("core-cancel-dead"))
    wait_until(lambda: experiment_states(cfg, [exp]) == {exp: "RUNNING"}, 60, "the experiment to start")
    with Experiments(cfg) as exps:
        long_ago = time.time() - 2 * cfg.submit_grace_s  # the sweep takes it at once instead of in 30 s
        state, result = exps.dags.cancel(exp, now=long_ago)
    assert state == "CANCELLED" and result.outbox_id is not None
    assert experiment_states(cfg, [exp]) == {exp: "RUNNING"}  # what the dead caller left
    wait_until(lambda: experiment_states(cfg, [exp]) == {exp: "CANCELLED"}, 30, "the leader to record the cancel")
    rows = query(cfg, "SELECT task, epoch, node_id, at FROM transitions WHERE experiment_id = %s "
                      "AND to_state = 'CANCELLED' ORDER BY id", (exp,))
    assert [(r["task"], r["epoch"], r["node_id"], r["at"]) for r in rows] == [
        ("one", 0, "cancel", long_ago), (None, 0, "cancel", long_ago)]
    assert cypher(cfg, "MATCH (o:Outbox {id: $id}) RETURN count(o) AS n", id=result.outbox_id) == [{"n": 0}]
