"""Chaos testing for haorch: fault injection (:mod:`chaos_tests.faults`), named scenarios under load
(:mod:`chaos_tests.scenarios`) and their reports (:mod:`chaos_tests.report`).

A run ends with the one invariant verifier, :mod:`node.verify` (``haorch chaos check`` is its command line):

    from node.verify import Scope, check

    report = check(cfg, Scope(experiment_ids=ids))   # or Scope(since=started_at)
    report.ok, report.violations, report.to_markdown()
"""
