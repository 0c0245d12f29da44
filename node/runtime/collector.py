"""Python's cyclic garbage collector, set for a long-running node or worker: ``tune_collector()`` once started.

With the interpreter's defaults (thresholds 700, 10, 10) a leader under load ran ~30 young collections a second and a
full one every ~6 s; the full one walked the ~110,000 objects that importing and starting the process leaves
(modules, the CLI, the metric registry, the drivers) and stopped the leader's loop for ~70 ms each time, and the
collections together took ~2.5 % of the loop (measured with ``gc.callbacks``; BENCHMARKS, issue 16, seventh
session). :func:`gc.freeze` moves what exists at that point to a generation that is never collected; a higher
first threshold lets a batch's short-lived dictionaries (freed by reference counting anyway) come and go without a
collection each time. Only reference cycles wait longer to be freed: at most ~50,000 container objects, a few MB.
"""

from __future__ import annotations

import gc

#: allocations (less deallocations) of container objects between young collections; then every 20th young collection
#: also collects the middle generation, and every 100th of those the old one (if it grew by a quarter since)
THRESHOLDS = (50_000, 20, 100)


def tune_collector() -> None:
    """Freeze the objects the process has created so far and raise the collector's thresholds (:data:`THRESHOLDS`).
    Call once, when the process has started its components, before it serves."""
    gc.collect()  # what startup left as garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
