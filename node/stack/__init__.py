"""The service stack haorch runs as its own processes: one module per service, plus the manager."""
