"""The leader: one term of takeover and DAG advancement (term.py), driven by the node (node/replica.py)."""
