"""Concurrency pools without servers: which names and slots a pool takes, that the queries without bounded pools are
the ones without pools, and that a leader term hands the pools' limits to the DAG store when it takes over and at
every sweep, and sets the pools' gauges (its Neo4j side is tested on the real stack: tests/core/test_pools.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.broker import StubBroker
from fakes.dags import FakeDagStore
from fakes.journal import Journal
from fakes.records import FakeRecords

from node import metrics
from node.config import Config
from node.errors import UsageError
from node.leader.term import LeaderTerm, PhaseClock
from node.stores.dags import _hold, _unbounded
from node.stores.pools import MAX_SLOTS, check_pool, pool_problem


@pytest.mark.parametrize("name", ["gpu", "data_staging", "Job Submission", "x" * 64, "kind.v2"])
def test_any_kind_names_a_pool(name: str) -> None:
    assert pool_problem(name) is None
    check_pool(name, 1)


@pytest.mark.parametrize("name", ["", " gpu", "gpu ", "x" * 65, "tab\there", "line\nbreak"])
def test_a_pool_name_is_one_to_64_printable_characters_without_surrounding_spaces(name: str) -> None:
    assert pool_problem(name) is not None
    with pytest.raises(UsageError, match="invalid pool name"):
        check_pool(name, 1)


@pytest.mark.parametrize("slots", [0, -1, MAX_SLOTS + 1, True, 2.0])
def test_slots_are_an_integer_of_at_least_one(slots: Any) -> None:
    with pytest.raises(UsageError, match="slots must be an integer"):
        check_pool("gpu", slots)


def test_a_description_fits_its_column() -> None:
    check_pool("gpu", 2, "d" * 255)
    with pytest.raises(UsageError, match="at most 255"):
        check_pool("gpu", 2, "d" * 256)


def test_without_bounded_pools_the_dispatch_queries_are_unchanged() -> None:
    assert _hold("s", {}) == "" and _unbounded("t", {}) == ""
    assert "$bounded" in _hold("s", {"gpu": 2}) and "$bounded" in _unbounded("t", {"gpu": 2})


class PooledDags(FakeDagStore):
    """The fake DAG store with the pools' read side: ``usage`` is what :meth:`pool_usage` answers."""

    def __init__(self, journal: Journal) -> None:
        super().__init__(journal)
        self.pools: dict[str, int] = {}
        self.usage: dict[str, dict[str, int]] = {}
        self.usage_reads: list[list[str]] = []

    def pool_usage(self, names: list[str], now: float) -> dict[str, dict[str, int]]:
        self.usage_reads.append(names)
        return {n: self.usage[n] for n in names if n in self.usage}


class Limits:
    def __init__(self, limits: dict[str, int]) -> None:
        self.now = limits

    def limits(self) -> dict[str, int]:
        return dict(self.now)


@contextlib.contextmanager
def _no_guard(epoch: int) -> Iterator[None]:
    yield


def _term(dags: PooledDags, journal: Journal, limits: Limits) -> LeaderTerm:
    records = FakeRecords(journal)
    dags.fence = records.fence = 1
    return LeaderTerm(Config(home=Path("/nonexistent")), "node-1", 2, dags=dags, records=records,
                      publisher=StubBroker(journal).publisher(), open_consumer=lambda: None,
                      fence_guard=_no_guard, acting=lambda: True, clock=PhaseClock(), pools=limits)


def _sample(gauge: Any, pool: str) -> float | None:
    return metrics.NODE_REGISTRY.get_sample_value(gauge._name, {"pool": pool})


def test_the_term_reads_the_limits_at_takeover_and_each_sweep_and_sets_the_gauges() -> None:
    journal = Journal()
    dags = PooledDags(journal)
    limits = Limits({"gpu": 2})
    term = _term(dags, journal, limits)
    term.take_over()
    assert dags.pools == {"gpu": 2}  # before anything is dispatched
    dags.usage = {"gpu": {"in_use": 2, "waiting": 5}}
    term.sweep()
    assert (_sample(metrics.POOL_SLOTS, "gpu"), _sample(metrics.POOL_IN_USE, "gpu"),
            _sample(metrics.POOL_WAITING, "gpu")) == (2.0, 2.0, 5.0)
    limits.now = {"gpu": 3, "tape": 1}
    dags.usage["tape"] = {"in_use": 0, "waiting": 0}
    term.sweep()
    assert dags.pools == {"gpu": 3, "tape": 1} and _sample(metrics.POOL_SLOTS, "gpu") == 3.0
    limits.now = {"tape": 1}
    term.sweep()  # gpu's limit was lifted: its series go
    assert _sample(metrics.POOL_SLOTS, "gpu") is None and _sample(metrics.POOL_SLOTS, "tape") == 1.0
    limits.now = {}
    reads = len(dags.usage_reads)
    term.sweep()
    assert dags.pools == {} and len(dags.usage_reads) == reads  # no pool bounded: no read at all
    assert _sample(metrics.POOL_SLOTS, "tape") is None
