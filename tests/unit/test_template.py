"""Templates: validation messages, graph helpers, hashing, round-trips and the built-in types."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from node.errors import NotFoundError, TemplateError
from node.model.builtin import builtin_templates
from node.model.executors import KNOWN_EXECUTORS
from node.model.template import RetryPolicy, TaskSpec, Template, load_template_file, parse_template

DIAMOND: dict[str, Any] = {
    "type": "diamond",
    "description": "a -> (b, c) -> d",
    "tasks": [
        {"name": "a", "kind": "data_staging"},
        {"name": "b", "kind": "job_submission", "depends_on": ["a"]},
        {"name": "c", "kind": "job_submission", "depends_on": ["a"], "executor": "sleep", "params": {"ms": 5}},
        {"name": "d", "kind": "output_staging", "depends_on": ["b", "c"]},
    ],
}


D = "template 'diamond': "


def diamond(**task_changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of DIAMOND with keys of some tasks replaced (``b={"depends_on": ["x"]}``)."""
    data = copy.deepcopy(DIAMOND)
    for task in data["tasks"]:
        task.update(task_changes.get(task["name"], {}))
    return data


def parse(data: object) -> Template:
    return parse_template(data, KNOWN_EXECUTORS)


def error_of(data: object) -> str:
    with pytest.raises(TemplateError) as caught:
        parse(data)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "template: expected a mapping with 'type' and 'tasks', got list"),
        ({"tasks": DIAMOND["tasks"]}, "template: missing 'type'"),
        ({**DIAMOND, "type": "Bad Type"}, "template: bad type name 'Bad Type': names are 1-63 characters"),
        ({**DIAMOND, "type": 7}, "template: bad type name 7"),
        ({**DIAMOND, "type": "x" * 64}, "template: bad type name 'xxxx"),
        ({**DIAMOND, "tasks": []}, D + "empty DAG: 'tasks' lists no task"),
        ({"type": "diamond"}, D + "empty DAG"),
        ({**DIAMOND, "tasks": {"a": {}}}, D + "'tasks' must be a list, got dict"),
        ({**DIAMOND, "versoin": 2}, D + "the template has unknown key 'versoin' (allowed: type, "),
        ({**DIAMOND, "description": 5}, D + "description of the template must be a string, got 5"),
        ({**DIAMOND, "tasks": ["a"]}, D + "task #1 must be a mapping, got str"),
        ({**DIAMOND, "tasks": [{"kind": "k"}]}, D + "task #1 has no 'name'"),
        (diamond(b={"name": "B"}), D + "bad task name 'B' (task #2): names are"),
        (diamond(b={"name": "a"}), D + "duplicate task name 'a'"),
        (diamond(b={"depends_on": ["x"]}), D + "task 'b' depends on unknown task 'x'"),
        (diamond(b={"depends_on": ["b"]}), D + "task 'b' depends on itself"),
        (diamond(b={"depends_on": ["a", "a"]}), D + "task 'b' lists dependency 'a' twice"),
        (diamond(b={"depends_on": "a"}), D + "depends_on of task 'b' must be a list of task names, got 'a'"),
        (diamond(b={"executor": "ssh"}),
         D + "task 'b' uses unknown executor 'ssh' (known: fail, mark, noop, shell, sleep, "),
        (diamond(b={"retry": 3}), D + "task 'b' has unknown key 'retry' (allowed: name, kind, executor,"),
        (diamond(b={"kind": ""}), D + "kind of task 'b' must be 1-64 printable characters, got ''"),
        (diamond(b={"kind": "k" * 65}), D + "kind of task 'b' must be 1-64 printable characters, got 'kkk"),
        (diamond(b={"retries": 0}), D + "retries of task 'b' must be an integer >= 1, got 0"),
        (diamond(b={"retries": 2.5}), D + "retries of task 'b' must be an integer >= 1, got 2.5"),
        (diamond(b={"retries": True}), D + "retries of task 'b' must be an integer >= 1, got True"),
        (diamond(b={"timeout_s": 0}), D + "timeout_s of task 'b' must be a number > 0, got 0"),
        (diamond(b={"timeout_s": "60"}), D + "timeout_s of task 'b' must be a number > 0, got '60'"),
        (diamond(b={"timeout_s": float("inf")}), D + "timeout_s of task 'b' must be a number > 0, got inf"),
        (diamond(b={"backoff_s": -1}), D + "backoff_s of task 'b' must be a number >= 0, got -1"),
        (diamond(b={"backoff_factor": 0.5}), D + "backoff_factor of task 'b' must be a number >= 1, got 0.5"),
        (diamond(b={"max_backoff_s": -2}), D + "max_backoff_s of task 'b' must be a number >= 0, got -2"),
        (diamond(b={"params": [1]}), D + "params of task 'b' must be a mapping with string keys, got [1]"),
        (diamond(b={"params": {1: "x"}}), D + "params of task 'b' must be a mapping with string keys"),
        (diamond(b={"params": {"when": object()}}), D + "params of task 'b' must be JSON-serialisable"),
        (diamond(b={"executor": None}), D + "executor of task 'b' must be a string, got None"),
    ],
)
def test_validation_error_names_the_problem(data: object, message: str) -> None:
    assert error_of(data).startswith(message)


def test_kind_is_required() -> None:
    data = diamond()
    del data["tasks"][0]["kind"]
    assert error_of(data) == "template 'diamond': task 'a' has no 'kind'"


def test_cycle_is_named_in_edge_order() -> None:
    data = {
        "type": "loop",
        "tasks": [
            {"name": "start", "kind": "k"},
            {"name": "a", "kind": "k", "depends_on": ["start", "c"]},
            {"name": "b", "kind": "k", "depends_on": ["a"]},
            {"name": "c", "kind": "k", "depends_on": ["b"]},
        ],
    }
    assert error_of(data) == "template 'loop': cycle: a -> b -> c -> a"


def test_two_task_cycle_without_roots() -> None:
    data = {"type": "pair", "tasks": [{"name": "x", "kind": "k", "depends_on": ["y"]},
                                      {"name": "y", "kind": "k", "depends_on": ["x"]}]}  # fmt: skip
    assert error_of(data) == "template 'pair': cycle: x -> y -> x"


def test_long_chain_is_not_a_recursion_problem() -> None:
    tasks = [{"name": "t0", "kind": "k"}] + [
        {"name": f"t{i}", "kind": "k", "depends_on": [f"t{i - 1}"]} for i in range(1, 5000)
    ]
    template = parse({"type": "long", "tasks": tasks})
    assert template.topological_order()[-1] == "t4999"


def test_file_errors_name_the_file_and_type(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("type: chain\ntasks:\n  - name: a\n    kind: k\n    depends_on: [zz]\n")
    with pytest.raises(TemplateError, match=r"^\S+bad\.yaml \(type 'chain'\): task 'a' depends on unknown task 'zz'$"):
        load_template_file(path, KNOWN_EXECUTORS)


def test_file_without_valid_type_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(TemplateError, match=r"empty\.yaml: expected a mapping with 'type' and 'tasks', got NoneType$"):
        load_template_file(path, KNOWN_EXECUTORS)


def test_unreadable_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match=r"missing\.yaml: cannot read: No such file or directory$"):
        load_template_file(tmp_path / "missing.yaml", KNOWN_EXECUTORS)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("type: [unclosed\n")
    with pytest.raises(TemplateError, match=r"bad\.yaml: not valid YAML: .* at line \d+$"):
        load_template_file(bad_yaml, KNOWN_EXECUTORS)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{'type': 1}")
    with pytest.raises(TemplateError, match=r"bad\.json: not valid JSON: .* at line 1$"):
        load_template_file(bad_json, KNOWN_EXECUTORS)


# --- reading ------------------------------------------------------------------------------------


def test_defaults_are_filled_in() -> None:
    spec = parse(DIAMOND).task("a")
    assert spec == TaskSpec(name="a", kind="data_staging", executor="noop", params={}, depends_on=(),
                            retry=RetryPolicy(1, 0.5, 2.0, 30.0), timeout_s=60.0)  # fmt: skip


def test_all_fields_are_read() -> None:
    template = parse(diamond(c={"retries": 4, "backoff_s": 1, "backoff_factor": 3, "max_backoff_s": 5,
                                "timeout_s": 2.5}))  # fmt: skip
    spec = template.task("c")
    assert (spec.executor, spec.params, spec.depends_on) == ("sleep", {"ms": 5}, ("a",))
    assert spec.retry == RetryPolicy(max_attempts=4, backoff_s=1.0, backoff_factor=3.0, max_backoff_s=5.0)
    assert spec.timeout_s == 2.5
    assert template.description == "a -> (b, c) -> d"


def test_json_and_yaml_files_give_the_same_template(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "d.json").write_text(json.dumps(DIAMOND))
    (tmp_path / "d.yml").write_text(yaml.safe_dump(DIAMOND))
    from_json = load_template_file(tmp_path / "d.json", KNOWN_EXECUTORS)
    assert from_json == load_template_file(tmp_path / "d.yml", KNOWN_EXECUTORS) == parse(DIAMOND)


def test_unknown_task_lookup() -> None:
    with pytest.raises(NotFoundError, match="template 'diamond' has no task 'zz'"):
        parse(DIAMOND).task("zz")


# --- graph helpers ------------------------------------------------------------------------------


def test_roots_successors_and_fan_in_predecessors() -> None:
    template = parse(DIAMOND)
    assert template.roots() == ("a",)
    assert template.successors() == {"a": ("b", "c"), "b": ("d",), "c": ("d",), "d": ()}
    assert template.predecessors() == {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}


def test_topological_order_respects_dependencies_and_declaration_order() -> None:
    data = {
        "type": "mixed",
        "tasks": [
            {"name": "late", "kind": "k", "depends_on": ["mid"]},
            {"name": "root2", "kind": "k"},
            {"name": "mid", "kind": "k", "depends_on": ["root1", "root2"]},
            {"name": "root1", "kind": "k"},
        ],
    }
    template = parse(data)
    assert template.roots() == ("root2", "root1")
    assert template.topological_order() == ("root2", "root1", "mid", "late")


def test_retry_delay_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=6, backoff_s=0.5, backoff_factor=2.0, max_backoff_s=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


# --- hashing and round-trips --------------------------------------------------------------------


def test_content_hash_is_stable_and_ignores_spelled_out_defaults() -> None:
    explicit = diamond(a={"executor": "noop", "params": {}, "retries": 1, "timeout_s": 60.0})
    assert parse(DIAMOND).content_hash() == parse(copy.deepcopy(DIAMOND)).content_hash()
    assert parse(DIAMOND).content_hash() == parse(explicit).content_hash()
    assert len(parse(DIAMOND).content_hash()) == 64


@pytest.mark.parametrize(
    "changed",
    [
        diamond(c={"params": {"ms": 6}}),
        diamond(b={"retries": 2}),
        diamond(d={"depends_on": ["b"]}),
        diamond(b={"kind": "monitoring"}),
        {**DIAMOND, "description": "other"},
        {**DIAMOND, "type": "diamond2"},
    ],
)
def test_content_hash_changes_with_content(changed: dict[str, Any]) -> None:
    assert parse(changed).content_hash() != parse(DIAMOND).content_hash()


def test_to_dict_round_trips() -> None:
    template = parse(diamond(b={"retries": 3, "backoff_s": 0.1}))
    data = template.to_dict()
    assert parse(data) == template
    assert parse(json.loads(json.dumps(data))) == template
    assert data["tasks"][1]["retries"] == 3


# --- built-ins ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builtins() -> dict[str, Template]:
    return {t.type: t for t in builtin_templates(KNOWN_EXECUTORS)}


def test_builtin_types_are_present(builtins: dict[str, Template]) -> None:
    assert sorted(builtins) == ["chain", "diamond", "fanout", "retry"]


def test_builtins_round_trip(builtins: dict[str, Template]) -> None:
    for template in builtins.values():
        assert parse(template.to_dict()) == template


def test_builtin_chain(builtins: dict[str, Template]) -> None:
    chain = builtins["chain"]
    assert chain.topological_order() == ("stage_in", "submit_job", "monitor", "stage_out")
    assert [t.kind for t in chain.tasks] == ["data_staging", "job_submission", "monitoring", "output_staging"]
    assert {t.executor for t in chain.tasks} == {"noop"}
    assert chain.successors() == {"stage_in": ("submit_job",), "submit_job": ("monitor",),
                                  "monitor": ("stage_out",), "stage_out": ()}  # fmt: skip


def test_builtin_diamond(builtins: dict[str, Template]) -> None:
    diamond_ = builtins["diamond"]
    assert diamond_.roots() == ("a",)
    assert diamond_.successors()["a"] == ("b", "c")
    assert diamond_.predecessors()["d"] == ("b", "c")


def test_builtin_fanout(builtins: dict[str, Template]) -> None:
    fanout = builtins["fanout"]
    work = fanout.successors()["split"]
    assert len(work) >= 8
    assert fanout.roots() == ("split",)
    assert set(fanout.predecessors()["merge"]) == set(work)
    assert all(fanout.successors()[name] == ("merge",) for name in work)


def test_builtin_retry(builtins: dict[str, Template]) -> None:
    retry = builtins["retry"]
    order = retry.topological_order()
    assert len(order) == 3
    middle = retry.task(order[1])
    assert (middle.executor, middle.params, middle.retry.max_attempts) == ("fail", {"first_n": 1}, 3)
    assert middle.retry.backoff_s == 0.1
    assert {retry.task(order[0]).executor, retry.task(order[2]).executor} == {"noop"}


def test_builtin_validation_uses_known_executors() -> None:
    with pytest.raises(TemplateError, match=r"retry\.yaml \(type 'retry'\): task 'flaky' uses unknown executor 'fail'"):
        builtin_templates(("noop",))


def test_output_references_must_name_an_ancestor_and_be_well_formed() -> None:
    def tpl(params: dict, declared: dict | None = None) -> dict:
        return {"type": "refs", "params": declared or {}, "tasks": [
            {"name": "submit", "kind": "job_submission"},
            {"name": "side", "kind": "k"},
            {"name": "wait", "kind": "monitoring", "depends_on": ["submit"]},
            {"name": "out", "kind": "output_staging", "depends_on": ["wait"], "params": params}]}

    ok = parse_template(tpl({"job": "{{ tasks.submit.outputs.job_id }}", "n": ["{{tasks.wait.outputs.a.b}}"]}),
                        KNOWN_EXECUTORS)
    assert ok.task("out").params["job"] == "{{ tasks.submit.outputs.job_id }}"
    assert error_of(tpl({"x": "{{ tasks.side.outputs.id }}"})) == (
        "template 'refs': task 'out' references the outputs of 'side', which is not among the tasks it depends on "
        "(directly or not)")
    assert error_of(tpl({"x": "{{ tasks.submit.output.id }}"})).startswith(
        "template 'refs': task 'out' has a malformed reference in '{{ tasks.submit.output.id }}'")
    assert error_of(tpl({}, {"p": "{{ tasks.submit.outputs.id }}"})).startswith(
        "template 'refs': the default of param 'p' is a reference")
    assert parse_template(tpl({"src": "{{ params.inputs }}/{{ experiment.id }}"}, {"inputs": None}),
                          KNOWN_EXECUTORS).task("out").params["src"] == "{{ params.inputs }}/{{ experiment.id }}"
    assert error_of(tpl({"src": "{{ params.nope }}"})) == (
        "template 'refs': task 'out' references the param 'nope', which it does not have")


def test_pool_and_retention_are_read_and_kept_out_of_old_hashes() -> None:
    before = parse(DIAMOND)
    data = copy.deepcopy(DIAMOND)
    data["retention_days"] = 2
    data["tasks"][0]["pool"] = "gpu"
    tpl = parse(data)
    assert tpl.retention_days == 2.0 and tpl.tasks[0].pool == "gpu"
    assert tpl.tasks[1].pool == tpl.tasks[1].kind  # no pool: its kind's
    assert parse(tpl.to_dict()) == tpl and tpl.content_hash() != before.content_hash()
    assert "pool" not in before.to_dict()["tasks"][0] and "retention_days" not in before.to_dict()


@pytest.mark.parametrize("key, value, message", [
    ("retention_days", -1, "retention_days of the template must be a number >= 0, got -1"),
    ("retention_days", "week", "retention_days of the template must be a number >= 0, got 'week'"),
])
def test_bad_retention_is_refused(key: str, value: object, message: str) -> None:
    data: dict[str, Any] = copy.deepcopy(DIAMOND)
    data[key] = value
    with pytest.raises(TemplateError, match=message):
        parse(data)


def test_bad_pool_is_refused() -> None:
    data: dict[str, Any] = copy.deepcopy(DIAMOND)
    data["tasks"][0]["pool"] = "Big Iron"
    with pytest.raises(TemplateError, match=r"pool of task .* must be a name"):
        parse(data)
