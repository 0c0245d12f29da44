"""Failpoints: unarmed, a hit is a no-op; armed, the hitting process stops itself once, and continues on SIGCONT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from chaos_tests.faults import process_stopped
from node import failpoints
from node.config import Config

CHILD = """
import sys
from pathlib import Path
from node import failpoints
from node.config import Config
cfg = Config(home=Path(sys.argv[1]))
print("before", flush=True)
failpoints.hit(cfg, "node-1", "leader.before_publish")
print("after", flush=True)
failpoints.hit(cfg, "node-1", "leader.before_publish")   # fired once: not armed any more
print("done", flush=True)
"""


def test_unarmed_hit_returns(tmp_path: Path) -> None:
    failpoints.hit(Config(home=tmp_path), "node-1", "leader.before_publish")
    assert not failpoints.disarm(Config(home=tmp_path), "node-1", "leader.before_publish")


def test_disarm_all(tmp_path: Path) -> None:
    cfg = Config(home=tmp_path)
    assert failpoints.disarm_all(cfg) == 0
    for node_id in ("node-1", "node-2"):
        failpoints.arm(cfg, node_id, "leader.before_publish")
    assert failpoints.disarm_all(cfg) == 2
    assert not failpoints.path(cfg, "node-1", "leader.before_publish").exists()


def test_armed_hit_stops_the_process_once_until_sigcont(tmp_path: Path) -> None:
    cfg = Config(home=tmp_path)
    armed = failpoints.arm(cfg, "node-1", "leader.before_publish")
    assert armed == tmp_path / "failpoints" / "node-1" / "leader.before_publish" and armed.exists()
    failpoints.arm(cfg, "node-2", "leader.before_publish")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "before\n"
        deadline = time.monotonic() + 20
        while not process_stopped(child.pid):
            assert time.monotonic() < deadline, "the child did not stop at the failpoint"
            time.sleep(0.01)
        assert not armed.exists(), "a hit removes the arming"
        assert failpoints.path(cfg, "node-2", "leader.before_publish").exists(), "another node's arming stays"
        os.kill(child.pid, signal.SIGCONT)
        assert child.stdout.readline() == "after\n"
        assert child.stdout.readline() == "done\n"
        assert child.wait(timeout=20) == 0
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait()
