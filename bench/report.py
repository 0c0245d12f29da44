"""Appending benchmark sections to docs/BENCHMARKS.md."""

from __future__ import annotations

from node.paths import DOCS_DIR

BENCHMARKS = DOCS_DIR / "BENCHMARKS.md"
HEADER = ("# Benchmarks\n\nEvery section below was appended by a benchmark run (`make bench`, `haorch bench ...`) on "
          "the project's 2-core, 24 GB machine, with the whole stack on it. Configurations compared in one run.\n\n")


def append(section: str) -> None:
    """Append a Markdown section (creating the file with its header if needed)."""
    if not BENCHMARKS.exists():
        BENCHMARKS.parent.mkdir(parents=True, exist_ok=True)
        BENCHMARKS.write_text(HEADER)
    with BENCHMARKS.open("a") as out:
        out.write("\n" + section.rstrip() + "\n")
