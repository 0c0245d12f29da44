"""One ``squeue`` of the site account's jobs, shared by every monitor check of a worker for up to a second.

A monitor check per job per poll does not scale: 200 jobs polled every second are 200 ``squeue`` calls a second,
which keep a worker's slots busy with nothing but waiting (measured: all 8 slots at times, 2.5 on average, in
``haorch bench hpc``). A snapshot lists every job of the site's user (``-t all``: finished ones too, for as long as
slurmctld keeps them: MinJobAge), so most checks cost no remote call at all::

    job = SNAPSHOTS.job("local", site, "123", run)   # a slurm.Job, or None: not in the latest snapshot

None means "ask about this job alone" (it ended long ago and only sacct knows it, or it is newer than the
snapshot). The snapshot is taken under a lock per worker: threads that need one at the same time share it. A
failed ``squeue`` is not cached; the caller's own query then reports the failure.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from node.hpc import slurm
from node.hpc.siteinfo import SiteInfo

MAX_AGE_S = 1.0

#: runs a remote command for the check: (command) -> (output, exit code)
Query = Callable[[str], tuple[str, int]]


@dataclass
class _Snapshot:
    taken_at: float  # monotonic, before the squeue ran: a job submitted during it may be missing
    jobs: dict[str, slurm.Job]


class QueueSnapshots:
    """The latest snapshot per site (by login address and account)."""

    def __init__(self, max_age_s: float = MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._by_site: dict[tuple[str, int, str], _Snapshot] = {}
        self.taken = 0  # squeue calls made (for tests and the bench)

    def job(self, site: SiteInfo, job_id: str, query: Query) -> slurm.Job | None:
        """``job_id`` as the site's latest snapshot (at most ``max_age_s`` old) shows it, or None."""
        key = (site.host, site.port, site.user)
        with self._lock:
            snapshot = self._by_site.get(key)
            if snapshot is None or time.monotonic() - snapshot.taken_at > self.max_age_s:
                began = time.monotonic()
                text, rc = query(f"squeue -h -r -t all -u {shlex.quote(site.user)} -O "
                                 f"{shlex.quote(slurm.SQUEUE_FORMAT)}")
                self.taken += 1
                if rc != 0:
                    self._by_site.pop(key, None)
                    return None
                snapshot = _Snapshot(began, slurm.group_jobs(slurm.parse_squeue(text)))
                self._by_site[key] = snapshot
        return snapshot.jobs.get(job_id)


SNAPSHOTS = QueueSnapshots()
