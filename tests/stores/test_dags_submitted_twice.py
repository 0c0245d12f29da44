"""Two submission notices for one experiment in one leader batch (a publisher resends a notice the broker did not
confirm) dispatch its roots once: the hosts campaign found a root with two DISPATCHED rows of the same batch."""

from __future__ import annotations

import time
import uuid

import pytest

from node.config import Config
from node.experiments import Experiments

pytestmark = pytest.mark.stack


def test_a_repeated_submission_in_one_batch_dispatches_each_root_once(stack: Config) -> None:
    experiment_id = f"twice-{uuid.uuid4().hex[:8]}"
    with Experiments(stack) as exps:
        exps.install_builtins()
        exps.submit("diamond", experiment_id)
        dags = exps.dags
        epoch = dags.fence_epoch()
        try:
            result = dags.advance(epoch, [], [experiment_id, experiment_id], time.time())
            assert [d.name for d in result.dispatches] == ["a"]
        finally:
            exps.cancel(experiment_id)
