"""The ``haorch`` command line: one module per command group."""
