"""``bench durations``' pure parts: how many chains, the exactly-once verdict, the hops and the table."""

from __future__ import annotations

import dataclasses

from bench.durations import MAX_CHAINS, Part, busy_share, chains_for, render, sleep_template
from bench.throughput import hops


def part(**changes: object) -> Part:
    base = Part(ms=100, chains=10, advancements=40, seconds=2.0, ideal_per_s=320.0, utilization=0.9, hop_p50_ms=5.0,
                hop_p99_ms=9.0, max_requests_ready=700, ledger_rows=40, replayed=0, second_attempts=0, completed=10,
                cpu_us={"neo4j": 100.0, "worker": 50.0})
    return dataclasses.replace(base, **changes)


def test_chains_cover_the_target_and_a_backlog_beyond_the_prefetch() -> None:
    assert chains_for(100, workers=2, concurrency=16, target_s=20, prefetch=200) == 1600   # 320/s × 20 s / 4
    assert chains_for(1000, workers=2, concurrency=16, target_s=20, prefetch=200) == 600   # 1.5 × 2 × 200
    assert chains_for(0, workers=2, concurrency=16, target_s=20, prefetch=200) == MAX_CHAINS


def test_exactly_once_needs_one_row_per_task_no_replay_no_retry_and_every_chain_completed() -> None:
    assert part().exactly_once
    for broken in ({"ledger_rows": 41}, {"ledger_rows": 39}, {"replayed": 1}, {"second_attempts": 1},
                   {"completed": 9}):
        assert not part(**broken).exactly_once, broken


def test_hops_go_from_each_end_to_the_successors_start() -> None:
    runs = [("e1", "stage_in", 0.0, 1.0), ("e1", "submit_job", 1.010, 2.0), ("e1", "monitor", 2.5, 3.0),
            ("e2", "stage_in", 0.0, 1.0)]                                   # e2's successor never ran: no hop
    assert [round(h) for h in hops(runs)] == [10, 500]


def test_the_template_is_a_chain_of_sleep_tasks_reading_ms() -> None:
    template = sleep_template()
    assert [t.executor for t in template.tasks] == ["sleep"] * 4 and "ms" in template.params


def test_render_marks_a_run_that_was_not_exactly_once() -> None:
    good, bad = part(), part(ms=0, ideal_per_s=None, utilization=None, replayed=2)
    result = {"when": "now", "workers": 2, "concurrency": 16, "prefetch": 200, "batch_size": 200, "target_s": 20,
              "parts": [{**dataclasses.asdict(p), "rate": p.rate, "exactly_once": p.exactly_once} for p in (good, bad)]}
    table = render(result)
    assert "| 100 | 10 | 20 | 320 | 6 % | 90 % | 5.0 / 9.0 | 700 | 150 | yes" in table
    assert "| 0 | 10 | 20 | — | — | — |" in table and "| NO (40 rows, 2 replayed" in table


def test_busy_share_clips_each_execution_to_the_window() -> None:
    runs = [("e", "a", 0.0, 2.0), ("e", "b", 1.5, 1.75), ("e", "c", 3.0, 4.0)]    # the last is after the window
    assert busy_share(runs, threads=2, start=1.0, end=2.0) == (1.0 + 0.25) / 2
