"""References in a task's params, resolved by the worker just before the executor runs: task outputs passed on to
successors, the experiment's params and its id.

- ``{{ tasks.NAME.outputs.KEY }}``: an output of an *ancestor* task (one the task depends on, directly or not, so
  the output exists before the task runs). A task's outputs are the JSON object its executor returned (the ledger
  keeps it with the attempt that succeeded); ``KEY`` may be a dotted path into nested objects.
- ``{{ params.KEY }}``: the value of another param of the same task after the merge rule (so a template can route
  an experiment param such as ``inputs`` into an executor's ``src``).
- ``{{ experiment.id }}``: the experiment's id (per-experiment paths on a site).

A value that is exactly one reference becomes the referenced value, of any JSON type; a reference inside a longer
string is replaced by it as text (a string as is, anything else as JSON). A referenced param is inserted as it is
(references inside it are not resolved again)::

    find_refs({"cmd": "squeue -j {{ tasks.submit.outputs.job_id }}"})     # {"submit"}
    resolve({"job": "{{ tasks.submit.outputs.job_id }}"}, {"submit": {"job_id": "42"}})   # {"job": "42"}

Template registration checks references (``node/model/template.py``: :func:`reference_problem`); a reference that
has no value when the task runs fails the attempt with one line (:class:`UnresolvedReference`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

_PATH = r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*"
REF_RE = re.compile(r"\{\{\s*(?:tasks\.(?P<task>[a-z][a-z0-9_-]{0,62})\.outputs\.(?P<path>" + _PATH + r")"
                    r"|params\.(?P<param>[A-Za-z0-9_.-]+)|(?P<experiment>experiment\.id))\s*\}\}")
_LOOSE_RE = re.compile(r"\{\{\s*(?:tasks|params|experiment)\.")  # something that means to be a reference


class UnresolvedReference(ValueError):
    """A reference without a value; the message is one line."""


def find_refs(value: Any) -> set[str]:
    """Names of the tasks whose outputs ``value`` (a param value, nested or not) references."""
    return {m.group("task") for text in _strings(value) for m in REF_RE.finditer(text) if m.group("task")}


def reference_problem(value: Any, ancestors: Collection[str], params: Collection[str]) -> str | None:
    """What is wrong with the references in ``value`` of a task with these ``ancestors`` and param names, if
    anything: a malformed reference, the outputs of a task that is not an ancestor, an unknown param."""
    for text in _strings(value):
        refs = list(REF_RE.finditer(text))
        if len(_LOOSE_RE.findall(text)) != len(refs):
            return (f"has a malformed reference in {text!r:.200}: write {{{{ tasks.NAME.outputs.KEY }}}}, "
                    "{{ params.KEY }} or {{ experiment.id }}")
        for m in refs:
            if m.group("task") and m.group("task") not in ancestors:
                return (f"references the outputs of {m.group('task')!r}, which is not among the tasks it depends on "
                        "(directly or not)")
            if m.group("param") and m.group("param") not in params:
                return f"references the param {m.group('param')!r}, which it does not have"
    return None


def resolve(value: Any, outputs: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any] | None = None,
            experiment_id: str = "") -> Any:
    """``value`` with every reference replaced: task outputs from ``outputs`` (task name -> its outputs), params
    from ``params``, the experiment id; :class:`UnresolvedReference` names the first reference without a value."""
    def lookup(m: re.Match[str]) -> Any:
        if m.group("task"):
            return _output(m.group("task"), m.group("path"), outputs)
        if m.group("param"):
            if params is None or m.group("param") not in params:
                raise UnresolvedReference(f"no param {m.group('param')!r} to reference")
            return params[m.group("param")]
        return experiment_id

    if isinstance(value, str):
        whole = REF_RE.fullmatch(value.strip())
        if whole:
            return lookup(whole)
        return REF_RE.sub(lambda m: _as_text(lookup(m)), value)
    if isinstance(value, dict):
        return {k: resolve(v, outputs, params, experiment_id) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, outputs, params, experiment_id) for v in value]
    return value


def _output(task: str, path: str, outputs: Mapping[str, Mapping[str, Any]]) -> Any:
    if task not in outputs:
        raise UnresolvedReference(f"task {task!r} has no recorded outputs (it has not succeeded)")
    node: Any = outputs[task]
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise UnresolvedReference(f"task {task!r} has no output {path!r} "
                                  f"(outputs: {', '.join(sorted(outputs[task])) or 'none'})")
        node = node[part]
    return node


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
