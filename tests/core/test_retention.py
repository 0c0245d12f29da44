"""Retention (node/retention/): finished experiments past their type's period are deleted from both stores,
archived first when asked; the deletes are fenced, a crash between the two stores is finished by the next step, a
retried experiment is kept; ``haorch gc`` does it by hand; the leader does it in the background — on a real
cluster.

The cluster's leader keeps experiments 100 years by default here (``HAORCH_RETENTION_DAYS``), so that only the
types with a period of their own are its business; the tests' own collectors run with 30 days. Experiments are
made old by moving their ``finished_at`` back in both stores."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
from core_harness import CLUSTER_ENV, cli_json, cypher, query, unique, wait_all
from polling import wait_until

from node import cluster as cluster_ops
from node import failpoints
from node.config import Config, load_config, with_overrides
from node.errors import FencedError
from node.experiments import Experiments
from node.model.executors import KNOWN_EXECUTORS
from node.model.template import parse_template
from node.paths import REPO_ROOT
from node.retention.archive import read_archive
from node.retention.collector import BETWEEN_STORES, Collector, collect
from node.stores.connect import mysql_connect_args, neo4j_driver
from node.stores.purge import Purge
from node.stores.records import Records
from node.verify.check import check
from node.verify.snapshot import Scope

pytestmark = pytest.mark.stack

DAY_S = 86400.0
LEADER_ENV = {**CLUSTER_ENV, "HAORCH_RETENTION_DAYS": "36500", "HAORCH_GC_INTERVAL_S": "0.3"}


@pytest.fixture(scope="module")
def cluster(stack: Config) -> Iterator[Config]:
    """One node and two workers whose leader keeps experiments for 100 years unless their type says otherwise."""
    from core_harness import WORKERS, free_worker_numbers, start_workers

    with pytest.MonkeyPatch.context() as mp:
        for key, value in LEADER_ENV.items():
            mp.setenv(key, value)
        cfg = load_config(stack.home)
        WORKERS[:] = free_worker_numbers(cfg, 2)
        cluster_ops.up(cfg, nodes=1, workers=0, wait_s=120.0)
        start_workers(cfg)
        try:
            yield cfg
        finally:
            cluster_ops.down(cfg)


def execute(cfg: Config, sql: str, args: tuple = ()) -> int:
    conn = pymysql.connect(**mysql_connect_args(cfg))
    try:
        with conn.cursor() as cur:
            count = cur.execute(sql, args)
        conn.commit()
        return count
    finally:
        conn.close()


def template(type_: str, retention_days: float | None = None, fail: bool = False) -> dict:
    data: dict = {"type": type_, "tasks": [
        {"name": "first", "kind": "data_staging"},
        {"name": "second", "kind": "job_submission", "depends_on": ["first"],
         **({"executor": "fail"} if fail else {})}]}
    if retention_days is not None:
        data["retention_days"] = retention_days
    return data


def finished(cfg: Config, retention_days: float | None = None, n: int = 2, fail: bool = False) -> list[str]:
    """``n`` finished experiments of a new type (COMPLETED, or FAILED with ``fail``)."""
    type_ = unique("ret").replace("-", "_")
    ids = [unique(type_) for _ in range(n)]
    with Experiments(cfg) as exps:
        exps.register_template(parse_template(template(type_, retention_days, fail), KNOWN_EXECUTORS))
        exps.submit_many(type_, ids)
    states = wait_all(cfg, ids, 60)
    assert set(states.values()) == {"FAILED" if fail else "COMPLETED"}, states
    return ids


def age(cfg: Config, ids: list[str], days: float) -> None:
    """Move the experiments' finish ``days`` back, in both stores."""
    marks = ",".join(["%s"] * len(ids))
    assert execute(cfg, f"UPDATE experiments SET finished_at = finished_at - %s WHERE experiment_id IN ({marks})",
                   (days * DAY_S, *ids)) == len(ids)
    cypher(cfg, "UNWIND $ids AS id MATCH (e:Experiment {experiment_id: id}) "
                "SET e.finished_at = e.finished_at - $s", ids=ids, s=days * DAY_S)


def rows_of(cfg: Config, ids: list[str]) -> dict[str, int]:
    """How many rows of the experiments each table and Neo4j label hold."""
    marks = ",".join(["%s"] * len(ids))
    out = {table: query(cfg, f"SELECT COUNT(*) AS n FROM {table} WHERE experiment_id IN ({marks})", tuple(ids))[0]["n"]
           for table in ("experiments", "transitions", "ledger")}
    for label in ("Experiment", "Task"):
        out[label] = cypher(cfg, f"MATCH (x:{label}) WHERE x.experiment_id IN $ids RETURN count(x) AS n",
                            ids=ids)[0]["n"]
    return out


def gone(cfg: Config, ids: list[str]) -> bool:
    return not any(rows_of(cfg, ids).values())


def kept(cfg: Config, ids: list[str]) -> bool:
    counts = rows_of(cfg, ids)
    return counts["experiments"] == len(ids) and counts["Experiment"] == len(ids) and all(counts.values())


class Gc:
    """An in-process collector with its own store connections, retention 30 days unless told otherwise."""

    def __init__(self, cfg: Config, **overrides: object) -> None:
        self.cfg = with_overrides(cfg, **{"retention_days": 30.0, **overrides})
        self.records = Records(self.cfg, retry_for_s=10.0)
        self.driver = neo4j_driver(self.cfg)
        self.collector = Collector(self.cfg, self.records, Purge(self.driver), "test-gc")

    def __enter__(self) -> Collector:
        return self.collector

    def __exit__(self, *exc: object) -> None:
        self.records.close()
        self.driver.close()


def test_what_is_past_retention_goes_from_both_stores_archived_and_the_rest_stays(
        workers: Config, tmp_path: Path) -> None:
    cfg = workers
    old, young, forever = finished(cfg, n=3), finished(cfg), finished(cfg, retention_days=0)
    short = finished(cfg, retention_days=1)
    age(cfg, old, 40)
    age(cfg, young, 10)
    age(cfg, forever, 400)
    age(cfg, short, 2)  # its own period (1 day) wins over the default (30 days here, 100 years on the leader)
    everything = old + young + forever + short
    with Gc(cfg, retention_days=0) as gc:  # 0: keep forever, but a type's own period still counts
        collect(gc)
        assert kept(cfg, old + young + forever)
    archive = tmp_path / "archive"
    with Gc(cfg, archive_dir=str(archive)) as gc:
        plan = {r["type"]: r for r in gc.plan()}
        assert plan[old[0].rsplit("-", 1)[0]]["count"] == 3 and plan[old[0].rsplit("-", 1)[0]]["retention_days"] == 30
        run = collect(gc)
        assert run.deleted >= 3 and run.kept == 0
        assert collect(gc).deleted == 0, "idempotent: nothing left"
    assert gone(cfg, old) and gone(cfg, short)
    assert kept(cfg, young) and kept(cfg, forever)
    files = sorted(archive.glob("*.jsonl.gz"))
    assert files and all(f.name.endswith(".jsonl.gz") for f in files)
    lines = []
    for f in files:
        with gzip.open(f, "rt") as text:
            lines += [json.loads(line) for line in text]
    assert {line["experiment_id"] for line in lines} >= set(old)
    record = read_archive(archive)[old[0]]
    assert record["experiment"]["state"] == "COMPLETED" and record["experiment"]["experiment_id"] == old[0]
    assert {t["to_state"] for t in record["transitions"]} >= {"QUEUED", "DISPATCHED", "SUCCEEDED", "COMPLETED"}
    assert sorted(r["task"] for r in record["ledger"]) == ["first", "second"]
    assert {t["name"]: t["depends_on"] for t in record["graph"]["tasks"]} == {"first": [], "second": ["first"]}
    assert record["graph"]["experiment"]["state"] == "COMPLETED"
    report = check(cfg, Scope(experiment_ids=everything, archive_dir=str(archive)))
    assert report.ok, report.to_markdown()
    assert report.experiments == len(everything) - len(short)  # the leader deleted `short` without an archive
    assert report.archived == 3


def test_a_deposed_leaders_gc_is_fenced_in_both_stores(workers: Config) -> None:
    cfg = workers
    ids = finished(cfg)
    age(cfg, ids, 40)
    with Gc(cfg) as gc:
        epoch = gc.records.fence_epoch()
        assert epoch >= 1
        with pytest.raises(FencedError, match="neo4j"):
            gc.step(epoch - 1)
        with pytest.raises(FencedError, match="mariadb"):
            gc.records.delete_experiments(epoch - 1, {i: time.time() for i in ids})
        assert kept(cfg, ids)
        # the current epoch deletes them; a step keeps an experiment while the Outbox node of the batch that
        # finished it is still there (the leader's sweep forgets it within a second), so allow a few steps
        wait_until(lambda: collect(gc).steps >= 0 and gone(cfg, ids), 10, "the experiments deleted")


def test_a_crash_between_the_neo4j_and_mariadb_deletes_is_finished_by_the_next_step(workers: Config) -> None:
    cfg = workers
    ids = finished(cfg)
    age(cfg, ids, 40)
    failpoints.arm(cfg, "cli", BETWEEN_STORES)
    env = {"HAORCH_HOME": str(cfg.home), "HAORCH_PORT_BASE": str(cfg.port_base), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "gc", "--json"], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def stopped() -> bool:
            with open(f"/proc/{proc.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "T"
        wait_until(stopped, 60, "haorch gc to stop at its failpoint")
        counts = rows_of(cfg, ids)
        assert counts["Experiment"] == counts["Task"] == 0, "Neo4j's delete committed"
        assert counts["experiments"] == len(ids) and counts["transitions"] and counts["ledger"], "MariaDB's did not"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        failpoints.disarm(cfg, "cli", BETWEEN_STORES)
    out = cli_json(cfg, "gc")
    assert out["deleted"] >= len(ids) and gone(cfg, ids)


def test_an_experiment_retried_while_gc_runs_is_kept(workers: Config) -> None:
    cfg = workers
    retried, caller_died = finished(cfg, fail=True)
    age(cfg, [retried, caller_died], 40)
    cutoffs = {i: time.time() - 30 * DAY_S for i in (retried, caller_died)}  # as a step read them before
    with Experiments(cfg) as exps:
        assert exps.retry(retried)["state"] == "RUNNING"
        recorded = exps.records.applied(exps.dags.outbox_naming(caller_died))
        state, _ = exps.dags.retry(caller_died, now=time.time(), recorded=recorded)  # Neo4j only: its caller died
        assert state == "RUNNING"
    with Gc(cfg) as gc:
        gc.purge.generation = None
        epoch = gc.records.fence_epoch()
        purged = gc.purge.delete(epoch, cutoffs)
        assert sorted(purged.kept) == sorted(cutoffs) and not purged.deleted
        assert gc.records.delete_experiments(epoch, {retried: cutoffs[retried]}) == [], "RUNNING in MariaDB"
        assert caller_died not in gc.step(epoch).deleted, "FAILED in MariaDB, reopened in Neo4j: kept"
    assert kept(cfg, [retried, caller_died])
    wait_all(cfg, [retried], 60)


def test_haorch_gc_dry_run_then_run_by_hand_and_audited(workers: Config) -> None:
    cfg = workers
    ids = finished(cfg, n=3)
    type_ = ids[0].rsplit("-", 1)[0]
    age(cfg, ids, 45)
    plan = cli_json(cfg, "gc", "--dry-run")
    assert plan["dry_run"] is True
    (mine,) = [r for r in plan["types"] if r["type"] == type_]
    assert mine["count"] == 3 and mine["retention_days"] == 30
    assert mine["oldest_finished_at"] < time.time() - 44 * DAY_S
    assert kept(cfg, ids), "a dry run deletes nothing"
    out = cli_json(cfg, "gc", "--limit", "2")
    assert out["deleted"] == 2 and rows_of(cfg, ids)["experiments"] == 1
    out = cli_json(cfg, "gc")
    assert out["deleted"] >= 1 and gone(cfg, ids)
    assert cli_json(cfg, "gc")["deleted"] == 0
    audit = query(cfg, "SELECT who, action, outcome, detail FROM audit WHERE action = 'gc' ORDER BY id DESC LIMIT 1")
    assert audit[0]["who"].startswith("local:") and audit[0]["outcome"] == "ok" and "deleted 0" in audit[0]["detail"]


def test_the_leader_deletes_in_the_background_and_keeps_leader_terms_bounded(workers: Config) -> None:
    cfg = workers
    ids = finished(cfg, retention_days=1)
    young = finished(cfg, retention_days=1)
    age(cfg, ids, 2)
    wait_until(lambda: gone(cfg, ids), 20, "the leader's gc to delete the experiments past their type's period")
    assert kept(cfg, young)
    current = query(cfg, "SELECT MAX(epoch) AS e FROM leader_terms")[0]["e"]
    execute(cfg, "INSERT IGNORE INTO leader_terms (epoch, node_id, elected_at) VALUES "
                 + ",".join(f"({-e}, 'old-node', 0)" for e in range(1, 11)))
    total = query(cfg, "SELECT COUNT(*) AS n FROM leader_terms")[0]["n"]
    with Gc(cfg, keep_leader_terms=3) as gc:
        assert gc.prune_terms() == total - 3
        assert gc.prune_terms() == 0
    epochs = [r["epoch"] for r in query(cfg, "SELECT epoch FROM leader_terms ORDER BY epoch")]
    assert len(epochs) == 3 and epochs[-1] == current
