"""The bounds on what enters haorch from outside, declared once: ids, queue messages and the values inside them.

Each bound is what the column or the driver that stores the value can take (MariaDB ``VARCHAR(64)``, ``INT``,
``BIGINT``; Neo4j 64-bit integers; UTF-8 text everywhere), so a value within them never makes a store fail. Every
check returns a one-line problem, or None when the value is fine::

    id_problem("exp-1", "experiment id")       # None
    id_problem("a/b", "experiment id")         # "invalid experiment id 'a/b': 1-64 printable characters, no '/'"
    text_problem("caf\\udce9", "param 'f'")    # "param 'f' is not encodable as UTF-8"
    value_problem({"x": 1e999}, "field 'result'")   # "field 'result' is not a finite number"
"""

from __future__ import annotations

import math
from typing import Any

MAX_ID_CHARS = 64  # VARCHAR(64): experiment ids, task names, worker and node ids, task kinds
MAX_ERROR_CHARS = 512  # ledger.error VARCHAR(512)
MAX_MESSAGE_BYTES = 256 * 1024  # one message on a queue (params and results are bounded far below it)
MAX_NESTING = 32  # depth of a nested JSON value (params, result)
INT_MAX = 2**31 - 1  # MariaDB INT: attempts
BIGINT_MAX = 2**63 - 1  # MariaDB BIGINT, Neo4j integers: epochs and any integer in a message


def text_problem(value: str, what: str) -> str | None:
    """A string no store can take: one that is not encodable as UTF-8 (a lone surrogate, which JSON accepts)."""
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} is not encodable as UTF-8"
    return None


def name_problem(value: str, what: str) -> str | None:
    """A name (task kind, executor, worker id) that is not 1-64 printable characters (printable also excludes
    lone surrogates and line breaks)."""
    if not value or len(value) > MAX_ID_CHARS or not value.isprintable():
        return f"invalid {what} {value[:80]!r}: 1-{MAX_ID_CHARS} printable characters"
    return None


def id_problem(value: str, what: str) -> str | None:
    """An id that is part of a task key ``<experiment>/<task>``: a name without '/'."""
    if name_problem(value, what) is not None or "/" in value:
        return f"invalid {what} {value[:80]!r}: 1-{MAX_ID_CHARS} printable characters, no '/'"
    return None


def value_problem(value: Any, where: str, depth: int = 0) -> str | None:
    """A decoded JSON value no store can take: a string (or key) that is not encodable as UTF-8, a number that is
    not finite or outside 64-bit integers, nesting deeper than :data:`MAX_NESTING`."""
    if isinstance(value, str):
        return text_problem(value, where)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if -BIGINT_MAX - 1 <= value <= BIGINT_MAX else f"{where} is outside 64-bit integers"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is not a finite number"
    if depth >= MAX_NESTING:
        return f"{where} is nested deeper than {MAX_NESTING} levels"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = value_problem(key, f"{where} key", depth + 1) or value_problem(item, where, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, list):
        for item in value:
            problem = value_problem(item, where, depth + 1)
            if problem:
                return problem
        return None
    return f"{where} is a {type(value).__name__}, not a JSON value"
