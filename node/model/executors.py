"""The names of the executors a task may name: what template validation checks a task's ``executor`` against.

The worker implements each of them (``node/worker/executors.py``, whose registry has exactly these keys); a
store or a command validates a template against the names alone, without importing the worker::

    parse_template(data, KNOWN_EXECUTORS)
"""

from __future__ import annotations

KNOWN_EXECUTORS: tuple[str, ...] = ("noop", "sleep", "fail", "shell", "mark")
