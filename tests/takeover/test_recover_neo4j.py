"""Neo4j lost under load and rebuilt from MariaDB (``haorch recover neo4j``) while the cluster runs.

A 3-node cluster with 2 workers runs a bounded load of the built-in types and of a type whose tasks sleep (so work
is in flight: dispatched, running, answered and not yet advanced). Neo4j is stopped, its store directory deleted
and it is started again, empty; the leader holds (it advances nothing in a graph without the experiments) until
the CLI has rebuilt the graph, then carries on: every experiment completes, each task exactly once (the
verifier). A second run of the command changes nothing and does not disturb the cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import wait_until

from node import cluster
from node.config import Config
from node.experiments import BUILTIN_TYPES, Experiments
from node.load import Load
from node.stack import manager
from node.stores.connect import mysql_connect, neo4j_driver
from node.stores.graph_record import GraphRecord
from node.stores.records import Records
from node.verify import EXACTLY_ONCE_KINDS, Scope, check

pytestmark = pytest.mark.stack

SLEEPY = """
type: recover-sleep
description: Three tasks that sleep ms milliseconds each, the middle one retried once.
params: {ms: 300}
tasks:
  - {name: fetch, kind: data_staging, executor: sleep}
  - {name: compute, kind: job_submission, executor: sleep, depends_on: [fetch]}
  - {name: store, kind: output_staging, executor: sleep, depends_on: [compute]}
"""
TYPES = (*BUILTIN_TYPES, "recover-sleep")
NODES = ("node-1", "node-2", "node-3")


def _say(message: str) -> None:
    print(f"[recover] {message}", flush=True)


def _log(cfg: Config, node_id: str) -> Path:
    return cluster.node_process(cfg, int(node_id.split("-")[1])).log_file


def log_size(cfg: Config, node_id: str) -> int:
    path = _log(cfg, node_id)
    return path.stat().st_size if path.exists() else 0


def log_since(cfg: Config, node_id: str, offset: int) -> str:
    with open(_log(cfg, node_id), "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


@pytest.fixture(scope="module")
def running(stack: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    cfg = stack
    template = tmp_path_factory.mktemp("recover") / "sleepy.yaml"
    template.write_text(SLEEPY)
    with Experiments(cfg) as exps:
        exps.install_builtins()
        exps.register(template)
    cluster.down(cfg)
    cluster.up(cfg, nodes=len(NODES), workers=2, progress=lambda m: print(f"[cluster] {m}", flush=True))
    records = Records(cfg, retry_for_s=30.0)
    try:
        cluster.wait_for_leader(cfg, 30)
        wait_until(lambda: GraphRecord(records).generation(), 30, "the leader recorded no generation")
        yield cfg
    finally:
        cluster.down(cfg)
        records.close()


def recover_cli(cfg: Config) -> dict:
    """``haorch recover neo4j --json`` as a user runs it; its summary."""
    env = {**os.environ, "HAORCH_HOME": str(cfg.home), "HAORCH_PORT_BASE": str(cfg.port_base)}
    done = subprocess.run([str(Path(sys.executable).with_name("haorch")), "recover", "neo4j", "--json"], env=env,
                          capture_output=True, text=True, timeout=300)
    _say(f"recover stderr:\n{done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def states_of(cfg: Config, ids: list[str]) -> Counter[str]:
    """The states MariaDB records for ``ids`` (the session's stack holds other tests' experiments too)."""
    if not ids:
        return Counter()
    conn = mysql_connect(cfg)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT state, COUNT(*) FROM experiments WHERE experiment_id IN ("
                        + ",".join(["%s"] * len(ids)) + ") GROUP BY state", ids)
            return Counter({state: count for state, count in cur.fetchall()})
    finally:
        conn.close()


def neo4j_experiments(cfg: Config, ids: list[str]) -> int:
    with neo4j_driver(cfg) as driver:
        records, _, _ = driver.execute_query("UNWIND $ids AS id MATCH (e:Experiment {experiment_id: id}) "
                                             "RETURN count(e) AS n", ids=ids)
    return int(records[0]["n"])


def finish(cfg: Config, load: Load, timeout_s: float) -> None:
    """Every experiment of ``load`` completed, each task exactly once, the stores agree."""
    assert load.join(timeout_s), f"load not submitted after {timeout_s:g} s ({load.done}/{load.total})"
    with Experiments(cfg) as exps:
        rows = exps.wait(load.ids, timeout_s)
    states = Counter(r["state"] for r in rows)
    report = check(cfg, Scope(experiment_ids=load.ids))
    _say(f"{len(load.ids)} experiments: {dict(states)}; verifier: {report.counters()}")
    assert states == Counter({"COMPLETED": len(load.ids)}), states
    assert report.of_kinds(EXACTLY_ONCE_KINDS) == []
    assert report.ok, report.to_markdown()


def test_neo4j_emptied_under_load_is_rebuilt_and_every_experiment_completes_exactly_once(running: Config) -> None:
    cfg = running
    load = Load(cfg, rate=10, total=300, types=TYPES, params={"ms": "400"}, threads=2).start()
    cluster.wait_for_leader(cfg, 10)
    offsets = {node: log_size(cfg, node) for node in NODES}
    # some experiments finished, others in flight (dispatched, running, answered): all of it must survive
    before = wait_until(lambda: (c := states_of(cfg, list(load.ids))).get("COMPLETED", 0) >= 20 and c, 90,
                        "no experiment completed", poll_s=0.5)
    neo4j = manager.find_service(cfg, "neo4j")
    assert neo4j is not None
    t0 = time.monotonic()
    neo4j.stop()
    shutil.rmtree(cfg.data_dir("neo4j"))
    manager.up(cfg)  # Neo4j starts with an empty store (and the schema, no generation stamp)
    restarted_s = time.monotonic() - t0
    time.sleep(2.0)  # the leader meets the empty store: it must hold, not fail anything
    failed = states_of(cfg, list(load.ids)).get("FAILED", 0)
    summary = recover_cli(cfg)
    recovered_s = time.monotonic() - t0
    _say(f"neo4j emptied with experiments {before}; back empty after {restarted_s:.1f} s, rebuilt "
         f"after {recovered_s:.1f} s: {summary}")
    assert failed == 0, "an experiment was failed while Neo4j was empty"
    assert summary["rebuilt"] and summary["released"], summary
    # every type is back; a submit for a built-in type may have re-installed the built-ins on the empty store before
    # the rebuild (Experiments._latest), leaving the rebuild fewer versions to create
    assert summary["templates"] >= 1
    with Experiments(cfg) as exps:
        assert set(TYPES) <= {row["type"] for row in exps.dags.list_templates()}
    assert summary["live"]["created"] > 0 and summary["finished"]["created"] >= 20, summary
    assert summary["live"]["left_out"] == summary["finished"]["left_out"] == 0, summary
    finish(cfg, load, timeout_s=240)
    logs = {node: log_since(cfg, node, offset) for node, offset in offsets.items()}
    # whoever led meanwhile (a loaded machine may move the lead) met the emptied store and held
    assert any("GraphNotReady" in text for text in logs.values()), "no leader found the emptied store"
    assert not [node for node, text in logs.items() if "dead-lettered" in text], "a message was dead-lettered"
    assert neo4j_experiments(cfg, load.ids) == len(load.ids)


def test_recovering_a_whole_graph_again_changes_nothing_and_does_not_hold_the_cluster(running: Config) -> None:
    cfg = running
    leader = cluster.wait_for_leader(cfg, 10)
    load = Load(cfg, rate=10, total=60, types=TYPES, params={"ms": "200"}).start()
    wait_until(lambda: load.done >= 20, 60, "load did not start")
    offset = log_size(cfg, leader["node_id"])
    first = recover_cli(cfg)
    second = recover_cli(cfg)
    for summary in (first, second):
        assert not summary["rebuilt"] and not summary["released"], summary
        assert summary["templates"] == 0
        assert summary["finished"]["created"] == 0 and summary["live"]["left_out"] == 0, summary
    # what the first run may create: an experiment whose submit had recorded its row, not yet its DAG
    assert second["live"]["created"] == 0, second
    finish(cfg, load, timeout_s=120)
    assert "GraphNotReady" not in log_since(cfg, leader["node_id"], offset)
    now = cluster.leader(cfg)
    assert now is not None and now["epoch"] == leader["epoch"]
