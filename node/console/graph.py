"""The DAG of an experiment (or a template) as inline SVG, drawn by Graphviz ``dot -Tsvg`` in a subprocess.

Each task is a box labelled with its name, state and attempt and filled by its state; an edge runs from a task to
each task that depends on it. ``dot`` runs with a timeout: a missing ``dot``, a non-zero exit or a timeout gives a
:class:`Graph` with ``error`` set (the page shows that in a box instead of the drawing) and never raises. A drawing
is cached by the hash of its DOT source (the source holds every state and attempt, so a changed state is a new
key); the cache holds the last CACHE_SIZE drawings of the process.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

DOT = "/usr/bin/dot"
DOT_TIMEOUT_S = 5.0
CACHE_SIZE = 256

#: fill colour per task state (dark text on each passes WCAG AA contrast)
STATE_FILL = {
    "PENDING": "#e5e7eb",
    "DISPATCHED": "#bfdbfe",
    "RETRY_WAIT": "#fde68a",
    "SUCCEEDED": "#bbf7d0",
    "FAILED": "#fecaca",
    "CANCELLED": "#d6d3d1",
}
TEMPLATE_FILL = "#f8fafc"
_PROLOG = re.compile(r"\A.*?(?=<svg\b)", re.S)


@dataclass(frozen=True)
class GraphNode:
    """One task: its name, state (None on a template) and attempt (0 before the first)."""

    name: str
    depends_on: tuple[str, ...] = ()
    state: str | None = None
    attempt: int = 0
    kind: str = ""


@dataclass(frozen=True)
class Graph:
    """A drawing: ``svg`` (inline ``<svg>`` element) or ``error`` (one line saying why there is none)."""

    svg: str | None
    error: str | None = None


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def _multiline(lines: list[str]) -> str:
    """A quoted DOT label of centred lines (DOT's own ``\\n`` between them)."""
    return "\\n".join(_quoted(line)[1:-1] for line in lines).join('""')


def dot_source(nodes: Iterable[GraphNode], title: str = "dag") -> str:
    """The DOT text of the DAG: a node per task (id ``task-<name>``, class ``state-<STATE>``), an edge per
    dependency whose both ends are among ``nodes``."""
    nodes = list(nodes)
    names = {n.name for n in nodes}
    lines = [f"digraph {_quoted(title)} {{",
             '  graph [rankdir=LR, bgcolor="transparent", nodesep=0.3, ranksep=0.5, fontname="sans-serif"];',
             '  node [shape=box, style="rounded,filled", fontname="sans-serif", fontsize=11, '
             'color="#334155", fontcolor="#0f172a"];',
             '  edge [color="#475569", arrowsize=0.7];']
    for n in nodes:
        if n.state is None:
            label = [n.name, n.kind] if n.kind else [n.name]
            fill, css = TEMPLATE_FILL, "template-task"
        else:
            label = [n.name, f"{n.state} · attempt {n.attempt}"]
            fill, css = STATE_FILL.get(n.state, TEMPLATE_FILL), f"state-{n.state}"
        lines.append(f"  {_quoted(n.name)} [id={_quoted('task-' + n.name)}, class={_quoted(css)}, "
                     f"label={_multiline(label)}, fillcolor={_quoted(fill)}, tooltip={_quoted(' — '.join(label))}];")
    for n in nodes:
        for dep in n.depends_on:
            if dep in names:
                lines.append(f"  {_quoted(dep)} -> {_quoted(n.name)};")
    lines.append("}")
    return "\n".join(lines)


class GraphRenderer:
    """Runs ``dot`` (path ``dot``, ``timeout_s`` per drawing) and caches its drawings; safe to share between
    threads (two threads may draw the same source once each: both results are equal)."""

    def __init__(self, dot: str = DOT, timeout_s: float = DOT_TIMEOUT_S, cache_size: int = CACHE_SIZE) -> None:
        self.dot = dot
        self.timeout_s = timeout_s
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Graph] = OrderedDict()
        self._lock = threading.Lock()

    def render(self, nodes: Iterable[GraphNode], title: str = "dag") -> Graph:
        source = dot_source(nodes, title)
        key = hashlib.sha256(source.encode()).hexdigest()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        graph = self._run(source)
        if graph.svg is not None:  # a failure is not cached: dot may be installed or unstuck by the next view
            with self._lock:
                self._cache[key] = graph
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return graph

    def _run(self, source: str) -> Graph:
        """``dot -Tsvg`` on ``source``; a killed-on-timeout ``dot`` is reaped by subprocess.run."""
        try:
            done = subprocess.run([self.dot, "-Tsvg"], input=source.encode(), capture_output=True,
                                  timeout=self.timeout_s, check=False)
        except FileNotFoundError:
            return Graph(None, f"Graphviz is not installed ({self.dot} not found): install the Debian package "
                               "graphviz to see the graph")
        except PermissionError:
            return Graph(None, f"Graphviz's {self.dot} is not executable")
        except subprocess.TimeoutExpired:
            return Graph(None, f"Graphviz did not draw the graph within {self.timeout_s:g} s")
        if done.returncode != 0:
            message = done.stderr.decode(errors="replace").strip().splitlines()
            return Graph(None, f"Graphviz failed (exit {done.returncode}): {message[0] if message else 'no message'}")
        return Graph(_PROLOG.sub("", done.stdout.decode(errors="replace"), count=1).strip())


#: the process's renderer (pages share its cache)
RENDERER = GraphRenderer()
