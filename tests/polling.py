"""Waiting in tests: poll a condition with a deadline (importable from every test folder: tests/ is on sys.path
through tests/conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str = "the condition", poll_s: float = 0.05) -> T:
    """Poll ``predicate()`` until it returns something truthy and return that; AssertionError naming ``what``
    after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def home_for_mysql_account(home: Path, suffix: str) -> Path:
    """A state dir beside ``home`` for stacks with Galera members, whose ``mysql`` account must enter every parent
    of their data dirs; under /tmp (which every account may enter) when a parent of ``home`` is closed (a clone
    under /root, say)."""
    if all(parent.stat().st_mode & 0o001 for parent in home.resolve().parents if parent.exists()):
        return Path(f"{home}-{suffix}")
    return Path("/tmp") / f"haorch-{home.name}-{suffix}"
