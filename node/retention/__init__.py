"""Retention: finished experiments past their type's retention period are deleted from both stores, in small
fenced batches, optionally archived first (``policy.py``: the periods; ``archive.py``: the gzip JSON lines;
``collector.py``: one gc step and the leader's background loop). ``haorch gc`` runs the same steps by hand."""
