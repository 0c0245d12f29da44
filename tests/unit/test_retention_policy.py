"""Retention without a stack: the periods per type, the leader's gc pace, the archive's gzip JSON lines (and a member
cut by a crash), and the verifier's reading of archived experiments."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from node.model.builtin import builtin_templates
from node.model.executors import KNOWN_EXECUTORS
from node.retention.archive import Archive, complete_end, day_file, read_archive, read_lines
from node.retention.collector import CATCH_UP_INTERVALS, MIN_YIELD_S, StepResult, pause
from node.retention.policy import DAY_S, Policy
from node.stores.graph_record import template_definition
from node.verify.archived import add_archived, epoch_first_acts
from node.verify.check import evaluate
from node.verify.snapshot import Scope, Snapshot

NOW = 1_800_000_000.0


def test_a_types_own_period_wins_over_the_default_and_zero_keeps_forever() -> None:
    chain = builtin_templates(KNOWN_EXECUTORS)[0]
    definitions = {"chain": template_definition(chain), "short": json.dumps({"type": "short", "retention_days": 2}),
                   "forever": json.dumps({"retention_days": 0}), "same": json.dumps({"retention_days": 30}),
                   "broken": "{not json"}
    policy = Policy.from_definitions(30, definitions)
    assert policy.days("chain") == 30 and policy.days("short") == 2 and policy.days("forever") == 0
    assert policy.days("unknown") == 30 and policy.days("broken") == 30
    cutoffs = policy.cutoffs(NOW)
    assert cutoffs.default == NOW - 30 * DAY_S
    assert cutoffs.of("short") == NOW - 2 * DAY_S and cutoffs.of("forever") is None
    assert "same" not in cutoffs.by_type and cutoffs.of("same") == cutoffs.default  # left to the default's range
    assert cutoffs.any


def test_a_default_of_zero_keeps_everything_but_what_a_type_limits() -> None:
    assert not Policy.from_definitions(0, {}).cutoffs(NOW).any
    cutoffs = Policy.from_definitions(0, {"short": json.dumps({"retention_days": 0.5})}).cutoffs(NOW)
    assert cutoffs.default is None and cutoffs.of("short") == NOW - 0.5 * DAY_S and cutoffs.any


def records(*ids: str) -> list[dict]:
    return [{"experiment_id": i, "experiment": {"state": "COMPLETED"}, "graph": {"tasks": []}} for i in ids]


def test_the_archive_is_one_gzip_file_per_utc_day_of_json_lines(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "a")
    path = archive.append(records("e1", "e2"), NOW)
    assert archive.append(records("e3"), NOW) == path == day_file(tmp_path / "a", NOW)
    assert path.name == "2027-01-15.jsonl.gz"
    archive.append(records("e4"), NOW + DAY_S)
    with gzip.open(path, "rt") as f:  # several members read as one stream
        assert [json.loads(line)["experiment_id"] for line in f] == ["e1", "e2", "e3"]
    assert sorted(read_archive(tmp_path / "a")) == ["e1", "e2", "e3", "e4"]
    assert read_archive(tmp_path / "missing") == {}


def test_a_member_cut_by_a_crash_is_truncated_by_the_next_writer(tmp_path: Path) -> None:
    path = Archive(tmp_path).append(records("e1"), NOW)
    good = path.stat().st_size
    with open(path, "ab") as f:  # a crash mid-append: half a member
        f.write(gzip.compress(b'{"experiment_id": "cut"}\n')[:15])
    assert [r["experiment_id"] for r in read_lines(path)] == ["e1"]  # readers stop at the last complete member
    with open(path, "rb") as f:
        assert complete_end(f, 0) == good
    Archive(tmp_path).append(records("e2"), NOW)  # a new writer (another process) cuts it first
    with gzip.open(path, "rt") as f:
        assert [json.loads(line)["experiment_id"] for line in f] == ["e1", "e2"]


def test_a_day_file_of_thousands_of_members_reads_whole_and_in_order(tmp_path: Path) -> None:
    """A day of retention appends thousands of members (one per step); they are read streamed, member by member
    (gzip.decompress() copied the rest of the file for each: minutes for a day file of 10,000 members)."""
    archive = Archive(tmp_path)
    path = Path()
    for step in range(2000):
        path = archive.append(records(f"e{step}a", f"e{step}b"), NOW)
    with open(path, "ab") as f:  # and a member cut at the end
        f.write(gzip.compress(b'{"experiment_id": "cut"}\n')[:15])
    ids = [r["experiment_id"] for r in read_lines(path)]
    assert ids == [f"e{step}{half}" for step in range(2000) for half in "ab"]


def test_the_last_record_wins_but_one_without_the_graph_keeps_the_earlier_graph(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.append([{"experiment_id": "e1", "n": 1, "graph": {"tasks": [1]}}], NOW)
    archive.append([{"experiment_id": "e1", "n": 2, "graph": None}], NOW)  # archived again after Neo4j's delete
    assert read_archive(tmp_path)["e1"] == {"experiment_id": "e1", "n": 2, "graph": {"tasks": [1]}}


def row(i: int, task: str | None, to: str, attempt: int, at: float, epoch: int = 3, node: str = "node-1") -> dict:
    return {"id": i, "experiment_id": "e1", "task": task, "from_state": None, "to_state": to, "attempt": attempt,
            "epoch": epoch, "node_id": node, "at": at, "detail": None}


def archived_record(transitions: list[dict]) -> dict:
    tasks = [{"name": "a", "executed": True, "flags": 1, "finished_at": 12.0, "attempt": 1, "depends_on": []},
             {"name": "b", "executed": True, "flags": 1, "finished_at": 14.0, "attempt": 1, "depends_on": ["a"]}]
    ledger = [{"id": 1, "experiment_id": "e1", "task": "a", "attempt": 1, "worker": "w1", "started_at": 11.0,
               "replayed_count": 1},
              {"id": 2, "experiment_id": "e1", "task": "b", "attempt": 1, "worker": "w1", "started_at": 13.0,
               "replayed_count": 0}]
    return {"experiment_id": "e1", "experiment": {"experiment_id": "e1", "state": "COMPLETED", "created_at": 9.0},
            "transitions": transitions, "ledger": ledger,
            "graph": {"experiment": {"state": "COMPLETED"}, "tasks": tasks}}


GOOD = [row(1, None, "QUEUED", 0, 9.0, epoch=0, node="submit"), row(2, "a", "DISPATCHED", 1, 10.0),
        row(3, "a", "SUCCEEDED", 1, 12.0), row(4, "b", "DISPATCHED", 1, 12.0), row(5, "b", "SUCCEEDED", 1, 14.0),
        row(6, None, "COMPLETED", 0, 14.0)]


def test_the_verifier_checks_archived_experiments_that_mariadb_no_longer_has() -> None:
    snapshot = Snapshot(scope=Scope(experiment_ids=["e1", "e2"]))
    assert add_archived(snapshot, {"e1": archived_record(GOOD)}) == 1
    report = evaluate(snapshot)
    assert report.ok, report.to_markdown()
    assert (report.experiments, report.tasks, report.transitions, report.executions, report.replays,
            report.archived) == (1, 2, 6, 2, 1, 1)
    assert epoch_first_acts([archived_record(GOOD)]) == {3: 10.0}


def test_archived_violations_are_found_and_out_of_scope_or_present_ones_are_not_read() -> None:
    bad = [*GOOD[:3], row(4, "b", "DISPATCHED", 1, 11.0), row(7, "a", "DISPATCHED", 1, 10.5), *GOOD[4:]]
    snapshot = Snapshot(scope=Scope(experiment_ids=["e1"]))
    add_archived(snapshot, {"e1": archived_record(bad)})
    kinds = evaluate(snapshot).by_kind()
    assert kinds.get("order_dispatch") and kinds.get("double_dispatch"), kinds
    present = Snapshot(scope=Scope(experiment_ids=["e1"]), experiments={"e1": "COMPLETED"})
    assert add_archived(present, {"e1": archived_record(bad)}) == 0  # MariaDB has it: read from the stores
    assert add_archived(Snapshot(scope=Scope(since=10.0)), {"e1": archived_record(GOOD)}) == 0  # created before


def test_the_gc_pace_waits_an_interval_when_caught_up_and_yields_only_briefly_when_far_behind() -> None:
    interval, batch = 5.0, 100
    full = StepResult(found=batch, deleted=["x"] * batch, seconds=0.2, lag_s=1.0)
    assert pause(StepResult(found=40, deleted=["x"] * 40, seconds=0.2), batch, interval) == interval
    assert pause(StepResult(found=batch, kept=["x"] * batch, seconds=0.2), batch, interval) == interval
    assert pause(full, batch, interval) == 0.2  # a full batch: as long as the step took
    assert pause(StepResult(found=batch, deleted=["x"], seconds=0.01), batch, interval) == MIN_YIELD_S
    near = CATCH_UP_INTERVALS * interval
    assert pause(StepResult(found=batch, deleted=["x"], seconds=0.2, lag_s=near), batch, interval) == 0.2
    assert pause(StepResult(found=batch, deleted=["x"], seconds=0.2, lag_s=near + 1), batch, interval) == MIN_YIELD_S
