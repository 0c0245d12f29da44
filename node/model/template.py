"""Templates: the abstract DAG of an experiment type, parsed and validated from YAML or JSON.

A template file names the type and lists its tasks; every key but ``name`` and ``kind`` has a default::

    type: chain                 # ^[a-z][a-z0-9_-]{0,62}$, also the rule for task names
    description: data staging, job submission, monitoring, output staging
    params:                     # what an experiment may set (--param K=V), with its default (null: none)
      ms: null
    retention_days: 7           # delete finished experiments of this type after 7 days (default: the global
                                # ``retention_days`` of the configuration; 0: keep forever)
    tasks:
      - name: stage_in
        kind: data_staging      # free text: data_staging, job_submission, monitoring, output_staging, ...
        executor: noop          # a known executor name, default noop
        params: {}              # JSON-serialisable mapping, default {}; fixed unless declared above
        depends_on: []          # names of tasks of this template, default []
        retries: 1              # max attempts, default 1
        backoff_s: 0.2          # delay before the 2nd attempt, default 0.5
        backoff_factor: 2       # each further delay is multiplied by this, default 2
        max_backoff_s: 30       # cap on the delay, default 30
        timeout_s: 60           # per attempt, default 60
        pool: stager            # the concurrency pool it takes a slot of (``haorch pool``), default its kind
      - name: submit_job
        kind: job_submission
        depends_on: [stage_in]

Params merge rule: each task runs with the declared defaults, overridden by its own ``params``, overridden by
the experiment's values, key by key (a task ignores keys its executor does not read). An experiment may set only
the names the template declares under ``params``: :meth:`Template.check_overrides` refuses any other (a shell
task's ``cmd`` cannot be replaced unless the template says so).

Build templates with :func:`parse_template` or :func:`load_template_file`: they are the only door that
validates (the :class:`Template` constructor trusts its input). Any problem raises
:class:`~node.errors.TemplateError` with one line that names the file or type and the problem::

    tpl = load_template_file("chain.yaml", KNOWN_EXECUTORS)   # node/model/executors.py
    tpl.topological_order()     # ('stage_in', 'submit_job', ...)
    tpl.content_hash()          # decides whether a re-registration is a new version
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from node.errors import NotFoundError, TemplateError, UsageError
from node.model.api_limits import PARAM_KEY_MAX_CHARS, PARAM_NAME_RE, PARAM_NAME_RULE
from node.model.limits import MAX_ID_CHARS, name_problem, text_problem
from node.model.references import REF_RE, reference_problem

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_NAME_RULE = "names are 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter"
_TEMPLATE_KEYS = ("type", "description", "params", "retention_days", "tasks")
_TASK_KEYS = (
    "name", "kind", "executor", "params", "depends_on", "retries", "backoff_s", "backoff_factor",
    "max_backoff_s", "timeout_s", "pool",
)
_REQUIRED = object()


@dataclass(frozen=True)
class RetryPolicy:
    """How often a task may run and how long to wait between attempts (exponential backoff, capped)."""

    max_attempts: int = 1
    backoff_s: float = 0.5
    backoff_factor: float = 2.0
    max_backoff_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` once attempt ``attempt`` (1-based) has failed."""
        return min(self.max_backoff_s, self.backoff_s * self.backoff_factor ** (attempt - 1))


@dataclass(frozen=True)
class TaskSpec:
    """One task of a template; ``params`` must not be mutated (it is shared by every experiment)."""

    name: str
    kind: str
    executor: str = "noop"
    params: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    retry: RetryPolicy = RetryPolicy()
    timeout_s: float = 60.0
    pool_name: str | None = None  # as written in the template; None: the kind

    @property
    def pool(self) -> str:
        """The concurrency pool this task takes a slot of while dispatched: its ``pool``, else its kind."""
        return self.pool_name or self.kind

    def to_dict(self) -> dict[str, Any]:
        """The task in template-file form, every default spelled out but ``pool`` (absent unless set, so that a
        template written before pools existed keeps its hash)."""
        pool = {"pool": self.pool_name} if self.pool_name is not None else {}
        return {
            "name": self.name,
            "kind": self.kind,
            "executor": self.executor,
            "params": dict(self.params),
            "depends_on": list(self.depends_on),
            "retries": self.retry.max_attempts,
            "backoff_s": self.retry.backoff_s,
            "backoff_factor": self.retry.backoff_factor,
            "max_backoff_s": self.retry.max_backoff_s,
            "timeout_s": self.timeout_s,
            **pool,
        }


@dataclass(frozen=True)
class Template:
    """The abstract DAG of one experiment type; tasks keep their declaration order."""

    type: str
    description: str
    tasks: tuple[TaskSpec, ...]
    params: dict[str, Any] = field(default_factory=dict)  # overridable name -> default (None: no default)
    retention_days: float | None = None  # None: the configuration's ``retention_days``

    def task(self, name: str) -> TaskSpec:
        """The task called ``name``; :class:`NotFoundError` if there is none."""
        for spec in self.tasks:
            if spec.name == name:
                return spec
        raise NotFoundError(f"template {self.type!r} has no task {name!r}")

    def param_defaults(self) -> dict[str, Any]:
        """The declared params that have a default: every task starts from these."""
        return {name: value for name, value in self.params.items() if value is not None}

    def check_overrides(self, params: Mapping[str, object]) -> None:
        """UsageError naming the first param of ``params`` this template does not declare, and those it does."""
        for name in params:
            if name not in self.params:
                allowed = ", ".join(sorted(self.params)) or "none"
                raise UsageError(f"type {self.type!r} does not let an experiment set param {name!r} "
                                 f"(overridable: {allowed})")

    def roots(self) -> tuple[str, ...]:
        """Names of the tasks without dependencies: the ones dispatched at submit."""
        return tuple(spec.name for spec in self.tasks if not spec.depends_on)

    def predecessors(self) -> dict[str, tuple[str, ...]]:
        """Task name -> names of the tasks it depends on."""
        return {spec.name: spec.depends_on for spec in self.tasks}

    def successors(self) -> dict[str, tuple[str, ...]]:
        """Task name -> names of the tasks that depend on it, in declaration order."""
        found: dict[str, list[str]] = {spec.name: [] for spec in self.tasks}
        for spec in self.tasks:
            for dep in spec.depends_on:
                found[dep].append(spec.name)
        return {name: tuple(names) for name, names in found.items()}

    def topological_order(self) -> tuple[str, ...]:
        """Every task name after all its predecessors; ties keep declaration order, so it is stable."""
        index = {spec.name: i for i, spec in enumerate(self.tasks)}
        waiting = {spec.name: len(spec.depends_on) for spec in self.tasks}
        ready = [index[name] for name in self.roots()]
        successors = self.successors()
        order: list[str] = []
        while ready:
            name = self.tasks[heapq.heappop(ready)].name
            order.append(name)
            for succ in successors[name]:
                waiting[succ] -= 1
                if waiting[succ] == 0:
                    heapq.heappush(ready, index[succ])
        return tuple(order)

    def to_dict(self) -> dict[str, Any]:
        """The template in file form; ``parse_template(t.to_dict(), ...) == t``."""
        # no "params" key when none is declared: a template written before they existed keeps its hash
        declared: dict[str, Any] = {"params": dict(self.params)} if self.params else {}
        if self.retention_days is not None:
            declared["retention_days"] = self.retention_days
        return {"type": self.type, "description": self.description, **declared,
                "tasks": [t.to_dict() for t in self.tasks]}

    def content_hash(self) -> str:
        """Hex sha256 of the canonical JSON of :meth:`to_dict`: equal content, equal hash."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class _Invalid(Exception):
    """A problem found while parsing; :func:`parse_template` prefixes it with the file or type."""


def parse_template(data: object, known_executors: Collection[str], source: str | None = None) -> Template:
    """Validate ``data`` (a decoded template file) into a :class:`Template`.

    ``source`` (a file name) prefixes error messages; otherwise they name the type.
    """
    try:
        return _parse(data, known_executors)
    except _Invalid as exc:
        raise TemplateError(f"{_label(data, source)}: {exc}") from None


def load_template_file(path: str | Path, known_executors: Collection[str]) -> Template:
    """Read and validate a template file: JSON if it ends in ``.json``, YAML otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TemplateError(f"{path}: not UTF-8 text") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise TemplateError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    return parse_template(data, known_executors, source=str(path))


def _label(data: object, source: str | None) -> str:
    """``file (type 'x')``, ``file``, ``template 'x'`` or ``template``: as much as is known and valid."""
    type_ = data.get("type") if isinstance(data, Mapping) else None
    if not (isinstance(type_, str) and NAME_RE.match(type_)):
        return source or "template"
    return f"{source} (type {type_!r})" if source else f"template {type_!r}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}" if mark else problem


def _parse(data: object, known_executors: Collection[str]) -> Template:
    if not isinstance(data, Mapping):
        raise _Invalid(f"expected a mapping with 'type' and 'tasks', got {type(data).__name__}")
    if "type" not in data:
        raise _Invalid("missing 'type'")
    type_ = data["type"]
    if not isinstance(type_, str) or not NAME_RE.match(type_):
        raise _Invalid(f"bad type name {_show(type_)}: {_NAME_RULE}")
    _reject_unknown_keys(data, _TEMPLATE_KEYS, "the template")
    description = _field(data, "description", "the template", "", _is_str, "a string")
    raw_tasks = data.get("tasks")
    if not raw_tasks:
        raise _Invalid("empty DAG: 'tasks' lists no task")
    if not isinstance(raw_tasks, list):
        raise _Invalid(f"'tasks' must be a list, got {type(raw_tasks).__name__}")
    specs: list[TaskSpec] = []
    for number, raw in enumerate(raw_tasks, start=1):
        spec = _parse_task(raw, number, known_executors)
        if any(seen.name == spec.name for seen in specs):
            raise _Invalid(f"duplicate task name {spec.name!r}")
        specs.append(spec)
    retention = _field(data, "retention_days", "the template", None, _is_retention, "a number >= 0")
    template = Template(type_, description, tuple(specs), _parse_declared(data.get("params", {})),
                        None if retention is None else float(retention))
    _check_graph(template)
    return template


def _parse_task(raw: object, number: int, known_executors: Collection[str]) -> TaskSpec:
    if not isinstance(raw, Mapping):
        raise _Invalid(f"task #{number} must be a mapping, got {type(raw).__name__}")
    if "name" not in raw:
        raise _Invalid(f"task #{number} has no 'name'")
    name = raw["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _Invalid(f"bad task name {_show(name)} (task #{number}): {_NAME_RULE}")
    where = f"task {name!r}"
    _reject_unknown_keys(raw, _TASK_KEYS, where)
    executor = _field(raw, "executor", where, "noop", _is_str, "a string")
    if executor not in known_executors:
        known = ", ".join(sorted(known_executors))
        raise _Invalid(f"{where} uses unknown executor {executor!r} (known: {known})")
    params = _field(raw, "params", where, {}, _is_str_mapping, "a mapping with string keys")
    try:
        json.dumps(params, allow_nan=False)
    except (TypeError, ValueError):
        raise _Invalid(f"params of {where} must be JSON-serialisable") from None
    depends_on = _field(raw, "depends_on", where, [], _is_str_list, "a list of task names")
    duplicated = sorted({dep for dep in depends_on if depends_on.count(dep) > 1})
    if duplicated:
        raise _Invalid(f"{where} lists dependency {duplicated[0]!r} twice")
    retry = RetryPolicy(
        max_attempts=_field(raw, "retries", where, 1, _is_positive_int, "an integer >= 1"),
        backoff_s=float(_field(raw, "backoff_s", where, 0.5, _at_least(0.0), "a number >= 0")),
        backoff_factor=float(_field(raw, "backoff_factor", where, 2.0, _at_least(1.0), "a number >= 1")),
        max_backoff_s=float(_field(raw, "max_backoff_s", where, 30.0, _at_least(0.0), "a number >= 0")),
    )
    return TaskSpec(
        name=name,
        kind=_field(raw, "kind", where, _REQUIRED, _is_kind, f"1-{MAX_ID_CHARS} printable characters"),
        executor=executor,
        params=dict(params),
        depends_on=tuple(depends_on),
        retry=retry,
        timeout_s=float(_field(raw, "timeout_s", where, 60.0, _is_positive_number, "a number > 0")),
        pool_name=_field(raw, "pool", where, None, _is_pool, _NAME_RULE.replace("names are", "a name of")),
    )


def _parse_declared(raw: object) -> dict[str, Any]:
    """The template's ``params``: overridable names, each with a default that is a string, a number, a boolean
    or null."""
    if not isinstance(raw, Mapping):
        raise _Invalid(f"params of the template must be a mapping of name to default, got {_show(raw)}")
    for name, default in raw.items():
        if not isinstance(name, str) or not PARAM_NAME_RE.fullmatch(name) or len(name) > PARAM_KEY_MAX_CHARS:
            raise _Invalid(f"bad param name {_show(name)}: {PARAM_NAME_RULE}, at most {PARAM_KEY_MAX_CHARS}")
        if not (default is None or isinstance(default, bool) or _is_number(default)
                or (isinstance(default, str) and text_problem(default, name) is None)):
            raise _Invalid(f"default of param {name!r} must be a string, a number, a boolean or null, "
                           f"got {_show(default)}")
    return dict(raw)


def _check_graph(template: Template) -> None:
    names = {spec.name for spec in template.tasks}
    for spec in template.tasks:
        for dep in spec.depends_on:
            if dep == spec.name:
                raise _Invalid(f"task {spec.name!r} depends on itself")
            if dep not in names:
                raise _Invalid(f"task {spec.name!r} depends on unknown task {dep!r}")
    cycle = _find_cycle(template.successors())
    if cycle:
        raise _Invalid("cycle: " + " -> ".join(cycle))
    _check_output_refs(template)


def _check_output_refs(template: Template) -> None:
    """References in a task's params (``node/model/references.py``) name an ancestor's outputs or a param the task
    has; declared defaults reference nothing (they reach every task)."""
    for name, default in template.params.items():
        if isinstance(default, str) and REF_RE.search(default):
            raise _Invalid(f"the default of param {name!r} is a reference; put it in the params of the task that "
                           "reads it")
    preds = template.predecessors()
    for spec in template.tasks:
        ancestors: set[str] = set()
        todo = list(preds[spec.name])
        while todo:
            task = todo.pop()
            if task not in ancestors:
                ancestors.add(task)
                todo.extend(preds[task])
        problem = reference_problem(spec.params, ancestors, {*template.params, *spec.params})
        if problem:
            raise _Invalid(f"task {spec.name!r} {problem}")


def _find_cycle(successors: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    """A cycle as ``[a, b, ..., a]`` (edges point to successors), or None; iterative so deep chains are fine."""
    on_path: set[str] = set()
    done: set[str] = set()
    for start in successors:
        if start in done:
            continue
        path = [start]
        on_path.add(start)
        pending = [iter(successors[start])]
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                pending.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif nxt in on_path:
                return [*path[path.index(nxt):], nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                pending.append(iter(successors[nxt]))
    return None


def _reject_unknown_keys(raw: Mapping[Any, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise _Invalid(f"{where} has unknown key {_show(key)} (allowed: {', '.join(allowed)})")


def _field(
    raw: Mapping[str, Any], key: str, where: str, default: Any, accept: Callable[[Any], bool], expected: str
) -> Any:
    value = raw.get(key, default)
    if value is _REQUIRED:
        raise _Invalid(f"{where} has no {key!r}")
    if not accept(value):
        raise _Invalid(f"{key} of {where} must be {expected}, got {_show(value)}")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_kind(value: object) -> bool:
    """A kind travels in every request of the task: the workers' decoder takes what this accepts."""
    return isinstance(value, str) and value.strip() != "" and name_problem(value, "kind") is None


def _is_pool(value: object) -> bool:
    return value is None or (isinstance(value, str) and NAME_RE.match(value) is not None)


def _is_retention(value: object) -> bool:
    return value is None or (_is_number(value) and value >= 0)


def _is_str_mapping(value: object) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_positive_number(value: object) -> bool:
    return _is_number(value) and value > 0


def _at_least(minimum: float) -> Callable[[object], bool]:
    return lambda value: _is_number(value) and value >= minimum
