"""Thread stacks on demand: ``kill -USR1 <pid>`` of a node or worker writes every thread's Python stack to its log.

The answer to "what is it waiting for?" of a process that is alive but does nothing (a term stuck on a lock, a
worker that stopped consuming), without a debugger or a restart. :mod:`faulthandler` writes from its own signal
handler, so it answers even when every thread is blocked in a call that holds the GIL released (a socket read).
"""

from __future__ import annotations

import faulthandler
import signal

DUMP_SIGNAL = signal.SIGUSR1


def dump_stacks_on_signal() -> None:
    """From now on, :data:`DUMP_SIGNAL` writes every thread's stack to standard error (the process's log)."""
    faulthandler.register(DUMP_SIGNAL, all_threads=True)
