"""``haorch cluster``: orchestrator nodes and workers as background programs of the state dir.

Each node is ``haorch node run --id node-N`` and each worker ``haorch worker run --id worker-N``, run like the
stack's services (processes with pid files, or containers: ``node/runtime/``), so ``stack down`` stops them
too. ``up`` also publishes their HTTP ports as Prometheus file_sd targets.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from node.config import Config
from node.errors import ServiceError, UsageError
from node.runtime.handle import Handle, TcpCheck
from node.runtime.programs import handle, haorch_argv, names
from node.stack.prometheus import write_targets

Progress = Callable[[str], None]
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "STOP": signal.SIGSTOP, "CONT": signal.SIGCONT}


def _http_check(port: int, path: str) -> TcpCheck:
    return TcpCheck(port, f"GET {path} HTTP/1.0\\r\\n\\r\\n", "200 OK")


def node_process(cfg: Config, n: int) -> Handle:
    return handle(cfg, f"node-{n}", "node", _http_check(cfg.node_http_port(n), "/healthz"))


def worker_process(cfg: Config, n: int) -> Handle:
    return handle(cfg, f"worker-{n}", "worker", _http_check(cfg.worker_http_port(n), "/metrics"))


def numbered(cfg: Config, prefix: str) -> list[int]:
    """Numbers of the state dir's recorded programs named ``<prefix>-N``."""
    numbers = []
    for name in names(cfg):
        kind, _, number = name.partition("-")
        if kind == prefix and number.isdigit():
            numbers.append(int(number))
    return sorted(numbers)


def _env(cfg: Config) -> dict[str, str]:
    return {"HAORCH_HOME": str(cfg.home), "HAORCH_PORT_BASE": str(cfg.port_base),
            "HAORCH_ZK_SESSION_TIMEOUT_S": str(cfg.zk_session_timeout_s), "HAORCH_BATCH_SIZE": str(cfg.batch_size),
            "HAORCH_LEADER_BEACON": str(cfg.leader_beacon).lower(),
            "HAORCH_TAKEOVER_PAGE_SIZE": str(cfg.takeover_page_size),
            "HAORCH_MAX_IN_FLIGHT": str(cfg.max_in_flight), "HAORCH_ARCHIVE_DIR": cfg.archive_dir,
            "HAORCH_GC_INTERVAL_S": str(cfg.gc_interval_s), "HAORCH_GC_BATCH": str(cfg.gc_batch),
            "HAORCH_RETENTION_DAYS": str(cfg.retention_days),
            "PYTHONUNBUFFERED": "1"}


def start_node(cfg: Config, n: int) -> int | None:
    """Start node-n unless it runs; returns its pid if started."""
    proc = node_process(cfg, n)
    if proc.alive():
        return None
    return proc.start(haorch_argv(cfg, "node", "run", "--id", f"node-{n}"), env=_env(cfg))


def start_worker(cfg: Config, n: int, concurrency: int) -> int | None:
    proc = worker_process(cfg, n)
    if proc.alive():
        return None
    return proc.start(haorch_argv(cfg, "worker", "run", "--id", f"worker-{n}", "--concurrency", str(concurrency)),
                      env=_env(cfg))


def publish_targets(cfg: Config) -> None:
    write_targets(cfg, "nodes", {f"node-{n}": f"{cfg.member_host(n)}:{cfg.node_http_port(n)}"
                                 for n in numbered(cfg, "node")})
    write_targets(cfg, "workers", {f"worker-{n}": f"{cfg.member_host(n)}:{cfg.worker_http_port(n)}"
                                   for n in numbered(cfg, "worker")})


def up(cfg: Config, nodes: int = 3, workers: int = 2, concurrency: int | None = None,
       progress: Progress = lambda _m: None, wait_s: float = 60.0) -> dict[str, Any]:
    """Start nodes 1..nodes and workers 1..workers that are not running; wait until a leader acts."""
    if not 1 <= nodes <= 29:
        raise UsageError(f"--nodes must be 1..29, got {nodes}")
    if not 0 <= workers <= 99:
        raise UsageError(f"--workers must be 0..99, got {workers}")
    started = []
    for n in range(1, nodes + 1):
        if start_node(cfg, n):
            started.append(f"node-{n}")
    for n in range(1, workers + 1):
        if start_worker(cfg, n, concurrency or cfg.worker_concurrency):
            started.append(f"worker-{n}")
    publish_targets(cfg)
    for name in started:
        progress(f"{name} started")
    leader = wait_for_leader(cfg, wait_s)
    handles = {f"node-{n}": node_process(cfg, n) for n in range(1, nodes + 1)}
    handles.update({f"worker-{n}": worker_process(cfg, n) for n in range(1, workers + 1)})
    dead = [name for name in started if not handles[name].alive()]
    if dead:
        raise ServiceError(f"{', '.join(dead)} exited right after start; see "
                           f"`{' '.join(handles[dead[0]].log_command(50, False))}`")
    progress(f"{leader['node_id']} leads with epoch {leader['epoch']}")
    return {"started": started, "leader": leader["node_id"], "epoch": leader["epoch"]}


def down(cfg: Config, progress: Progress = lambda _m: None) -> list[str]:
    """Stop every worker, then every standby, then the leader (so it hands over to nobody mid-work)."""
    stopped = []
    for n in numbered(cfg, "worker"):
        if worker_process(cfg, n).stop(grace_s=10.0):
            stopped.append(f"worker-{n}")
    rows = status(cfg)
    order = sorted(rows, key=lambda r: r["role"] == "leader")
    for row in order:
        if node_process(cfg, int(row["node_id"].split("-")[1])).stop(grace_s=10.0):
            stopped.append(row["node_id"])
    publish_targets(cfg)
    for name in stopped:
        progress(f"{name} stopped")
    return stopped


def restart(cfg: Config, rolling: bool = True, progress: Progress = lambda _m: None,
            wait_s: float = 60.0) -> list[dict[str, Any]]:
    """Restart every running node. ``rolling``: one at a time, standbys first and the leader last, each with
    SIGTERM (a leader hands over: the next takes over without waiting for a session to expire) and started again,
    the next only when it is back as a connected standby or leader, so that a quorum of nodes always runs. Not
    rolling: all stopped, then all started. Returns per node the seconds it was gone. A crash part way leaves
    the nodes not yet restarted running: ``restart`` again is harmless."""
    rows = sorted((r for r in status(cfg) if r["pid"]), key=lambda r: r["role"] == "leader")
    if not rows:
        raise ServiceError("no node runs (`haorch cluster up`)")
    numbers = [int(r["node_id"].split("-")[1]) for r in rows]
    steps = [[n] for n in numbers] if rolling else [numbers]
    out = []
    for step in steps:
        t0 = time.monotonic()
        for n in step:
            node_process(cfg, n).stop(grace_s=30.0)
            progress(f"node-{n} stopped")
        for n in step:
            start_node(cfg, n)
        for n in step:
            _wait_node_ready(cfg, n, wait_s)
            gone = round(time.monotonic() - t0, 2)
            progress(f"node-{n} back after {gone} s")
            out.append({"node_id": f"node-{n}", "seconds": gone})
    wait_for_leader(cfg, wait_s)
    return out


def _wait_node_ready(cfg: Config, n: int, timeout_s: float) -> None:
    """Until node ``n`` answers /readyz as a connected leader or standby; ServiceError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = _readyz(cfg, n)
        if info and info.get("session") == "CONNECTED" and info.get("role") in ("leader", "standby"):
            return
        if not node_process(cfg, n).alive():
            raise ServiceError(f"node-{n} exited after its restart; see `haorch stack logs node-{n}`")
        time.sleep(0.1)
    raise ServiceError(f"node-{n} not ready within {timeout_s:g} s after its restart")


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    """For https node URLs (``tls_cert`` set): trust ``$HAORCH_CA_FILE``, else the node certificate itself (as a
    partial chain, so that a CA-signed leaf is trusted as well as a self-signed one). None for plain HTTP."""
    if not cfg.tls_cert:
        return None
    context = ssl.create_default_context(cafile=os.environ.get("HAORCH_CA_FILE") or cfg.tls_cert)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _readyz(cfg: Config, n: int, timeout_s: float = 0.5) -> dict[str, Any] | None:
    url = f"{cfg.node_url(n)}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=tls_context(cfg)) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 still carries the JSON body
        try:
            return json.loads(exc.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None


def status(cfg: Config) -> list[dict[str, Any]]:
    """One row per node: node_id, pid, role (leader|standby|down|unknown), epoch, http_port."""
    rows = []
    for n in numbered(cfg, "node"):
        pid = node_process(cfg, n).pid()
        info = _readyz(cfg, n) if pid else None
        role = info.get("role", "unknown") if info else ("unknown" if pid else "down")
        rows.append({"node_id": f"node-{n}", "pid": pid, "role": role, "epoch": info.get("epoch") if info else None,
                     "http_port": cfg.node_http_port(n)})
    return rows


def leader(cfg: Config) -> dict[str, Any] | None:
    leaders = [r for r in status(cfg) if r["role"] == "leader"]
    return max(leaders, key=lambda r: r["epoch"] or 0) if leaders else None


def wait_for_leader(cfg: Config, timeout_s: float, newer_than: int = 0) -> dict[str, Any]:
    """The acting leader with an epoch above ``newer_than``; ServiceError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = leader(cfg)
        if row and (row["epoch"] or 0) > newer_than:
            return row
        time.sleep(0.05)
    raise ServiceError(f"no leader with epoch > {newer_than} within {timeout_s:g} s; see the nodes' logs "
                       "(`haorch stack logs node-1`)")


def kill_leader(cfg: Config, sig_name: str = "KILL") -> dict[str, Any]:
    """Send SIGKILL/SIGTERM/SIGSTOP to the current leader; returns its row plus the time of the signal."""
    if sig_name.upper() not in SIGNALS:
        raise UsageError(f"--signal must be one of {', '.join(SIGNALS)}")
    row = leader(cfg)
    if row is None:
        raise ServiceError("no leader to kill (is the cluster up? `haorch cluster status`)")
    at = time.time()
    node_process(cfg, int(row["node_id"].split("-")[1])).signal(SIGNALS[sig_name.upper()])
    return {**row, "signal": sig_name.upper(), "at": at}
