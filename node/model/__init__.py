"""The DAG model: templates (abstract DAGs per experiment type) and the messages that move tasks."""
