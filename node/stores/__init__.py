"""One module per real system: Neo4j (DAGs), MariaDB (experiments, transitions, ledger, fence), RabbitMQ (queues)."""
