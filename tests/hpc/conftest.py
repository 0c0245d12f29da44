"""The HPC test site (node/hpc/site.py) for the tests that need one: real SLURM, munge, slurmdbd and sshd
processes, in a state dir beside the test stack's (``<test home>-hpc``) on the test port base (the site's ports are
``port_base + 280 ..``: no clash with the stack's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import Config, load_config
from node.hpc import site


def _progress(message: str) -> None:
    print(f"[hpc] {message}", flush=True)


@pytest.fixture(scope="module")
def hpc_site(test_config: Config) -> Iterator[Config]:
    """A running site registered as ``local`` in the returned config's home; fresh (purged) for each module and
    stopped and purged after it."""
    cfg = load_config(Path(f"{test_config.home}-hpc"), port_base=test_config.port_base)
    site.down(cfg, purge=True)  # what a crashed earlier run left, found by its pid files
    site.up(cfg, progress=_progress)
    yield cfg
    site.down(cfg, purge=True, progress=_progress)
