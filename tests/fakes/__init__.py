"""In-memory fakes of the stores and the broker, for pure-logic unit tests (never for integration tests).

Each fake appends what it does to a shared :class:`Journal`, so that a test can assert the order of effects
(Neo4j advance before the MariaDB write before the publish before the ack).
"""
