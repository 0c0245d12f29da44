"""``haorch bench recover``: how long rebuilding Neo4j from MariaDB takes (``haorch recover neo4j``), for
``count`` experiments of the built-in types.

The records are created directly in MariaDB, as the cluster would have left them and without their graph in
Neo4j: the four built-in types in turn, a fifth QUEUED, two fifths RUNNING (a random number of tasks succeeded in
dependency order, the ready ones dispatched, the ``retry`` type's flaky task through its failed first attempt) and
two fifths COMPLETED, every task with its transition-log rows. Then the rebuild of ``node/recover.py`` (the steps
that scale with the history: read a page from MariaDB, see what Neo4j has, build, create, one transaction per
page) runs over them, timed by pass, and once more to time a run over a graph that is whole. The steps that hold
and release the leader are one write each and are not part of this (a benchmark does not hold a user's cluster).

The cluster is stopped first (a leader would start running the rebuilt QUEUED experiments); every row and node
has an id of the run's own and is deleted at the end, also on an error or Ctrl-C (:mod:`bench.scratch`).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from bench.scratch import Scratch
from node import cluster
from node.config import Config
from node.experiments import BUILTIN_TYPES, Experiments
from node.model.states import ExperimentState, TaskStatus
from node.model.template import Template
from node.recover import PAGE, Rebuilder
from node.stores.connect import neo4j_driver
from node.stores.graph_record import GraphRecord
from node.stores.graph_restore import GraphRestore
from node.stores.records import Records

Progress = Callable[[str], None]
CHUNK = 2000
S = TaskStatus


def history(template: Template, experiment_id: str, state: str, start: float,
            rng: random.Random) -> list[tuple[Any, ...]]:
    """Transition rows ``(experiment_id, task, from, to, attempt, epoch, node_id, at, detail)`` of one experiment
    that the cluster would have written to reach ``state``."""
    rows: list[tuple[Any, ...]] = []
    at = start

    def row(task: str | None, to: str, attempt: int, detail: str | None = None) -> None:
        nonlocal at
        at += 0.001
        rows.append((experiment_id, task, None, to, attempt, 1, "node-1", at, detail))

    if state == ExperimentState.QUEUED:
        return rows
    order = template.topological_order()
    done = set(order) if state == ExperimentState.COMPLETED else set(order[:rng.randrange(len(order))])
    preds = template.predecessors()
    row(None, ExperimentState.RUNNING, 0)
    for name in order:
        if not all(p in done for p in preds[name]):
            continue
        flaky = template.task(name).executor == "fail"
        row(name, S.DISPATCHED, 1)
        if flaky:
            row(name, S.RETRY_WAIT, 1, "failing on purpose (attempt 1 of first_n=1)")
            row(name, S.DISPATCHED, 2)
        if name in done:
            row(name, S.SUCCEEDED, 2 if flaky else 1)
    if state == ExperimentState.COMPLETED:
        row(None, ExperimentState.COMPLETED, 0)
    return rows


def create_records(cfg: Config, prefix: str, count: int, progress: Progress) -> dict[str, int]:
    """``count`` experiments of the built-in types with their history, in MariaDB only (chunks of CHUNK, one
    transaction each); returns the experiments by state."""
    rng = random.Random(7)
    with Experiments(cfg) as exps:
        exps.install_builtins()  # and records their definitions in MariaDB
        templates = {t: exps.dags.get_template(t) for t in BUILTIN_TYPES}
    states = (ExperimentState.QUEUED, ExperimentState.RUNNING, ExperimentState.RUNNING, ExperimentState.COMPLETED,
              ExperimentState.COMPLETED)
    made: Counter[str] = Counter()
    records = Records(cfg)
    try:
        now = time.time()
        for first in range(0, count, CHUNK):
            experiments, transitions = [], []
            for i in range(first, min(count, first + CHUNK)):
                type_ = BUILTIN_TYPES[i % len(BUILTIN_TYPES)]
                template, version = templates[type_]
                state = states[(i // len(BUILTIN_TYPES)) % len(states)]
                experiment_id = f"{prefix}{i:06d}"
                created = now + i * 0.001
                experiments.append((experiment_id, type_, version, state, json.dumps({"ms": "5"}), created, created,
                                    created + 1 if state == ExperimentState.COMPLETED else None))
                transitions += history(template, experiment_id, state, created, rng)
                made[state] += 1

            def work(cur: Any, experiments: list = experiments, transitions: list = transitions) -> None:
                cur.executemany("INSERT INTO experiments (experiment_id, type, template_version, state, params, "
                                "created_at, updated_at, finished_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                                experiments)
                cur.executemany("INSERT INTO transitions (experiment_id, task, from_state, to_state, attempt, epoch, "
                                "node_id, at, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", transitions)
            records.transaction(work)
            progress(f"recover: {min(count, first + CHUNK)}/{count} experiments recorded in MariaDB")
    finally:
        records.close()
    return dict(made)


def graph_counts(cfg: Config, prefix: str) -> tuple[int, int]:
    """(Experiment nodes, Task nodes) of the run in Neo4j."""
    with neo4j_driver(cfg) as driver:
        counted = []
        for label in ("Experiment", "Task"):
            records, _, _ = driver.execute_query(f"MATCH (x:{label}) WHERE x.experiment_id STARTS WITH $p "
                                                 "RETURN count(x) AS n", p=prefix)
            counted.append(int(records[0]["n"]))
    return counted[0], counted[1]


def run(cfg: Config, count: int = 10_000, page_size: int = PAGE,
        progress: Progress = lambda _m: None) -> dict[str, Any]:
    started = time.time()
    cluster.down(cfg)
    with Scratch(cfg, "bench-recover") as scratch:
        t0 = time.monotonic()
        states = create_records(cfg, scratch.prefix, count, progress)
        created_s = time.monotonic() - t0
        records = Records(cfg)
        try:
            with neo4j_driver(cfg) as driver:
                passes = []
                for _ in range(2):  # the rebuild, then a run over the whole graph
                    rebuilder = Rebuilder(GraphRecord(records), GraphRestore(driver), progress, page_size,
                                          prefix=scratch.prefix)
                    t0 = time.monotonic()
                    templates = rebuilder.templates()
                    live = rebuilder.experiments((ExperimentState.QUEUED, ExperimentState.RUNNING), count, "live")
                    finished = rebuilder.experiments((ExperimentState.COMPLETED,), count, "finished")
                    passes.append({"seconds": time.monotonic() - t0, "templates": templates, "live": vars(live),
                                   "finished": vars(finished)})
        finally:
            records.close()
        experiments, tasks = graph_counts(cfg, scratch.prefix)
    first, again = passes
    return {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "count": count,
            "page_size": page_size, "states": states, "created_s": created_s, "rebuild": first, "again": again,
            "experiments_in_neo4j": experiments, "tasks_in_neo4j": tasks}


def render(result: dict[str, Any]) -> str:
    first, again = result["rebuild"], result["again"]
    live, finished = first["live"], first["finished"]
    created = live["created"] + finished["created"]
    tasks = live["tasks"] + finished["tasks"]
    states = ", ".join(f"{n} {s}" for s, n in sorted(result["states"].items()))
    lines = [f"### Rebuilding Neo4j from MariaDB (`haorch recover neo4j`) — {result['when']}", "",
             "| experiments | tasks | rebuild | live first | experiments/s | tasks/s | run again (whole graph) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| {created} | {tasks} | {first['seconds']:.1f} s | {live['seconds']:.1f} s | "
             f"{created / first['seconds']:.0f} | {tasks / first['seconds']:.0f} | {again['seconds']:.1f} s |", "",
             f"- {result['count']} experiments of the built-in types ({states}) recorded directly in MariaDB with "
             f"their transition-log rows ({result['created_s']:.0f} s), none in Neo4j; rebuilt with pages of "
             f"{result['page_size']} (one MariaDB read of rows and one of their log, one Neo4j existence check and "
             "one Neo4j transaction per page). *live first*: the QUEUED and RUNNING ones, after which the leader "
             "resumes; the finished ones follow while it runs.",
             f"- Neo4j afterwards: {result['experiments_in_neo4j']} experiments, {result['tasks_in_neo4j']} tasks; "
             f"the second run created {again['live']['created'] + again['finished']['created']} "
             f"(it only checks what is there).", ""]
    return "\n".join(lines)
