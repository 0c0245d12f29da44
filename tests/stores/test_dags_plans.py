"""The plans of the statements that find tasks by key or by experiment, profiled on the real Neo4j among other
experiments' tasks: each must touch the tasks it names, not every PENDING or DISPATCHED task of the store (a seek on
``Task(status)``, a scan of ``Task(experiment_id)``), which made every leader batch cost as much as the work in
flight. Each statement runs in a transaction that is rolled back."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from node.config import Config
from node.experiments import Experiments
from node.model.states import ExperimentState, TaskStatus
from node.stores import dags as dag_module
from node.stores.dags import DagStore

pytestmark = pytest.mark.stack

EXPERIMENTS = 30  # 4-task chains: 120 tasks, 20 of them DISPATCHED, the rest PENDING
CHAIN_TASKS = 4


def index_rows(plan: Any) -> list[tuple[str, str, int]]:
    """(operator, details, rows) of every index seek or scan and label scan of a profiled plan."""
    found = []
    if "Seek" in plan.get("operatorType", "") or "Scan" in plan.get("operatorType", ""):
        found.append((plan["operatorType"], plan["args"].get("Details", ""), plan.get("rows", 0)))
    for child in plan.get("children", []):
        found += index_rows(child)
    return found


def profile(exps: Experiments, statement: str, **parameters: Any) -> list[tuple[str, str, int]]:
    with exps.dags.driver.session() as session:
        tx = session.begin_transaction()
        try:
            summary = tx.run("PROFILE " + statement, **parameters).consume()
        finally:
            tx.rollback()
    assert summary.profile is not None
    return index_rows(summary.profile)


def test_statements_by_key_or_experiment_touch_only_their_tasks(stack: Config) -> None:
    run = uuid.uuid4().hex[:8]
    ids = [f"plans-{run}-{i:02d}" for i in range(EXPERIMENTS)]
    with Experiments(stack) as exps:
        exps.install_builtins()
        for experiment_id in ids:
            exps.submit("chain", experiment_id, notify=False)
        dags = exps.dags
        epoch = dags.fence_epoch()
        try:
            dags.advance(epoch, [], ids[:20], time.time())  # their roots DISPATCHED, the other 100 tasks PENDING
            now = time.time()
            cases: list[tuple[str, str, dict[str, Any]]] = []
            for pools in ({}, {f"plans-{run}": 1}):
                flag = DagStore._flag_parameters(epoch, now, pools)
                key = f"{ids[0]}/stage_in"
                cases.append((f"batch pools={pools}", dag_module._batch_statement(pools),
                              {"keys": [key], "clean": [{"key": key, "attempt": 1}], **flag}))
                cases.append((f"roots pools={pools}", dag_module._roots_statement(pools),
                              {"ids": [ids[25]], "now": now, "epoch": epoch, "pending": TaskStatus.PENDING,
                               "dispatched": TaskStatus.DISPATCHED, "bounded": list(pools),
                               "queued": ExperimentState.QUEUED, "running": ExperimentState.RUNNING}))
            cases.append(("cancel", dag_module._CANCEL_OPEN,
                          {"ids": [ids[1]], "open": list(dag_module._OPEN), "now": now, "epoch": epoch,
                           "cancelled": TaskStatus.CANCELLED}))
            for name, statement, parameters in cases:
                operators = profile(exps, statement, **parameters)
                assert operators, name
                wide = [op for op in operators if op[2] > CHAIN_TASKS]
                assert not wide, f"{name}: {wide}"
        finally:
            for experiment_id in ids:
                exps.cancel(experiment_id)
