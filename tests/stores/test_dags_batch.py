"""The leader's batch transaction on the real Neo4j (``DagStore.advance``): its first statement flags the clean
successes (a key answered once, a success that does not wait) while it reads the tasks; everything else goes
through classify() and the statements after it. Both routes, and a fenced batch, which writes nothing."""

from __future__ import annotations

import time
import uuid

import pytest

from node.config import Config
from node.errors import FencedError
from node.experiments import Experiments
from node.model.advance import Outcome
from node.model.states import ExperimentState, TaskStatus

pytestmark = pytest.mark.stack


def statuses(exps: Experiments, experiment_id: str) -> dict[str, tuple[str, int, bool | None]]:
    return {t["name"]: (t["status"], t["attempt"], t["executed"]) for t in exps.dags.experiment_tasks(experiment_id)}


def test_clean_and_repeated_successes_flag_once_and_a_fenced_batch_writes_nothing(stack: Config) -> None:
    run = uuid.uuid4().hex[:8]
    chain, diamond = f"batch-chain-{run}", f"batch-diamond-{run}"
    with Experiments(stack) as exps:
        exps.install_builtins()
        for experiment_id, type_ in ((chain, "chain"), (diamond, "diamond")):
            exps.submit(type_, experiment_id, notify=False)  # no leader dispatches them: this test does
        dags = exps.dags
        epoch = dags.fence_epoch()
        try:
            # a deposed leader's submissions: its one statement dispatched and started them, and all of it rolls back
            with pytest.raises(FencedError):
                dags.advance(epoch - 1, [], [chain, diamond], time.time())
            assert statuses(exps, chain)["stage_in"] == (TaskStatus.PENDING, 0, False)
            assert dags.experiment_states([chain, diamond]) == {chain: ExperimentState.QUEUED,
                                                                 diamond: ExperimentState.QUEUED}

            roots = dags.advance(epoch, [], [chain, diamond, chain], time.time())  # an id twice: dispatched once
            assert sorted(d.name for d in roots.dispatches) == ["a", "stage_in"]
            assert roots.experiments == {chain: ExperimentState.RUNNING, diamond: ExperimentState.RUNNING}
            assert dags.experiment_states([chain, diamond]) == {chain: ExperimentState.RUNNING,
                                                                 diamond: ExperimentState.RUNNING}

            # a key answered twice (the repeated route), a stale attempt of a clean-looking success, an unknown task
            result = dags.advance(epoch, [Outcome(f"{chain}/stage_in", 1, True), Outcome(f"{chain}/stage_in", 1, True),
                                         Outcome(f"{diamond}/a", 0, True), Outcome(f"{run}-nothing/x", 1, True)],
                                  [], time.time())
            assert [f["key"] for f in result.flagged] == [f"{chain}/stage_in"]
            assert [d.name for d in result.dispatches] == ["submit_job"]
            assert sorted(result.duplicates) == sorted([f"{chain}/stage_in", f"{diamond}/a"])
            assert result.unknown == [f"{run}-nothing/x"]
            assert statuses(exps, diamond)["a"] == (TaskStatus.DISPATCHED, 1, False)

            # the clean route: one success, two successors dispatched; a failure in the same batch (no retries left)
            # fails its experiment
            result = dags.advance(epoch, [Outcome(f"{diamond}/a", 1, True),
                                         Outcome(f"{chain}/submit_job", 1, False, error="boom")], [], time.time())
            assert [f["key"] for f in result.flagged] == [f"{diamond}/a"]
            assert sorted(d.name for d in result.dispatches) == ["b", "c"]
            assert [f["key"] for f in result.failed] == [f"{chain}/submit_job"]
            assert result.experiments == {chain: ExperimentState.FAILED}
            assert statuses(exps, diamond)["a"] == (TaskStatus.SUCCEEDED, 1, True)
            assert statuses(exps, chain)["submit_job"][0] == TaskStatus.FAILED

            # a deposed leader's batch (the fence holds a newer epoch): it raises and its flags roll back with it
            with pytest.raises(FencedError):
                dags.advance(epoch - 1, [Outcome(f"{diamond}/b", 1, True)], [], time.time())
            assert statuses(exps, diamond)["b"] == (TaskStatus.DISPATCHED, 1, False)
            assert statuses(exps, diamond)["d"][0] == TaskStatus.PENDING

            # both branches in one batch (a fan-in): d is dispatched once
            result = dags.advance(epoch, [Outcome(f"{diamond}/b", 1, True), Outcome(f"{diamond}/c", 1, True)],
                                  [], time.time())
            assert [d.name for d in result.dispatches] == ["d"]
            result = dags.advance(epoch, [Outcome(f"{diamond}/d", 1, True)], [], time.time())
            assert result.experiments == {diamond: ExperimentState.COMPLETED}
        finally:
            for experiment_id in (chain, diamond):
                exps.cancel(experiment_id)
