"""The one verifier of the HA invariants over what MariaDB and Neo4j recorded (``haorch chaos check``, the demo,
chaos runs, benchmarks and tests):

    from node.verify import Scope, check

    report = check(cfg, Scope(experiment_ids=ids))   # or Scope(since=started_at)
    report.ok, report.violations, report.to_markdown(), report.to_dict()

- :mod:`node.verify.snapshot`: I/O only, the stores read once for a scope into a plain ``Snapshot``;
- :mod:`node.verify.rules`: the invariants as pure rules ``Snapshot -> list[Violation]``;
- :mod:`node.verify.report` and :mod:`node.verify.check`: the report, and the function that ties them together;
- :mod:`node.verify.hpc` (pure) and :mod:`node.verify.hpc_read` (the site's sacct/squeue and the staging journals):
  the invariants of work on an HPC site, one SLURM job per task unless an earlier one failed and no file staged
  twice into the same place (the ``hpc`` chaos scenarios check them).
"""

from node.verify.check import check
from node.verify.report import Report
from node.verify.rules import EXACTLY_ONCE_KINDS, KINDS, Violation
from node.verify.snapshot import Scope

__all__ = ["EXACTLY_ONCE_KINDS", "KINDS", "Report", "Scope", "Violation", "check"]
