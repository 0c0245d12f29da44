"""node/hpc/slurm.py without a server: names, scripts, squeue/sacct parsing (outputs captured from SLURM 22.05),
the adoption decision and the terminal-state mapping."""

from __future__ import annotations

import pytest

from node.hpc import slurm
from node.hpc.slurm import Job, JobOptions, JobRow, SlurmInputError

# squeue -h -r -t all -O SQUEUE_FORMAT, SLURM 22.05.8: a failed job, a completed one, an array with 3 ended
# elements and one running (element ids 4-6 are the elements' own job ids, 3 the array's)
SQUEUE_OUT = """\
2|2|N/A|COMPLETED|0|0:04|None|haorch.x.y.a2|
6|3|2|COMPLETED|0|0:04|None|arr|
5|3|1|COMPLETED|0|0:04|None|arr|
4|3|0|COMPLETED|0|0:04|None|arr|
1|1|N/A|FAILED|768|0:01|NonZeroExitCode|haorch.x.y.a1|
3|3|3|RUNNING|0|0:00|None|arr|
"""
# sacct -n -P -X -o SACCT_FORMAT
SACCT_OUT = """\
1|1|FAILED|3:0|00:00:01|None|haorch.x.y.a1
2|2|COMPLETED|0:0|00:00:04|None|haorch.x.y.a2
3_0|4|COMPLETED|0:0|00:00:04|None|arr
3_1|5|COMPLETED|0:0|00:00:04|None|arr
3_[2-3]|3|PENDING|0:0|00:00:00|None|arr
9|9|CANCELLED by 0|0:15|00:01:02|None|haorch.x.y.a3
"""


def job(job_id: str, state: str, name: str = "haorch.e.t.a1", exit_code: str = "0:0", elements: int = 0,
        element_states: list[str] | None = None) -> Job:
    if not elements:
        return Job(job_id, name, (JobRow(job_id, None, state, exit_code, "00:00:01", "None", name),))
    states = element_states or [state] * elements
    return Job(job_id, name, tuple(JobRow(job_id, str(i), s, exit_code, "00:00:01", "None", name)
                                   for i, s in enumerate(states)))


def test_job_names_are_distinct_and_carry_the_attempt() -> None:
    assert slurm.job_name("exp-1", "submit", 2) == "haorch.exp-1.submit.a2"
    assert slurm.attempt_of("haorch.exp-1.submit.a2", slurm.task_prefix("exp-1", "submit")) == 2
    assert slurm.attempt_of("haorch.exp-1.submit.a2", slurm.task_prefix("exp-1", "sub")) is None
    assert slurm.attempt_of("haorch.exp-1.submit.a02", slurm.task_prefix("exp-1", "submit")) is None
    # ids that are not name-safe, or long, become a readable part and a hash; '.' separates, so no two differ
    # only by where the experiment ends and the task begins
    odd = slurm.job_name("exp.1", "a b/c", 7)
    assert odd.startswith("haorch.exp_1+") and ".a_b_c+" in odd and odd.endswith(".a7")
    assert slurm.job_name("exp", "1.x", 1) != slurm.job_name("exp.1", "x", 1)
    assert slurm.job_name("exp-1", "t", 1) != slurm.job_name("exp_1", "t", 1)
    longest = slurm.job_name("e" * 64, "t" * 64, 2**31 - 1)
    assert len(longest) < 90 and slurm.attempt_of(longest, slurm.task_prefix("e" * 64, "t" * 64)) == 2**31 - 1
    assert all(slurm.job_name("exp-1", "t", 3).startswith(p)
               for p in (slurm.experiment_prefix("exp-1"), slurm.task_prefix("exp-1", "t")))
    assert not slurm.job_name("exp-10", "t", 1).startswith(slurm.experiment_prefix("exp-1"))


def test_lookup_names_cover_every_attempt_up_to_this_one() -> None:
    assert slurm.lookup_names("e", "t", 3) == ["haorch.e.t.a1", "haorch.e.t.a2", "haorch.e.t.a3"]
    many = slurm.lookup_names("e", "t", 250)
    assert len(many) == slurm.LOOKUP_ATTEMPTS and many[-1] == "haorch.e.t.a250"


def test_options_are_checked_and_rendered() -> None:
    opts = slurm.parse_options({"partition": "debug", "time": "00:05:00", "array": "0-9%2", "ntasks": "2",
                                "cpus_per_task": 4}, default_partition="other")
    assert opts == JobOptions(partition="debug", time="00:05:00", array="0-9%2", ntasks=2, cpus_per_task=4)
    assert slurm.parse_options({}, default_partition="batch").partition == "batch"
    assert slurm.parse_options({}).directives() == []
    script = slurm.render_script("#!/bin/sh\necho hi\n", "haorch.e.t.a1", "/w/e/t", opts)
    assert script.splitlines() == [
        "#!/bin/sh", "#SBATCH --job-name=haorch.e.t.a1", "#SBATCH --chdir=/w/e/t",
        "#SBATCH --output=/w/e/t/slurm-%A_%a.out", "#SBATCH --partition=debug", "#SBATCH --time=00:05:00",
        "#SBATCH --array=0-9%2", "#SBATCH --ntasks=2", "#SBATCH --cpus-per-task=4", "echo hi"]
    plain = slurm.render_script("echo hi", "n", "/w", JobOptions())
    assert plain.splitlines()[:4] == ["#!/bin/bash", "#SBATCH --job-name=n", "#SBATCH --chdir=/w",
                                      "#SBATCH --output=/w/slurm-%j.out"]


@pytest.mark.parametrize(("params", "message"), [
    ({"partition": "debug\n#SBATCH --uid=0"}, "must be one line"),
    ({"time": "1:00\r"}, "must be one line"),
    ({"partition": "a b"}, "cannot have"),
    ({"array": "0-3;rm"}, "cannot have"),
    ({"ntasks": 0}, "integer from 1"),
    ({"cpus_per_task": "x"}, "integer from 1"),
    ({"ntasks": True}, "integer from 1"),
    ({"time": ["1"]}, "one line of text"),
])
def test_bad_options_are_refused_in_one_line(params: dict, message: str) -> None:
    with pytest.raises(SlurmInputError, match=message) as caught:
        slurm.parse_options(params)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("workdir", ["rel/dir", "/w/a b", "/w/%j", "/w/$HOME", "/w/../etc", "/w/x\ny", "/w/'q'"])
def test_workdirs_that_would_break_a_directive_are_refused(workdir: str) -> None:
    with pytest.raises(SlurmInputError, match="absolute path"):
        slurm.render_script("true", "n", workdir, JobOptions())


def test_empty_script_is_refused() -> None:
    with pytest.raises(SlurmInputError, match="empty"):
        slurm.render_script(" \n", "n", "/w", JobOptions())


def test_array_size() -> None:
    assert slurm.array_size(None) == 0
    assert slurm.array_size("0-9") == 10
    assert slurm.array_size("1,3,5-7") == 5
    assert slurm.array_size("0-15:4%2") == 4
    assert slurm.array_size("2,2") == 1
    with pytest.raises(SlurmInputError):
        slurm.array_size("9-0")


def test_parse_sbatch() -> None:
    assert slurm.parse_sbatch("123\n") == "123"
    assert slurm.parse_sbatch("124;cluster\n") == "124"
    with pytest.raises(ValueError, match="no job id"):
        slurm.parse_sbatch("Submitted batch job 5\n")


def test_parse_squeue_groups_array_elements_by_the_array_id() -> None:
    jobs = slurm.group_jobs(slurm.parse_squeue(SQUEUE_OUT + "slurm_load_jobs error: Invalid job id specified\n"))
    assert list(jobs) == ["1", "2", "3"]
    assert jobs["1"].state == "FAILED" and jobs["1"].rows[0].exit_code == "3:0"
    assert jobs["1"].name == "haorch.x.y.a1"
    array = jobs["3"]
    assert array.is_array and [r.element for r in array.rows] == ["0", "1", "2", "3"]
    assert not array.terminal and array.state == "RUNNING"
    assert slurm.status_line(array) == "job 3 RUNNING (3 of 4 array tasks ended)"


def test_parse_sacct_states_and_pending_array_ranges() -> None:
    jobs = slurm.group_jobs(slurm.parse_sacct(SACCT_OUT))
    assert jobs["9"].state == "CANCELLED" and jobs["9"].terminal
    array = jobs["3"]
    assert [r.element for r in array.rows] == ["0", "1", "[2-3]"] and not array.terminal


def test_merge_prefers_squeue_for_jobs_it_holds() -> None:
    merged = slurm.merge_jobs(slurm.parse_squeue(SQUEUE_OUT), slurm.parse_sacct(SACCT_OUT))
    assert [j.job_id for j in merged] == ["1", "2", "3", "9"]
    assert len(merged[2].rows) == 4  # squeue's rows, not sacct's 3


def test_wait_status_exit_code() -> None:
    assert slurm.wait_status_exit_code("768") == "3:0"
    assert slurm.wait_status_exit_code("15") == "0:15"
    assert slurm.wait_status_exit_code("0") == "0:0"


PREFIX = slurm.task_prefix("e", "t")


@pytest.mark.parametrize("state", ["PENDING", "RUNNING", "COMPLETING", "COMPLETED", "SUSPENDED", "REQUEUED"])
def test_a_live_or_completed_job_of_an_earlier_attempt_is_adopted(state: str) -> None:
    found = [job("10", state, "haorch.e.t.a1")]
    decision = slurm.decide(found, PREFIX, attempt=2)
    assert decision.adopt is found[0] and decision.adopt_attempt == 1 and not decision.submit


def test_a_job_of_this_attempt_is_adopted_on_a_rerun() -> None:
    decision = slurm.decide([job("10", "RUNNING", "haorch.e.t.a2")], PREFIX, attempt=2)
    assert decision.adopt is not None and decision.adopt_attempt == 2


@pytest.mark.parametrize("state", sorted(slurm.FAILURE_STATES))
def test_a_new_job_only_after_earlier_ones_failed(state: str) -> None:
    found = [job("10", state, "haorch.e.t.a1"), job("11", "FAILED", "haorch.e.t.a2", "1:0")]
    assert slurm.decide(found, PREFIX, attempt=3) == slurm.Decision(submit=True)


def test_no_job_found_submits() -> None:
    assert slurm.decide([], PREFIX, 1) == slurm.Decision(submit=True)
    other = [job("10", "RUNNING", "haorch.e.u.a1"), job("11", "RUNNING", "haorch.e.t.a9")]
    assert slurm.decide(other, PREFIX, 1).submit  # another task's job, and a later attempt's, are not this one's


def test_a_failed_job_of_this_attempt_fails_the_attempt() -> None:
    decision = slurm.decide([job("10", "TIMEOUT", "haorch.e.t.a2", "0:15")], PREFIX, attempt=2)
    assert decision.failure is not None and not decision.submit
    assert decision.failure.startswith("job 10 ended TIMEOUT (exit 0:15)")


def test_the_oldest_usable_job_is_adopted_when_a_race_made_two() -> None:
    found = [job("12", "RUNNING", "haorch.e.t.a2"), job("10", "COMPLETED", "haorch.e.t.a1"),
             job("9", "FAILED", "haorch.e.t.a1")]
    decision = slurm.decide(found, PREFIX, attempt=3)
    assert decision.adopt is not None and decision.adopt.job_id == "10"


def test_an_array_is_usable_while_any_element_runs_and_failed_when_one_failed() -> None:
    running = job("10", "", "haorch.e.t.a1", elements=3, element_states=["COMPLETED", "FAILED", "RUNNING"])
    assert slurm.decide([running], PREFIX, 2).adopt is running
    failed = job("10", "", "haorch.e.t.a1", elements=3, element_states=["COMPLETED", "FAILED", "COMPLETED"])
    assert slurm.decide([failed], PREFIX, 2).submit


@pytest.mark.parametrize(("state", "exit_code", "reason"), [
    ("COMPLETED", "0:0", None),
    ("FAILED", "3:0", "job 7 ended FAILED (exit 3:0)"),
    ("TIMEOUT", "0:15", "job 7 ended TIMEOUT (exit 0:15)"),
    ("CANCELLED", "0:15", "job 7 ended CANCELLED (exit 0:15)"),
    ("NODE_FAIL", "0:0", "job 7 ended NODE_FAIL (exit 0:0)"),
    ("OUT_OF_MEMORY", "0:125", "job 7 ended OUT_OF_MEMORY (exit 0:125)"),
    ("BOOT_FAIL", "0:0", "job 7 ended BOOT_FAIL (exit 0:0)"),
    ("DEADLINE", "0:0", "job 7 ended DEADLINE (exit 0:0)"),
    ("PREEMPTED", "0:0", "job 7 ended PREEMPTED (exit 0:0)"),
])
def test_terminal_states_map_to_outcomes(state: str, exit_code: str, reason: str | None) -> None:
    ok, text = slurm.outcome(job("7", state, exit_code=exit_code))
    assert ok is (reason is None)
    if reason is not None:
        assert text == reason


def test_array_outcomes() -> None:
    done = job("7", "COMPLETED", elements=4)
    assert slurm.outcome(done) == (True, "job 7 ended COMPLETED (4 array tasks)")
    mixed = job("7", "", elements=4, element_states=["COMPLETED", "TIMEOUT", "FAILED", "COMPLETED"])
    ok, text = slurm.outcome(mixed)
    assert not ok and mixed.state == "TIMEOUT"
    assert text == "job 7 ended TIMEOUT: 2 of 4 array tasks failed, first 7_1 TIMEOUT (exit 0:0)"
    assert mixed.counts() == {"COMPLETED": 2, "FAILED": 1, "TIMEOUT": 1}


def test_reason_is_added_when_it_says_more_than_the_state() -> None:
    row = JobRow("7", None, "FAILED", "1:0", "00:00:01", "launch failed requeued held", "n")
    assert slurm.outcome(Job("7", "n", (row,)))[1] == "job 7 ended FAILED (exit 1:0, launch failed requeued held)"
