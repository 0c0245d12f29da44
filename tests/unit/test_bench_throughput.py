"""``bench throughput``'s pure parts: the CPU window and the table."""

from __future__ import annotations

import os
from pathlib import Path

from bench import floor
from bench.cpu import CpuSampler
from bench.throughput import render
from node.config import load_config
from node.runtime.process import cpu_seconds


def test_cpu_between_takes_the_samples_inside_the_window_and_groups_by_kind(tmp_path: Path) -> None:
    cpu = CpuSampler(load_config(tmp_path))
    cpu.samples = [
        (9.0, {"neo4j": 1.0}),                                          # before the window
        (10.0, {"neo4j": 2.0, "node-1": 5.0, "worker-1": 1.0}),
        (11.0, {"neo4j": 2.5, "node-1": 5.5, "worker-1": 1.5, "worker-2": 9.0}),
        (12.0, {"neo4j": 3.0, "node-1": 6.0, "worker-1": 2.0, "worker-2": 9.9, "rabbitmq-1": 4.0}),
        (13.0, {"neo4j": 99.0}),                                        # after it
    ]
    t0, t1, used = cpu.between(10.0, 12.5)
    assert (t0, t1) == (10.0, 12.0)
    # worker-2 and rabbitmq-1 started inside the window: left out, not counted from zero
    assert used == {"neo4j": 1.0, "node": 1.0, "worker": 1.0}
    assert cpu.between(10.5, 11.5) == (10.5, 10.5, {})                  # one sample inside: no rate


def test_cpu_seconds_reads_this_process() -> None:
    before = cpu_seconds([os.getpid()])
    sum(i * i for i in range(2_000_000))
    after = cpu_seconds([os.getpid()])
    assert before is not None and after is not None and after > before
    assert cpu_seconds([2**22 + 1]) is None                           # no such pid


def test_render_shows_the_cpu_table_and_the_floor() -> None:
    run = {"batch_size": 200, "experiments": 10, "advancements": 40, "seconds": 2.0, "rate": 20.0,
           "hop_p50_ms": 5.0, "hop_p99_ms": 9.0, "cpu_us": {"neo4j": 200.0, "node": 150.0}}
    f = {"neo4j_write_p50_ms": 2.0, "queue_hop_p50_ms": 1.5, "mariadb_commit_p50_ms": 1.0, "samples": 5}
    f["floor_ms"] = floor.NEO4J_WRITES * 2.0 + floor.QUEUE_HOPS * 1.5 + floor.MARIADB_COMMITS * 1.0
    text = render({"when": "now", "runs": [run, run | {"batch_size": 1, "cpu_us": {}}], "speedup": 1.0,
                   "idle_e2e_p50_ms": 60.0, "idle_e2e_p99_ms": 90.0, "floor": f, "workers": 2,
                   "idle_parts_ms": {"submit → 1st start": 20.0, "hop 1→2": 12.5}})
    assert "| neo4j | node | total |" in text and "| 200 | 150 | 350 |" in text
    assert "submit → 1st start 20.0 ms, hop 1→2 12.5 ms" in text
    assert f"= **{f['floor_ms']:.1f} ms**" in text and f"the rest, {60 - f['floor_ms']:.0f} ms" in text
