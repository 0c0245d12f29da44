"""The names of the executors a task may name: what template validation checks a task's ``executor`` against.

The worker implements each of them (``node/worker/executors.py``, whose registry has exactly these keys); a
store or a command validates a template against the names alone, without importing the worker::

    parse_template(data, KNOWN_EXECUTORS)
"""

from __future__ import annotations

#: executors with an undo: what they start outside haorch (SLURM jobs) is reversed when their experiment is cancelled
UNDO_EXECUTORS: tuple[str, ...] = ("slurm_submit",)

KNOWN_EXECUTORS: tuple[str, ...] = ("noop", "sleep", "fail", "shell", "mark", "wait_file", "stage_in", "stage_out",
                                     "slurm_submit", "slurm_monitor", "slurm_cancel")
