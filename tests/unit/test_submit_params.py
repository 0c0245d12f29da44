"""What an experiment may submit: the params limits, the params a template declares overridable, the merge rule,
and the listing cursor."""

from __future__ import annotations

import json
from typing import Any

import pytest

from node.errors import TemplateError, UsageError
from node.experiments import decode_cursor, encode_cursor
from node.model.api_limits import (
    PARAM_KEY_MAX_CHARS,
    PARAM_VALUE_MAX_CHARS,
    PARAMS_MAX_BYTES,
    PARAMS_MAX_KEYS,
    check_params_size,
    encode_params,
)
from node.model.builtin import builtin_templates
from node.model.executors import KNOWN_EXECUTORS
from node.model.messages import StaticRequest, static_request_bytes
from node.model.template import Template, parse_template

SHELL: dict[str, Any] = {
    "type": "pipeline",
    "params": {"ms": 20, "label": None},
    "tasks": [
        {"name": "run", "kind": "job_submission", "executor": "shell", "params": {"cmd": "echo hi"}},
        {"name": "wait", "kind": "monitoring", "executor": "sleep", "params": {"ms": 5}, "depends_on": ["run"]},
        {"name": "note", "kind": "monitoring", "depends_on": ["run"]},
    ],
}


def shell_template(**changes: Any) -> Template:
    return parse_template({**SHELL, **changes}, KNOWN_EXECUTORS)


def task_params(template: Template, task: str, exp_params: dict[str, str]) -> dict[str, Any]:
    blob = static_request_bytes("e-1", template.task(task), exp_params, template.param_defaults())
    return StaticRequest.decode(blob).params


def test_an_undeclared_param_is_refused_naming_it_and_the_allowed_ones() -> None:
    template = shell_template()
    with pytest.raises(UsageError) as caught:
        template.check_overrides({"ms": "1", "cmd": "rm -rf ~"})
    assert str(caught.value) == "type 'pipeline' does not let an experiment set param 'cmd' (overridable: label, ms)"
    template.check_overrides({"ms": "1", "label": "x"})
    with pytest.raises(UsageError, match=r"overridable: none"):
        shell_template(params={}).check_overrides({"ms": "1"})


def test_merge_rule_defaults_then_task_params_then_experiment_values() -> None:
    template = shell_template()
    assert task_params(template, "note", {}) == {"ms": 20}  # the declared default; no default for 'label'
    assert task_params(template, "wait", {}) == {"ms": 5}  # the task's own value beats the default
    assert task_params(template, "wait", {"ms": "7"}) == {"ms": "7"}  # the experiment's beats both
    assert task_params(template, "run", {"label": "x"}) == {"ms": 20, "cmd": "echo hi", "label": "x"}


@pytest.mark.parametrize(("params", "message"), [
    ([], "params of the template must be a mapping of name to default, got []"),
    ({"bad name": 1}, "bad param name 'bad name'"),
    ({"x" * (PARAM_KEY_MAX_CHARS + 1): 1}, "bad param name"),
    ({"ms": [1]}, "default of param 'ms' must be a string, a number, a boolean or null, got [1]"),
    ({"ms": float("nan")}, "default of param 'ms' must be"),
])
def test_bad_declared_params_are_refused_with_one_line(params: object, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        shell_template(params=params)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_declared_params_round_trip_and_leave_the_hash_of_a_template_without_them() -> None:
    template = shell_template()
    assert parse_template(template.to_dict(), KNOWN_EXECUTORS) == template
    plain = {key: value for key, value in SHELL.items() if key != "params"}
    assert "params" not in parse_template(plain, KNOWN_EXECUTORS).to_dict()
    assert parse_template(plain, KNOWN_EXECUTORS).content_hash() != template.content_hash()


def test_builtin_types_accept_their_documented_param_and_nothing_else() -> None:
    for template in builtin_templates(KNOWN_EXECUTORS):
        template.check_overrides({"ms": "20"})  # README: haorch submit chain --param ms=20
        with pytest.raises(UsageError, match="'first_n'"):
            template.check_overrides({"first_n": "0"})


@pytest.mark.parametrize(("params", "message"), [
    ({"big": "x" * 70_000}, f"param 'big' is 70000 characters (limit {PARAM_VALUE_MAX_CHARS})"),
    ({f"k{i}": "v" for i in range(PARAMS_MAX_KEYS + 1)}, f"too many params: 33 (limit {PARAMS_MAX_KEYS})"),
    ({"ms\n": "1"}, "bad param name 'ms\\n'"),
    ({"k" * (PARAM_KEY_MAX_CHARS + 1): "1"}, f"characters (limit {PARAM_KEY_MAX_CHARS})"),
    ({"ms": 20}, "param 'ms' must be a string, got int"),
    ({"name": "\ud800"}, "param 'name' is not Unicode text"),
    ({f"k{i}": "é" * 1000 for i in range(4)}, f"bytes encoded (limit {PARAMS_MAX_BYTES})"),
])
def test_params_over_a_limit_are_refused_naming_it(params: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        check_params_size(params)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_largest_accepted_params_fit_the_text_column() -> None:
    """Whatever passes the limits is stored whole: MariaDB's TEXT holds 65,535 bytes."""
    value_chars = (PARAMS_MAX_BYTES // PARAMS_MAX_KEYS) - 40
    params = {f"k{i:02d}": "x" * value_chars for i in range(PARAMS_MAX_KEYS)}
    check_params_size(params)
    assert len(encode_params(params).encode()) <= PARAMS_MAX_BYTES < 65_535
    assert json.loads(encode_params(params)) == params


def test_cursor_round_trips_and_a_bad_one_is_a_usage_error() -> None:
    cursor = encode_cursor(1764700000.123456, "chain-0001")
    assert decode_cursor(cursor) == (1764700000.123456, "chain-0001")
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor
    for bad in ("", "not-a-cursor", encode_cursor(1.0, "x")[:-3], "WyJhIiwgImIiXQ", encode_cursor(float("nan"), "x")):
        with pytest.raises(UsageError, match="invalid cursor"):
            decode_cursor(bad)
