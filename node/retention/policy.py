"""How long finished experiments are kept: a period per experiment type, else the configuration's default.

    policy = Policy.from_definitions(cfg.retention_days, records.latest_definitions())
    cutoffs = policy.cutoffs(now)   # Cutoffs(default=<UNIX s> | None, by_type={type: <UNIX s> | None})
    cutoffs.of("chain")             # an experiment of that type finished before this is past retention

A type's period is the ``retention_days`` of its latest template version (the version a new experiment gets, so
changing the period is registering a new version); a type whose latest version does not set it keeps the default.
0 days means keep forever (a cutoff of None). Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

DAY_S = 86400.0


@dataclass(frozen=True)
class Cutoffs:
    """Per type, the finish time before which an experiment is past retention (None: kept forever); types not in
    ``by_type`` use ``default``."""

    default: float | None
    by_type: dict[str, float | None] = field(default_factory=dict)

    def of(self, type_: str) -> float | None:
        return self.by_type.get(type_, self.default)

    @property
    def any(self) -> bool:
        """Whether anything can be past retention at all."""
        return self.default is not None or any(c is not None for c in self.by_type.values())


@dataclass(frozen=True)
class Policy:
    """Retention periods in days: ``default`` for every type without one of its own in ``by_type``; 0 keeps
    forever."""

    default: float
    by_type: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def from_definitions(default_days: float, definitions: Mapping[str, str]) -> Policy:
        """The policy from each type's latest template definition (canonical JSON, as MariaDB's ``templates``
        table keeps it): its ``retention_days`` when set. A definition that is not JSON keeps the default (it
        cannot be one MariaDB accepted; the check costs nothing)."""
        by_type: dict[str, float] = {}
        for type_, definition in definitions.items():
            try:
                days = json.loads(definition).get("retention_days")
            except (ValueError, AttributeError):
                continue
            if isinstance(days, (int, float)) and not isinstance(days, bool) and days >= 0:
                by_type[type_] = float(days)
        return Policy(float(default_days), by_type)

    def days(self, type_: str) -> float:
        return self.by_type.get(type_, self.default)

    def cutoffs(self, now: float) -> Cutoffs:
        """The cutoffs at ``now``; types whose period equals the default are left to the default."""
        return Cutoffs(_cutoff(self.default, now),
                       {t: _cutoff(d, now) for t, d in self.by_type.items() if d != self.default})


def _cutoff(days: float, now: float) -> float | None:
    return None if days <= 0 else now - days * DAY_S
