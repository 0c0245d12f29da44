"""node/hpc/queue_snapshots.py without a server: one squeue per max_age for every check of a worker, shared by
threads, not cached when it fails."""

from __future__ import annotations

import threading
import time

from node.hpc.queue_snapshots import QueueSnapshots
from node.hpc.siteinfo import SiteInfo

SITE = SiteInfo(host="127.0.0.1", port=22, user="gw", key_file="/k")
# squeue -h -r -t all -O SQUEUE_FORMAT rows: a running job and a completed one
OUT = ("7|N/A|N/A|RUNNING|0|0:03|None|haorch.e.submit.a1|\n"
       "8|N/A|N/A|COMPLETED|0|0:01|None|haorch.f.submit.a1|\n")


class Site:
    def __init__(self, out: str = OUT, rc: int = 0, delay_s: float = 0.0) -> None:
        self.out, self.rc, self.delay_s, self.calls = out, rc, delay_s, []

    def query(self, command: str) -> tuple[str, int]:
        self.calls.append(command)
        time.sleep(self.delay_s)
        return self.out, self.rc


def test_checks_within_max_age_share_one_squeue_of_the_account() -> None:
    site, snaps = Site(), QueueSnapshots(max_age_s=0.3)
    job = snaps.job(SITE, "7", site.query)
    assert job is not None and job.state == "RUNNING"
    done = snaps.job(SITE, "8", site.query)
    assert done is not None and done.terminal
    assert snaps.job(SITE, "9", site.query) is None  # not listed: the caller asks about it alone
    assert len(site.calls) == 1 and "-u gw" in site.calls[0] and "-t all" in site.calls[0]
    time.sleep(0.35)
    snaps.job(SITE, "7", site.query)
    assert len(site.calls) == 2


def test_threads_needing_a_snapshot_at_once_share_one_and_a_failure_is_not_cached() -> None:
    site, snaps = Site(delay_s=0.2), QueueSnapshots(max_age_s=5.0)
    threads = [threading.Thread(target=snaps.job, args=(SITE, "7", site.query)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(site.calls) == 1
    broken, snaps = Site(out="slurm_load_jobs error: Unable to contact slurm controller", rc=1), QueueSnapshots()
    assert snaps.job(SITE, "7", broken.query) is None
    assert snaps.job(SITE, "7", broken.query) is None
    assert len(broken.calls) == 2
