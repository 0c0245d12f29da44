"""Appending benchmark sections to docs/BENCHMARKS.md of the source checkout (a wheel install has no docs/: a
recording run fails at its start, with one line, and ``--no-record`` runs anyway)."""

from __future__ import annotations

from pathlib import Path

from node.paths import checkout_file

HEADER = ("# Benchmarks\n\nEvery section below was appended by a benchmark run (`make bench`, `haorch bench ...`) on "
          "the project's 2-core, 24 GB machine, with the whole stack on it. Configurations compared in one run.\n\n")
PURPOSE = "recording a benchmark (pass --no-record to only print it)"


def benchmarks_file() -> Path:
    """docs/BENCHMARKS.md (it may not exist yet); SetupError (one line) when haorch runs without a checkout."""
    return checkout_file("docs", purpose=PURPOSE) / "BENCHMARKS.md"


def append(section: str) -> None:
    """Append a Markdown section (creating the file with its header if needed)."""
    path = benchmarks_file()
    if not path.exists():
        path.write_text(HEADER)
    with path.open("a") as out:
        out.write("\n" + section.rstrip() + "\n")


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of ``values`` (not empty): the value at index int(q * n)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
