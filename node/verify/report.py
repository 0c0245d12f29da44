"""What :func:`node.verify.check.check` found: violations and counters, as a dict (JSON) or Markdown."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from node.verify.rules import KINDS, Violation


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    experiments: int = 0
    tasks: int = 0
    duplicate_executions: int = 0   # ledger keys (experiment, task, attempt) with more than one row (violations)
    duplicate_rows: int = 0         # rows beyond the first for those keys
    replays: int = 0                # sum of ledger.replayed_count
    epochs: int = 0                 # leader epochs that wrote transitions of the checked experiments
    executions: int = 0             # ledger rows
    transitions: int = 0            # transitions rows
    archived: int = 0               # experiments retention deleted, checked from their archive records
    states: dict[str, int] = field(default_factory=dict)
    since: float | None = None
    experiment_ids: int | None = None  # how many ids the check was restricted to, if any
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for v in self.violations:
            counts[v.kind] += 1
        return dict(counts)

    def of_kinds(self, kinds: tuple[str, ...]) -> list[Violation]:
        return [v for v in self.violations if v.kind in kinds]

    def counters(self) -> dict[str, Any]:
        return {"experiments": self.experiments, "tasks": self.tasks, "transitions": self.transitions,
                "executions": self.executions, "duplicate_executions": self.duplicate_executions,
                "duplicate_rows": self.duplicate_rows, "replays": self.replays, "epochs": self.epochs,
                "archived": self.archived}

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.counters(), "states": dict(self.states),
                "violations_by_kind": self.by_kind(), "violations": [asdict(v) for v in self.violations],
                "since": self.since, "experiment_ids": self.experiment_ids, "elapsed_s": round(self.elapsed_s, 3)}

    def to_markdown(self, max_per_kind: int = 50) -> str:
        scope = "all experiments"
        if self.experiment_ids is not None:
            scope = f"{self.experiment_ids} given experiment id(s)"
        if self.since is not None:
            scope += f" created at or after {self.since:.3f}"
        lines = [f"## Invariant check: {'OK' if self.ok else f'{len(self.violations)} violation(s)'}", "",
                 f"Scope: {scope}; checked in {self.elapsed_s:.2f} s.", "",
                 "| counter | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in self.counters().items()]
        if self.states:
            lines.append("| states | " + ", ".join(f"{s} {n}" for s, n in sorted(self.states.items())) + " |")
        lines.append("")
        if self.ok:
            lines.append("Every invariant holds.")
            return "\n".join(lines) + "\n"
        lines += ["| invariant | kind | violations |", "| --- | --- | --- |"]
        lines += [f"| {KINDS.get(k, '?')} | `{k}` | {n} |" for k, n in sorted(self.by_kind().items())]
        lines.append("")
        shown: dict[str, int] = defaultdict(int)
        for v in self.violations:
            shown[v.kind] += 1
            if shown[v.kind] <= max_per_kind:
                lines.append(f"- `{v.kind}` {v.detail}")
        for kind, n in sorted(shown.items()):
            if n > max_per_kind:
                lines.append(f"- `{kind}`: {n - max_per_kind} more not shown")
        return "\n".join(lines) + "\n"
