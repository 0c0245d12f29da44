"""``haorch worker run`` as a real process: argument errors, help, metrics endpoint, graceful SIGTERM (even with
a timed-out task still running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from polling import wait_until
from worker_harness import Bus, request

HAORCH = [sys.executable, "-m", "node.cli"]


def test_concurrency_zero_is_a_usage_error() -> None:
    out = subprocess.run([*HAORCH, "worker", "run", "--concurrency", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("haorch: ") and "--concurrency" in lines[0], out.stderr


def test_help() -> None:
    out = subprocess.run([*HAORCH, "worker", "run", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--concurrency" in out.stdout and "--id" in out.stdout


@pytest.mark.stack
def test_worker_process_answers_serves_metrics_and_stops_on_sigterm(stack, bus: Bus) -> None:
    env = {**os.environ, "HAORCH_HOME": str(stack.home), "HAORCH_PORT_BASE": str(stack.port_base)}
    proc = subprocess.Popen([*HAORCH, "worker", "run", "--id", "worker-7", "--concurrency", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stuck = request(executor="sleep", params={"ms": 600_000}, timeout_s=0.2)  # outlives the worker
        bus.publish(request(executor="noop", kind="monitoring").encode(), stuck.encode())
        responses = sorted(bus.responses(2, timeout_s=20), key=lambda r: r.outcome)
        assert [(r.worker, r.outcome) for r in responses] == [("worker-7", "failure"), ("worker-7", "success")]
        url = f"http://127.0.0.1:{stack.worker_http_port(7)}/metrics"
        metrics: list[str] = []
        wait_until(lambda: metrics.append(urllib.request.urlopen(url, timeout=2).read().decode()) is None,
                   timeout_s=5)
        assert 'haorch_worker_executions_total{kind="monitoring",outcome="success"} 1.0' in metrics[-1]
        assert "haorch_tasks_total" not in metrics[-1]  # the leader's counter: a worker does not export it
        assert 'haorch_dependency_up{service="rabbitmq"} 1.0' in metrics[-1]
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)  # does not wait for the abandoned 10-minute sleep
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "worker: worker-7 stopped executed=2 replayed=0 dead_lettered=0" in err
    assert "worker: worker-7 exits with 1 timed-out task(s) still running" in err
