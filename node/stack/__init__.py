"""The service stack haorch runs as its own processes or containers: one module per service, plus the manager."""
