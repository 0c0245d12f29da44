"""The HPC rules (node/verify/hpc.py) on hand-built evidence, no site: one job per task unless an earlier one
failed, one COMPLETED job per completed experiment's task, no target staged twice; each names a planted violation
and is silent on a clean history. The journal line the stage executors write parses back."""

from __future__ import annotations

from node.hpc import slurm
from node.verify.hpc import (
    JobEvidence,
    Placement,
    SiteJob,
    StagingEvidence,
    evaluate_hpc,
    job_violations,
    parse_journal,
    staging_violations,
)
from node.worker.executors import ExecutionContext
from node.worker.hpc_executors import journal_entry

E, F = "exp-1", "exp-10"  # F's job names start with E's experiment id: the prefix must not confuse them


def job(job_id: int, experiment_id: str, attempt: int, state: str = "COMPLETED", task: str = "submit") -> SiteJob:
    return SiteJob(str(job_id), slurm.job_name(experiment_id, task, attempt), state, elements=3)


def evidence(*jobs: SiteJob, state: str = "COMPLETED") -> JobEvidence:
    return JobEvidence(tasks={(E, "submit"): state, (F, "submit"): state}, jobs=[job(90, F, 1), *jobs],
                       succeeded={(E, "submit"): 1, (F, "submit"): 1})


def kinds(found: list) -> list[str]:
    return [v.kind for v in found]


def test_one_completed_job_per_task_holds() -> None:
    ev = evidence(job(100, E, 1), job(101, "exp-2", 1), job(102, E, 1, task="monitor"))
    assert job_violations(ev) == []
    report = evaluate_hpc(ev, StagingEvidence())
    assert report.ok and report.tasks == 2 and report.jobs == 2 and report.jobs_per_task == {1: 2}
    assert report.job_states == {"COMPLETED": 2} and report.adopted == 0


def test_two_completed_jobs_for_one_task_are_violations() -> None:
    found = job_violations(evidence(job(100, E, 1), job(104, E, 2)))
    assert kinds(found) == ["job_twice", "job_outcome"]
    assert all(v.experiment_id == E for v in found)
    assert "job 104 was submitted after job 100" in found[0].detail
    assert "SLURM holds 2 COMPLETED jobs" in found[1].detail
    report = evaluate_hpc(evidence(job(100, E, 1), job(104, E, 2)), StagingEvidence())
    assert not report.ok and report.jobs_per_task == {1: 1, 2: 1} and report.by_kind() == {"job_twice": 1,
                                                                                        "job_outcome": 1}


def test_a_second_job_is_allowed_only_after_every_earlier_one_failed() -> None:
    assert job_violations(evidence(job(100, E, 1, "FAILED"), job(101, E, 2, "TIMEOUT"), job(102, E, 3))) == []
    # the same attempt's second job while the first still runs (a lost sbatch answer resubmitted) is one too many
    assert kinds(job_violations(evidence(job(100, E, 1, "RUNNING"), job(101, E, 1, "COMPLETED")))) == ["job_twice"]
    # a completed job, then a failed one: the second should never have been submitted
    assert kinds(job_violations(evidence(job(100, E, 1), job(101, E, 2, "CANCELLED")))) == ["job_twice"]


def test_a_completed_experiment_needs_its_completed_job() -> None:
    assert kinds(job_violations(evidence())) == ["job_outcome"]  # no job at all
    assert kinds(job_violations(evidence(job(100, E, 1, "FAILED")))) == ["job_outcome"]
    # a failed experiment may end without a completed job
    assert job_violations(JobEvidence({(E, "submit"): "FAILED"}, [job(100, E, 1, "FAILED")])) == []


def test_a_job_adopted_by_a_later_attempt_is_counted() -> None:
    ev = JobEvidence({(E, "submit"): "COMPLETED"}, [job(100, E, 1)], succeeded={(E, "submit"): 2})
    report = evaluate_hpc(ev, StagingEvidence())
    assert report.ok and report.adopted == 1


def placement(target: str, inode: int, attempt: int = 1, part: str | None = None, side: str = "site") -> Placement:
    return Placement(side, target, part or f"{target}.part{inode}", inode, "ab" * 32, E, "stage_in", attempt)


def test_staging_once_holds() -> None:
    ev = StagingEvidence([placement("/w/a", 11), placement("/d/r", 21, side="local")],
                         {("site", "/w/a"): 11, ("site", "/w/a.part11"): None, ("local", "/d/r"): 21,
                          ("local", "/d/r.part21"): None},
                         {("site", "/w/a"): E, ("local", "/d/r"): E})
    assert staging_violations(ev) == []
    report = evaluate_hpc(JobEvidence(), ev)
    assert report.ok and (report.placements, report.targets, report.not_placed, report.expected_targets) == (2, 2, 0, 2)


def test_a_target_placed_twice_is_a_violation() -> None:
    # attempt 1 renamed inode 11 into place; attempt 2 staged the same place again (inode 12 is there now)
    ev = StagingEvidence([placement("/w/a", 11), placement("/w/a", 12, attempt=2)],
                         {("site", "/w/a"): 12, ("site", "/w/a.part11"): None, ("site", "/w/a.part12"): None},
                         {("site", "/w/a"): E})
    found = staging_violations(ev)
    assert kinds(found) == ["staged_twice"] and "attempt 1 (inode 11) was placed and then replaced" in found[0].detail


def test_a_placement_interrupted_before_its_rename_is_not_twice() -> None:
    # attempt 1 journaled and died before the rename: its temporary file (inode 11) is still there
    ev = StagingEvidence([placement("/w/a", 11), placement("/w/a", 12, attempt=2)],
                         {("site", "/w/a"): 12, ("site", "/w/a.part11"): 11, ("site", "/w/a.part12"): None},
                         {("site", "/w/a"): E})
    assert staging_violations(ev) == []
    assert evaluate_hpc(JobEvidence(), ev).not_placed == 1


def test_missing_or_unjournaled_targets_and_torn_lines_are_violations() -> None:
    ev = StagingEvidence([placement("/w/a", 11)], {("site", "/w/a"): 99, ("site", "/w/a.part11"): None,
                                                   ("site", "/w/b"): None},
                         {("site", "/w/a"): E, ("site", "/w/b"): E}, unreadable=["12 {\"v\": 1, \"tar"])
    found = staging_violations(ev)
    # /w/a: its journaled inode 11 was replaced (twice) by a file no placement journaled (unjournaled)
    assert sorted(kinds(found)) == ["journal_unreadable", "staged_twice", "staged_unjournaled", "staged_unjournaled"]
    assert any("/w/b is missing" in v.detail for v in found)


def test_the_executors_journal_line_parses_back() -> None:
    ctx = ExecutionContext(E, "stage_in", 3, seed=0, home="/h")
    text = journal_entry(4242, "/w/a b.txt", "/w/.a b.txt.haorch-1.part", "cd" * 32, ctx) + "\n\n" + "junk\n"
    placements, bad = parse_journal(text, "site")
    assert placements == [Placement("site", "/w/a b.txt", "/w/.a b.txt.haorch-1.part", 4242, "cd" * 32, E,
                                    "stage_in", 3)]
    assert bad == ["junk"]
