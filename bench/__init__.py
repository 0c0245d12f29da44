"""Benchmarks run by ``haorch bench`` / ``make bench``: each prints a table and appends it to docs/BENCHMARKS.md."""
