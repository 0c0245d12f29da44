"""HTTP endpoints of nodes and workers."""
