"""Concurrency pools on a real cluster: the leader never has more tasks of a bounded pool executing than its slots
(read from the execution ledger), a raised limit is in force at once, unbounded pools are not held back, a new
leader keeps the limit and dispatches the held tasks, a kind is a pool, and the CLI sets, lists and deletes pools."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from core_harness import cli, cli_json, query, transitions, unique, wait_all
from polling import wait_until

from node import cluster as cluster_ops
from node.config import Config
from node.experiments import Experiments
from node.stores.connect import neo4j_driver
from node.stores.dags import DagStore

pytestmark = pytest.mark.stack


def _sleeper(cfg: Config, directory: Path, ms: int, pool: str | None = None, kind: str | None = None) -> str:
    """Register a type of one task that sleeps ``ms`` in ``pool`` (None: its kind's); returns the type."""
    type_ = unique("pooled").replace("-", "_")
    task: dict[str, Any] = {"name": "nap", "kind": kind or unique("kind"), "executor": "sleep", "params": {"ms": ms}}
    if pool is not None:
        task["pool"] = pool
    path = directory / f"{type_}.yaml"
    path.write_text(yaml.safe_dump({"type": type_, "tasks": [task]}))
    with Experiments(cfg) as exps:
        exps.register(path)
    return type_


def _submit(cfg: Config, type_: str, n: int) -> list[str]:
    with Experiments(cfg) as exps:
        return [exps.submit(type_, unique("pool"))["experiment_id"] for _ in range(n)]


def _executions(cfg: Config, ids: list[str]) -> list[tuple[float, float]]:
    marks = ",".join(["%s"] * len(ids))
    rows = query(cfg, f"SELECT started_at, ended_at FROM ledger WHERE experiment_id IN ({marks})", tuple(ids))
    return [(r["started_at"], r["ended_at"] if r["ended_at"] is not None else float("inf")) for r in rows]


def _slots_taken(cfg: Config, ids: list[str]) -> list[tuple[float, float]]:
    """From the transition log: each attempt's dispatch to its end, the time it held a slot of its pool."""
    marks = ",".join(["%s"] * len(ids))
    rows = query(cfg, f"SELECT experiment_id, task, attempt, to_state, at FROM transitions WHERE experiment_id IN "
                      f"({marks}) AND task IS NOT NULL ORDER BY id", tuple(ids))
    begun: dict[tuple, float] = {}
    spans = []
    for r in rows:
        attempt = (r["experiment_id"], r["task"], r["attempt"])
        if r["to_state"] == "DISPATCHED":
            begun[attempt] = r["at"]
        elif r["to_state"] in ("SUCCEEDED", "RETRY_WAIT", "FAILED", "CANCELLED") and attempt in begun:
            spans.append((begun.pop(attempt), r["at"]))
    return spans + [(at, float("inf")) for at in begun.values()]


def _most_at_once(spans: list[tuple[float, float]], until: float = float("inf")) -> int:
    """The most executions running at one moment before ``until`` (an end at the instant of a start comes first)."""
    events = sorted([(s, 1) for s, e in spans if s < until] + [(e, -1) for s, e in spans if s < until])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def _usage(cfg: Config, pool: str) -> dict[str, int]:
    with neo4j_driver(cfg) as driver:
        return DagStore(driver).pool_usage([pool], time.time())[pool]


def _gauge(cfg: Config, name: str, pool: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{cfg.node_http_port(1)}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f'{name}{{pool="{pool}"}} '):
                return float(line.rsplit(" ", 1)[1])
    return None


def _bound(cfg: Config, pool: str, slots: int) -> None:
    """Set the pool's slots and wait until the leader holds them: it reads them at every sweep (~1 s), and a task
    submitted before that is dispatched under the limits it had."""
    cli_json(cfg, "pool", "set", pool, str(slots))
    wait_until(lambda: _gauge(cfg, "haorch_pool_slots", pool) == float(slots), 10, "the leader's limit")


def test_a_pool_never_has_more_tasks_executing_than_its_slots(workers: Config, tmp_path: Path) -> None:
    cfg = workers
    pool = unique("gpu")
    _bound(cfg, pool, 2)
    try:
        type_ = _sleeper(cfg, tmp_path, ms=1000, pool=pool)
        ids = _submit(cfg, type_, 10)
        seen = wait_until(lambda: (u := _usage(cfg, pool))["waiting"] > 0 and u, 30, "tasks held for a slot")
        assert seen["in_use"] <= 2, seen
        with Experiments(cfg) as exps:  # what `haorch status` shows of a held task
            wait_until(lambda: any(t["waiting_on"] == f"a slot of pool {pool}" for i in reversed(ids)
                                   for t in exps.status(i)["tasks"]), 10, "a task shown held")
        wait_until(lambda: _gauge(cfg, "haorch_pool_slots", pool) == 2.0, 10, "the slots gauge")
        listed = {p["name"]: p for p in cli_json(cfg, "pool", "list")}
        assert listed[pool]["slots"] == 2 and listed[pool]["in_use"] <= 2, listed[pool]
        assert set(wait_all(cfg, ids, 90).values()) == {"COMPLETED"}
    finally:
        cli_json(cfg, "pool", "delete", pool)
    spans = _executions(cfg, ids)
    assert len(spans) == 10 and _most_at_once(spans) == 2, sorted(spans)
    assert _most_at_once(_slots_taken(cfg, ids)) == 2


def test_raising_the_slots_takes_effect_and_unbounded_pools_are_not_held(workers: Config, tmp_path: Path) -> None:
    cfg = workers
    pool = unique("licence")
    _bound(cfg, pool, 1)
    try:
        type_ = _sleeper(cfg, tmp_path, ms=1000, pool=pool)
        ids = _submit(cfg, type_, 7)
        wait_until(lambda: len(_executions(cfg, ids)) >= 2, 30, "the second execution")
        raised = time.time()
        assert cli_json(cfg, "pool", "set", pool, "3")["previous"] == 1
        set_at = time.time()
        free = _sleeper(cfg, tmp_path, ms=3000)  # its pool (a new kind) has no row: unbounded
        unbounded = _submit(cfg, free, 6)
        assert set(wait_all(cfg, ids + unbounded, 90).values()) == {"COMPLETED"}
    finally:
        cli_json(cfg, "pool", "delete", pool)
    spans = _executions(cfg, ids)
    assert _most_at_once(spans, until=raised) == 1 and _most_at_once(spans) <= 3, sorted(spans)
    # the leader's side (a worker may start a request only after the batch it is running ends): 5 tasks were held,
    # so 3 at once within a sweep of the raise
    taken = _slots_taken(cfg, ids)
    assert _most_at_once(taken) == 3, sorted(taken)
    assert _most_at_once(taken, until=set_at + 2.0) == 3, (set_at, sorted(taken))
    assert _most_at_once(_slots_taken(cfg, unbounded)) == 6  # nothing held them


def test_a_new_leader_keeps_the_limit_and_dispatches_the_held_tasks(workers: Config, tmp_path: Path) -> None:
    cfg = workers
    pool = unique("tape")
    _bound(cfg, pool, 2)
    try:
        type_ = _sleeper(cfg, tmp_path, ms=1500, pool=pool)
        ids = _submit(cfg, type_, 8)
        wait_until(lambda: (u := _usage(cfg, pool))["in_use"] == 2 and u["waiting"] >= 4, 30, "a full pool")
        epoch = cluster_ops.leader(cfg)["epoch"]
        cluster_ops.kill_leader(cfg, "KILL")
        wait_until(lambda: cluster_ops.node_process(cfg, 1).pid() is None, 10, "the leader's death")
        cluster_ops.start_node(cfg, 1)
        new_epoch = cluster_ops.wait_for_leader(cfg, 60, newer_than=epoch)["epoch"]
        assert set(wait_all(cfg, ids, 120).values()) == {"COMPLETED"}
    finally:
        cli_json(cfg, "pool", "delete", pool)
    spans = _executions(cfg, ids)
    assert len(spans) == 8 and _most_at_once(spans) == 2, sorted(spans)
    assert _most_at_once(_slots_taken(cfg, ids)) == 2
    by_new_leader = [r for i in ids for r in transitions(cfg, i)
                     if r["to_state"] == "DISPATCHED" and r["epoch"] == new_epoch]
    assert by_new_leader, "the new leader dispatched none of the held tasks"


def test_a_kind_is_a_pool(workers: Config, tmp_path: Path) -> None:
    cfg = workers
    kind = unique("transfer")
    _bound(cfg, kind, 1)
    try:
        type_ = _sleeper(cfg, tmp_path, ms=400, kind=kind)
        ids = _submit(cfg, type_, 4)
        assert set(wait_all(cfg, ids, 60).values()) == {"COMPLETED"}
    finally:
        cli_json(cfg, "pool", "delete", kind)
    assert _most_at_once(_executions(cfg, ids)) == 1 and _most_at_once(_slots_taken(cfg, ids)) == 1


def test_the_cli_sets_lists_and_deletes_pools_idempotently(cluster: Config) -> None:
    cfg = cluster
    pool = unique("cli")
    made = cli_json(cfg, "pool", "set", pool, "4", "--description", "four at once")
    assert (made["slots"], made["changed"], made["previous"], made["description"]) == (4, True, None, "four at once")
    again = cli_json(cfg, "pool", "set", pool, "4")
    assert (again["changed"], again["description"]) == (False, "four at once")
    assert cli_json(cfg, "pool", "set", pool, "5")["previous"] == 4
    listed = {p["name"]: p for p in cli_json(cfg, "pool", "list")}
    assert (listed[pool]["slots"], listed[pool]["in_use"], listed[pool]["waiting"]) == (5, 0, 0)
    human = cli(cfg, "pool", "list")
    assert human.returncode == 0 and pool in human.stdout
    assert cli_json(cfg, "pool", "delete", pool) == {"name": pool, "deleted": True, "slots": 5}
    assert cli_json(cfg, "pool", "delete", pool) == {"name": pool, "deleted": False, "slots": None}
    assert pool not in {p["name"] for p in cli_json(cfg, "pool", "list")}
    audit = query(cfg, "SELECT action, outcome FROM audit WHERE target = %s ORDER BY id", (f"pool:{pool}",))
    assert [(a["action"], a["outcome"]) for a in audit] == [("pool.set", "ok")] * 3 + [("pool.delete", "ok")] * 2
    for args in (("set", pool, "0"), ("set", pool, "-1"), ("set", " padded", "2"), ("set", "x" * 65, "2"),
                 ("set", pool, "many"), ("delete", "bad\tname")):
        bad = cli(cfg, "pool", *args)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert bad.stderr.startswith("haorch: ") and len(bad.stderr.strip().splitlines()) == 1, (args, bad.stderr)
