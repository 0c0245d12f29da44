"""Bad input through the CLI: invalid templates and bad arguments exit 2 with one line on stderr naming the
problem (issue 3). Needs the stack (templates are validated, experiments looked up), not the cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from core_harness import cli, cypher, query, register

from node.config import Config

pytestmark = pytest.mark.stack


def _one_line(done, *words: str) -> str:
    assert done.returncode == 2, f"exit {done.returncode}, stderr: {done.stderr!r}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert "Traceback" not in done.stderr and done.stdout == ""
    return lines[0]


def _task(name: str, *deps: str, **extra: object) -> dict:
    return {"name": name, "kind": "job_submission", "depends_on": list(deps), **extra}


INVALID = {
    "cycle": ([_task("a", "c"), _task("b", "a"), _task("c", "b")], ("cycle", "a", "b", "c")),
    "unknown-dependency": ([_task("a"), _task("b", "ghost")], ("unknown task", "'ghost'")),
    "duplicate-name": ([_task("a"), _task("b", "a"), _task("a")], ("duplicate task name", "'a'")),
    "empty": ([], ("empty DAG",)),
    "unknown-executor": ([_task("a", executor="teleport")], ("unknown executor", "'teleport'")),
    "self-dependency": ([_task("a", "a")], ("depends on itself",)),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_template_is_rejected(stack: Config, tmp_path: Path, case: str) -> None:
    tasks, words = INVALID[case]
    type_ = f"core-bad-{case}"
    done = register(stack, tmp_path, {"type": type_, "tasks": tasks})
    _one_line(done, *words)
    assert cypher(stack, "MATCH (t:Template {type: $type}) RETURN count(t) AS n", type=type_) == [{"n": 0}]


def test_template_file_problems(stack: Config, tmp_path: Path) -> None:
    _one_line(cli(stack, "template", "register", str(tmp_path / "missing.yaml")), "no such file")
    broken = tmp_path / "broken.yaml"
    broken.write_text("type: x\ntasks: [\n")
    _one_line(cli(stack, "template", "register", str(broken)), "not valid YAML", str(broken))


def test_bad_cli_input_exits_2_with_one_line(stack: Config) -> None:
    before = query(stack, "SELECT COUNT(*) AS n FROM experiments")
    _one_line(cli(stack, "submit", "nosuchtype"), "nosuchtype")
    _one_line(cli(stack, "submit", "chain", "--param", "novalue"), "K=V", "novalue")
    _one_line(cli(stack, "submit", "chain", "--id", "has/slash"), "has/slash")
    assert query(stack, "SELECT COUNT(*) AS n FROM experiments") == before, "bad input created an experiment"
    _one_line(cli(stack, "status", "nosuchid"), "nosuchid")
    _one_line(cli(stack, "cancel", "nosuchid"), "nosuchid")
    _one_line(cli(stack, "wait", "nosuchid", "--timeout", "1"), "nosuchid")
    _one_line(cli(stack, "list", "--state", "BOGUS"), "BOGUS")
    _one_line(cli(stack, "template", "show", "nosuchtype"), "nosuchtype")
    # a good list still works, with the state filter case-insensitive
    done = cli(stack, "list", "--state", "completed", "--json")
    assert done.returncode == 0, done.stderr
