"""Chaos testing for haorch: the invariant checker that reads MariaDB and Neo4j after a run.

    from chaos_tests.checker import check

    report = check(cfg, since=started_at)          # or experiment_ids=[...]
    report.ok, report.violations, report.to_markdown()

The checker verifies ARCHITECTURE.md's Invariants 1-5 from what the stores recorded (the transition log, the
execution ledger, leader terms, and the Neo4j DAGs); ``haorch chaos check`` is its command line.
"""
