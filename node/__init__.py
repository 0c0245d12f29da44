"""haorch orchestrator replica: DAG model, stores, leader loop, workers, HTTP and CLI."""

__version__ = "0.1.0"
