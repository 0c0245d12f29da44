"""The soak benchmark's pure parts: growth per hour, the archive reader, the table and the plot."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from bench.soak import Row, archived, growth_per_hour, plot, render, soak_template


def row(minute: float, neo4j: float, rss: float = 100.0) -> Row:
    return Row(minute=minute, rss_mib={"node-1": rss, "mariadb": 200.0}, neo4j_mib=neo4j, mariadb_mib=300.0,
               tables_mib=10.0, stored=1000, queues={"haorch.requests": 3}, completed=600,
               advancements_per_s=40.0, p99_ms=250.0, submitted=6000, kills=0)


def test_growth_per_hour_skips_the_warm_up_and_fits_a_line() -> None:
    # warm-up (first third) jumps; afterwards +1 MiB a minute = +60 MiB/h
    rows = [row(0, 0.0), row(1, 50.0), row(2, 100.0)] + [row(m, 100.0 + (m - 2)) for m in range(3, 9)]
    assert abs(growth_per_hour(rows, lambda r: r.neo4j_mib) - 60.0) < 1e-6
    flat = [row(m, 500.0) for m in range(9)]
    assert growth_per_hour(flat, lambda r: r.neo4j_mib) == 0.0
    assert growth_per_hour(rows[:2], lambda r: r.neo4j_mib) != growth_per_hour(rows[:2], lambda r: r.neo4j_mib)


def test_archived_reads_every_line_of_every_file(tmp_path: Path) -> None:
    for day, ids in (("2026-12-05", ["a", "b"]), ("2026-12-06", ["c"])):
        with gzip.open(tmp_path / f"{day}.jsonl.gz", "wt", encoding="utf-8") as out:
            for experiment_id in ids:
                out.write(json.dumps({"experiment_id": experiment_id, "experiment": {"state": "COMPLETED"}}) + "\n")
    assert [r["experiment_id"] for r in archived(tmp_path)] == ["a", "b", "c"]


def test_the_template_keeps_its_experiments_for_the_retention_given() -> None:
    template = soak_template(3, retention_s=86.4)
    assert template.retention_days == 0.001 and template.topological_order() == ("step0", "step1", "step2")


def test_render_and_plot(tmp_path: Path) -> None:
    rows = [row(m, 100.0 + m) for m in range(1, 6)]
    result = {"when": "2026-12-06 18:00 UTC", "minutes": 5, "tasks": 4, "workers": 2, "capacity": 2000.0,
              "rate": 1000.0, "retention_s": 120, "kill_every_s": 180, "submitted": 6000, "submit_errors": 0,
              "kills": [{"acting_after_s": 0.1, "minute": 3.0, "phases": {"rescan": 0.012, "total": 0.09}}],
              "kill_minutes": [3.0], "rescan_end": {"ready": 0, "seconds": 0.004},
              "rows": [vars(r) for r in rows], "archive_mib": 1.0, "violations": 0, "double_advanced": 0,
              "accounting": {"stored_completed": 1000, "archived_completed": 5000, "other_state": 0, "lost": 0},
              "growth_per_hour": {"neo4j store": 60.0, "p99 ms": float("nan")}}
    text = render(result)
    assert text.count("\n| ") == 2 + len(rows) and "**lost 0**" in text and "neo4j store +60.0" in text
    assert "12 / 90 ms" in text and "0 ready tasks in 4 ms" in text
    assert plot(result, tmp_path / "soak.png").stat().st_size > 10_000
