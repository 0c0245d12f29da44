"""Executors: the registry, each built-in's behaviour, reproducible failures and the shell switch."""

from __future__ import annotations

import sys
import time

import pytest

from node.model.executors import KNOWN_EXECUTORS
from node.worker.executors import (
    EXECUTORS,
    ExecutionContext,
    ExecutorFailure,
    NotYet,
    failure_draw,
    get_executor,
)

HOME = ""  # the worker's haorch home in the contexts below (set by the ``home`` fixture)


def ctx(attempt: int = 1, task: str = "t", seed: int = 0, experiment_id: str = "exp-1") -> ExecutionContext:
    return ExecutionContext(experiment_id=experiment_id, task=task, attempt=attempt, seed=seed, home=HOME)


def run(name: str, params: dict, context: ExecutionContext | None = None, shell_enabled: bool = False) -> dict:
    return get_executor(name, shell_enabled=shell_enabled)(params, context or ctx())


def test_registry() -> None:
    assert {"noop", "sleep", "fail", "shell", "mark", "wait_file"} <= set(KNOWN_EXECUTORS)
    assert tuple(EXECUTORS) == KNOWN_EXECUTORS


def test_unknown_executor() -> None:
    with pytest.raises(ExecutorFailure, match=r"^unknown executor 'ssh' \(known: noop, sleep, fail, shell, mark, "):
        get_executor("ssh", shell_enabled=True)


def test_noop() -> None:
    assert run("noop", {"anything": 1}) == {}


def test_sleep_sleeps() -> None:
    started = time.monotonic()
    assert run("sleep", {"ms": 30}) == {"slept_ms": 30}
    assert time.monotonic() - started >= 0.03


def test_sleep_accepts_cli_strings_and_defaults_to_zero() -> None:
    assert run("sleep", {"ms": "1"}) == {"slept_ms": 1}
    assert run("sleep", {}) == {"slept_ms": 0}


@pytest.mark.parametrize(("ms", "message"), [("abc", "param 'ms' must be int, got 'abc'"),
                                             (True, "param 'ms' must be int, got True"),
                                             (-5, "param 'ms' must be >= 0, got -5")])  # fmt: skip
def test_sleep_rejects_bad_ms(ms: object, message: str) -> None:
    with pytest.raises(ExecutorFailure, match=f"^{message}$"):
        run("sleep", {"ms": ms})


def test_fail_first_n_fails_those_attempts_then_succeeds() -> None:
    for attempt in (1, 2):
        with pytest.raises(ExecutorFailure, match=f"attempt {attempt} of the first 2"):
            run("fail", {"first_n": 2}, ctx(attempt))
    assert run("fail", {"first_n": 2}, ctx(3)) == {}
    assert run("fail", {"first_n": "1"}, ctx(2)) == {}


def test_fail_without_params_always_fails() -> None:
    for attempt in (1, 5):
        with pytest.raises(ExecutorFailure, match="always"):
            run("fail", {}, ctx(attempt))


def test_failure_draw_is_deterministic_and_spread() -> None:
    assert failure_draw(ctx(1, "a", seed=3)) == failure_draw(ctx(1, "a", seed=3))
    draws = {failure_draw(ctx(attempt, task, seed)) for attempt in (1, 2) for task in "abcde" for seed in (0, 1)}
    assert len(draws) == 20
    assert all(0 <= d < 1 for d in draws)
    # a pinned value: the draw must not depend on the process (no salted hash())
    assert failure_draw(ctx(1, "t", seed=0)) == pytest.approx(0.488226, abs=1e-6)


def outcomes(probability: float, seed: int) -> list[bool]:
    """Whether each of 200 (task, attempt) pairs succeeds under ``probability``."""
    results = []
    for i in range(200):
        try:
            run("fail", {"probability": probability}, ctx(attempt=1 + i % 3, task=f"t{i}", seed=seed))
            results.append(True)
        except ExecutorFailure:
            results.append(False)
    return results


def test_fail_probability_is_reproducible_and_roughly_right() -> None:
    first = outcomes(0.3, seed=42)
    assert first == outcomes(0.3, seed=42)
    assert first != outcomes(0.3, seed=43)
    assert 0.15 < first.count(False) / len(first) < 0.45
    assert all(outcomes(0.0, seed=1))
    assert not any(outcomes(1.0, seed=1))


def test_fail_probability_matches_the_draw() -> None:
    context = ctx(2, "flaky", seed=9)
    draw = failure_draw(context)
    assert run("fail", {"probability": draw}, context) == {}
    with pytest.raises(ExecutorFailure, match=r"draw \d\.\d{4} < "):
        run("fail", {"probability": str(draw + 1e-9)}, context)


def test_shell_is_disabled_by_default() -> None:
    with pytest.raises(ExecutorFailure) as caught:
        get_executor("shell", shell_enabled=False)
    assert str(caught.value) == "shell executor is disabled; set shell_executor_enabled = true in haorch.toml"


def test_shell_runs_argv_and_strings() -> None:
    assert run("shell", {"cmd": ["echo", "a b"]}, shell_enabled=True) == {"exit_code": 0, "stdout_tail": "a b\n"}
    assert run("shell", {"cmd": "echo 'x  y'"}, shell_enabled=True)["stdout_tail"] == "x  y\n"


def test_shell_syntax_goes_through_sh() -> None:
    result = run("shell", {"cmd": "echo one | tr a-z A-Z; echo $((1 + 2))"}, shell_enabled=True)
    assert result["stdout_tail"] == "ONE\n3\n"


def test_shell_without_syntax_does_not_use_a_shell() -> None:
    # sh would read '#b' as a comment; run directly it is an argument
    assert run("shell", {"cmd": "echo a #b"}, shell_enabled=True)["stdout_tail"] == "a #b\n"
    assert run("shell", {"cmd": ["printf", "%s", "$HOME"]}, shell_enabled=True)["stdout_tail"] == "$HOME"


def test_shell_keeps_only_the_stdout_tail() -> None:
    result = run("shell", {"cmd": ["python3", "-c", "print('x' * 5000, end='')"]}, shell_enabled=True)
    assert result["stdout_tail"] == "x" * 2000


def test_shell_fails_on_nonzero_exit_with_last_stderr_line() -> None:
    with pytest.raises(ExecutorFailure, match=r"^command exited with 3: second$"):
        run("shell", {"cmd": "echo first >&2; echo second >&2; exit 3"}, shell_enabled=True)
    with pytest.raises(ExecutorFailure, match=r"^command exited with 1: no stderr$"):
        run("shell", {"cmd": ["false"]}, shell_enabled=True)


def test_shell_missing_command_and_bad_cmd() -> None:
    with pytest.raises(ExecutorFailure, match=r"^cannot run 'no-such-command-xyz': No such file or directory$"):
        run("shell", {"cmd": "no-such-command-xyz --flag"}, shell_enabled=True)
    for cmd in (None, "", "  ", [], ["echo", 1]):
        with pytest.raises(ExecutorFailure, match="param 'cmd' must be a command string or a list of arguments"):
            run("shell", {"cmd": cmd}, shell_enabled=True)


@pytest.fixture()
def home(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A haorch home for the mark executor (the worker passes its own in the execution context)."""
    monkeypatch.setattr(sys.modules[__name__], "HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "marks").mkdir(parents=True)
    return tmp_path / "home"


def test_mark_sleeps_then_leaves_one_marker_per_attempt(home) -> None:
    marks = home / "marks"
    started = time.monotonic()
    result = run("mark", {"seconds": "0.03", "mark_dir": str(marks)}, ctx(2, "work_1", experiment_id="e-1"))
    assert time.monotonic() - started >= 0.03
    assert result == {"marker": "e-1.work_1.2", "twice": False, "slept_s": 0.03}
    assert [p.name for p in marks.iterdir()] == ["e-1.work_1.2"]
    assert run("mark", {"mark_dir": str(marks)}, ctx(3, "work_1", experiment_id="e-1"))["twice"] is False


def test_mark_again_leaves_a_twice_file_and_succeeds(home) -> None:
    marks = home / "marks"
    run("mark", {"mark_dir": str(marks)}, ctx(1, "a"))
    again = run("mark", {"mark_dir": str(marks)}, ctx(1, "a"))
    third = run("mark", {"mark_dir": str(marks)}, ctx(1, "a"))
    assert again["twice"] and third["twice"] and again["marker"] != third["marker"]
    assert again["marker"].startswith("exp-1.a.1.twice.")
    names = sorted(p.name for p in marks.iterdir())
    assert names[0] == "exp-1.a.1" and len(names) == 3


@pytest.mark.parametrize("mark_dir", [None, 5, "relative/marks", "/tmp", "{home}", "{home}/marks/../..",
                                      "{home}/../elsewhere"])
def test_mark_dir_must_be_absolute_and_under_the_home(home, mark_dir) -> None:
    value = mark_dir.format(home=home) if isinstance(mark_dir, str) else mark_dir
    with pytest.raises(ExecutorFailure, match="param 'mark_dir'"):
        run("mark", {"mark_dir": value})
    assert list((home / "marks").iterdir()) == []


def test_mark_fails_on_a_missing_dir_bad_seconds_and_a_slash_in_the_id(home) -> None:
    with pytest.raises(ExecutorFailure, match=r"^cannot create marker .*: No such file or directory$"):
        run("mark", {"mark_dir": str(home / "marks" / "gone")})
    for seconds in ("-1", "nan", "inf", True):
        with pytest.raises(ExecutorFailure, match="param 'seconds'"):
            run("mark", {"mark_dir": str(home / "marks"), "seconds": seconds})
    with pytest.raises(ExecutorFailure, match="cannot name a marker file"):
        run("mark", {"mark_dir": str(home / "marks")}, ctx(experiment_id="a/../../b"))


def test_mark_refuses_to_run_without_a_home() -> None:
    with pytest.raises(ExecutorFailure, match="no haorch home"):
        run("mark", {"mark_dir": "/tmp/marks"})


def test_wait_file_waits_without_sleeping_then_reports_the_file(tmp_path) -> None:
    target = tmp_path / "ready.flag"
    with pytest.raises(NotYet) as waiting:
        run("wait_file", {"path": str(target), "poll_s": "2.5"})
    assert waiting.value.recheck_after_s == 2.5 and str(target) in waiting.value.status
    target.write_text("done")
    assert run("wait_file", {"path": str(target)}) == {"path": str(target), "size": 4}
    for bad, message in (({"path": "relative"}, "absolute path"), ({"path": "/x", "poll_s": 0}, "poll_s")):
        with pytest.raises(ExecutorFailure, match=message):
            run("wait_file", bad)
