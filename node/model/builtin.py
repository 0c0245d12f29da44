"""The built-in experiment types shipped as YAML in ``node/model/builtin/``: chain, diamond, fanout, retry."""

from __future__ import annotations

from collections.abc import Collection
from importlib.resources import as_file, files

from node.model.executors import KNOWN_EXECUTORS
from node.model.template import Template, load_template_file


def builtin_templates(known_executors: Collection[str]) -> list[Template]:
    """Load and validate every built-in template, sorted by file name."""
    folder = files("node.model").joinpath("builtin")
    templates = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            with as_file(entry) as path:
                templates.append(load_template_file(path, known_executors))
    return templates


def builtin_kinds() -> tuple[str, ...]:
    """The task kinds the built-in templates use, sorted (the metrics export their series from the start)."""
    return tuple(sorted({task.kind for template in builtin_templates(KNOWN_EXECUTORS) for task in template.tasks}))
