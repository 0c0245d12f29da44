"""The project's layering, read from the source with ``ast`` (nothing is imported or started).

Every import counts, including the lazy ones inside functions. The units are the sub-packages of ``node``
(``node.stores``, ``node.runtime``, ... and any added later), each top-level module of ``node`` (``node.config``,
``node.demo``, ...), and the packages ``election``, ``chaos_tests`` and ``bench``. A failure names the file, the
line, what it imports and the rule that forbids it.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from node.paths import REPO_ROOT

PACKAGES = ("node", "election", "chaos_tests", "bench")
ADDRESS_FILE = "node/config.py"  # the only file that may name an address: the default of ``Config.host``
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
ERLANG_IPV4 = re.compile(r"\{\s*\d{1,3}\s*(?:,\s*\d{1,3}\s*){3}\}")
NEUTRAL = ("node.config", "node.paths", "node.errors")  # what the runtime's handle types may import


@dataclass(frozen=True)
class Import:
    """One import statement's target: ``importer`` (a module) imports ``target`` at ``path:line``."""

    importer: str
    target: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.importer}) imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    """Module name -> file, for every module of the project's packages."""
    return {_module_name(path): path for package in PACKAGES for path in sorted((REPO_ROOT / package).rglob("*.py"))}


MODULES = _sources()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name an ``import from`` statement names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports_of(module: str) -> list[Import]:
    """Project modules that ``module`` imports anywhere in its file (``from pkg import mod`` names ``pkg.mod``)."""
    path = MODULES[module]
    rel = str(path.relative_to(REPO_ROOT))
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found += [Import(module, target, rel, node.lineno) for target in targets
                  if target.split(".")[0] in PACKAGES]
    return found


IMPORTS = [imp for module in MODULES for imp in _imports_of(module)]


def unit(module: str) -> str:
    """The layer unit of a module: ``node.<sub-package>``, a top-level ``node`` module, or its package."""
    parts = module.split(".")
    if parts[0] != "node":
        return parts[0]
    if len(parts) == 1:
        return "node"
    return "node." + parts[1]


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _violations(rule: str, importer_prefix: str, forbidden: tuple[str, ...],
                allowed: tuple[str, ...] = ()) -> list[str]:
    out = []
    for imp in IMPORTS:
        if not _under(imp.importer, importer_prefix) or any(_under(imp.importer, a) for a in allowed):
            continue
        for banned in forbidden:
            if _under(imp.target, banned):
                out.append(f"{imp}: {rule} ({importer_prefix} must not import {banned})")
    return out


def _cycles() -> list[str]:
    """Each cycle between units as its edges, every edge with the imports that make it."""
    edges: dict[str, dict[str, list[Import]]] = defaultdict(lambda: defaultdict(list))
    for imp in IMPORTS:
        src, dst = unit(imp.importer), unit(imp.target)
        if src != dst:
            edges[src][dst].append(imp)
    reported: set[frozenset[str]] = set()
    out = []
    for start in sorted(edges):
        cycle = _shortest_cycle(start, edges)
        if cycle is None or frozenset(cycle) in reported:
            continue
        reported.add(frozenset(cycle))
        steps = []
        for src, dst in zip(cycle, cycle[1:] + cycle[:1], strict=True):
            sites = "; ".join(str(imp) for imp in edges[src][dst][:3])
            steps.append(f"  {src} -> {dst}: {sites}")
        out.append("import cycle " + " -> ".join(cycle + cycle[:1]) + ":\n" + "\n".join(steps))
    return out


def _shortest_cycle(start: str, edges: dict[str, dict[str, list[Import]]]) -> list[str] | None:
    """The shortest path of units from ``start`` back to itself, as the units it visits (breadth first)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for here in frontier:
            for there in sorted(edges.get(here, {})):
                if there == start:
                    path = [here]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return path[::-1]
                if there not in parents:
                    parents[there] = here
                    following.append(there)
        frontier = following
    return None


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module and its classes and functions (prose, not addresses in use)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _report(problems: list[str]) -> str:
    return "\n" + "\n".join(problems)


def test_no_import_cycle_between_units() -> None:
    problems = _cycles()
    assert not problems, _report(problems)


def test_election_imports_nothing_of_haorch() -> None:
    problems = [p for banned in ("node", "chaos_tests", "bench")
                for p in _violations("rule b: election stands alone", "election", (banned,))]
    assert not problems, _report(problems)


def test_node_outside_cli_imports_neither_chaos_tests_nor_bench() -> None:
    problems = _violations("rule c: only the CLI may drive chaos runs and benchmarks", "node",
                           ("chaos_tests", "bench"), allowed=("node.cli",))
    assert not problems, _report(problems)


def test_stores_and_model_import_no_higher_layer() -> None:
    problems = _violations("rule d: stores sit below the logic that uses them", "node.stores",
                           ("node.stack", "node.leader", "node.worker", "node.http", "node.cli"))
    problems += _violations("rule d: the model is pure", "node.model", ("node.stores",))
    assert not problems, _report(problems)


def test_runtime_handle_types_depend_on_nothing_above_config() -> None:
    problems = [f"{imp}: the handle types may import only {', '.join(NEUTRAL)}" for imp in IMPORTS
                if imp.importer == "node.runtime.handle" and not any(_under(imp.target, n) for n in NEUTRAL)]
    assert not problems, _report(problems)


def test_only_the_config_names_an_address() -> None:
    problems = []
    for module, path in MODULES.items():
        rel = str(path.relative_to(REPO_ROOT))
        if rel == ADDRESS_FILE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        prose = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
                match = IPV4.search(node.value) or ERLANG_IPV4.search(node.value)
                if match:
                    problems.append(f"{rel}:{node.lineno} ({module}) names the address {match.group(0)!r}: rule e: "
                                    f"read cfg.host (only {ADDRESS_FILE} defines the default)")
    assert not problems, _report(problems)


def test_the_rules_see_imports_and_addresses() -> None:
    """The scanner itself: it finds the modules, lazy imports and the default address it must allow."""
    assert {"node.config", "node.stores.dags", "election.election", "chaos_tests.faults"} <= set(MODULES)
    assert any(imp.importer == "node.stores.dags" and imp.target == "node.model.template" for imp in IMPORTS)
    assert unit("node.stores.dags") == "node.stores" and unit("node.demo") == "node.demo"
    assert unit("election.beacon") == "election" and unit("node") == "node"
    assert IPV4.search((REPO_ROOT / ADDRESS_FILE).read_text())
