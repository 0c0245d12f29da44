"""Logging setup shared by every haorch process: greppable ``key=value`` lines, quiet client libraries."""

from __future__ import annotations

import logging
import sys

NOISY = ("pika", "neo4j", "kazoo", "urllib3", "docker", "matplotlib")


def configure_logging(level: str = "INFO", stream=sys.stderr) -> None:
    """Configure the root logger. Client libraries log only their own criticals unless level is DEBUG:
    their retries are ours to report, once, in our own words."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=numeric, stream=stream, force=True,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.CRITICAL)
