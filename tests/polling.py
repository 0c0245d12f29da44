"""Waiting in tests: poll a condition with a deadline (importable from every test folder: tests/ is on sys.path
through tests/conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
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
