"""``haorch bench takeover``: a cluster that starts over a large backlog of ready tasks (as after an outage during
which users kept submitting) must take it over in bounded pages, keep its connections and complete all of it.

The backlog is created directly in the stores while no node runs: ``tasks`` one-task experiments (a template
built in memory, never registered) whose task is ready and was never dispatched, each with its submission
notice queued on ``haorch.submissions``. Then ``cluster up``; measured from the stores and the leader:

- first advance: the leader's election → the first SUCCEEDED transition of its epoch;
- takeover: the leader's own record (its ``leader: takeover ... pages=N ... seconds=S`` log line);
- peak RSS of the leader process (``VmHWM``), sampled until the end;
- connections: the leader log's lost-connection and term-retry lines, and the lowest
  ``haorch_dependency_up{service="rabbitmq"}`` its ``/metrics`` showed;
- completion: every experiment terminal and COMPLETED, within ``timeout_s``.

Every experiment has an id of its own (``bench-takeover-...``) and is deleted from both stores at the end, also on
an error or Ctrl-C (:mod:`bench.scratch`); the cluster is stopped first.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.probes import fence, query
from bench.scratch import Scratch
from node import cluster
from node.config import Config
from node.model.executors import KNOWN_EXECUTORS
from node.model.messages import SubmissionNotice
from node.model.states import ExperimentState
from node.model.template import Template, parse_template
from node.stores.connect import neo4j_driver
from node.stores.dags import DagStore
from node.stores.queues import SUBMISSIONS
from node.stores.rabbit import BatchPublisher, connect
from node.stores.records import Records

Progress = Callable[[str], None]

CHUNK = 2000
ONE_TASK = {"type": "takeover-one", "description": "One no-op task: the ready backlog of haorch bench takeover.",
            "tasks": [{"name": "work", "kind": "job_submission"}]}
TAKEOVER_LINE = re.compile(r"leader: takeover epoch=(\d+) pages=(\d+) rescanned=(\d+) redispatched=(\d+) "
                           r"in_flight=(\d+) seconds=([\d.]+)")
LOST_LINES = ("rabbitmq connection lost", "retrying the term", "dependency failure")


def one_task_template() -> Template:
    return parse_template(ONE_TASK, KNOWN_EXECUTORS)


def create_backlog(cfg: Config, prefix: str, count: int, progress: Progress) -> list[str]:
    """``count`` QUEUED one-task experiments, their task ready and never dispatched, notices queued; in chunks
    of CHUNK (one MariaDB and one Neo4j transaction each). Call it while no node runs."""
    template = one_task_template()
    ids = [f"{prefix}{i:06d}" for i in range(count)]
    records = Records(cfg)
    conn = connect(cfg, "bench-takeover", heartbeat_s=0)  # not served while the stores are written
    try:
        publisher = BatchPublisher(conn)
        with neo4j_driver(cfg) as driver:
            dags = DagStore(driver)
            for start in range(0, count, CHUNK):
                chunk: list[tuple[str, dict[str, str]]] = [(i, {}) for i in ids[start:start + CHUNK]]
                records.insert_experiments(template.type, 1, chunk)
                dags.create_experiments(template, 1, chunk)
                publisher.publish_batch(SUBMISSIONS, (SubmissionNotice(experiment_id=i).encode() for i, _ in chunk))
                if (start // CHUNK) % 10 == 9 or start + CHUNK >= count:
                    progress(f"takeover: {min(count, start + CHUNK)}/{count} ready tasks created")
    finally:
        if conn.is_open:
            conn.close()
        records.close()
    return ids


def state_counts(cfg: Config, prefix: str) -> dict[str, int]:
    like = prefix.replace("_", "\\_") + "%"
    return {r[0]: int(r[1]) for r in query(cfg, "SELECT state, COUNT(*) FROM experiments WHERE experiment_id LIKE %s "
                                                "GROUP BY state", (like,))}


def peak_rss_mib(pid: int | None) -> float | None:
    """The process's peak resident set (VmHWM), MiB; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else None


def rabbit_up(cfg: Config, node: int) -> float | None:
    """``haorch_dependency_up{service="rabbitmq"}`` on a node's /metrics; None if it does not answer."""
    try:
        with urllib.request.urlopen(f"{cfg.node_url(node)}/metrics", timeout=1.0) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    match = re.search(r'^haorch_dependency_up\{service="rabbitmq"\} ([\d.]+)$', text, re.M)
    return float(match.group(1)) if match else None


@dataclass
class Watch:
    """What is sampled while the cluster works the backlog off."""

    leader: dict[str, Any]
    peak_rss_mib: float = 0.0
    rabbit_up_min: float | None = None
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since up, experiments terminal)

    def sample(self, cfg: Config) -> None:
        self.leader = cluster.leader(cfg) or self.leader  # the one acting now (it may have stepped down)
        rss = peak_rss_mib(self.leader["pid"])
        if rss is not None:
            self.peak_rss_mib = max(self.peak_rss_mib, rss)
        up = rabbit_up(cfg, int(self.leader["node_id"].split("-")[1]))
        if up is not None:
            self.rabbit_up_min = up if self.rabbit_up_min is None else min(self.rabbit_up_min, up)


def log_offsets(cfg: Config, nodes: int) -> dict[int, int]:
    return {n: _size(cluster.node_process(cfg, n).log_file) for n in range(1, nodes + 1)}


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def leader_log(cfg: Config, node_id: str, offsets: dict[int, int]) -> str:
    n = int(node_id.split("-")[1])
    with open(cluster.node_process(cfg, n).log_file, "rb") as log_:
        log_.seek(offsets.get(n, 0))
        return log_.read().decode(errors="replace")


def _wait_answering(urls: list[str], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1.0):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def work_off(cfg: Config, prefix: str, count: int, nodes: int, workers: int, timeout_s: float,
             progress: Progress) -> dict[str, Any]:
    """Start the cluster over the backlog of ``prefix`` and measure until every experiment is terminal or
    ``timeout_s`` passed. The cluster is left running (the caller stops it)."""
    offsets = log_offsets(cfg, nodes)
    for n in range(1, workers + 1):  # workers first: the first advance then measures the leader, not their start
        cluster.start_worker(cfg, n, cfg.worker_concurrency)
    _wait_answering([f"{cfg.worker_url(n)}/metrics" for n in range(1, workers + 1)])
    started = time.time()
    cluster.up(cfg, nodes=nodes, workers=workers)
    watch = Watch(cluster.wait_for_leader(cfg, 60))
    deadline = time.monotonic() + timeout_s
    terminal = 0
    while time.monotonic() < deadline:
        watch.sample(cfg)
        counts = state_counts(cfg, prefix)
        terminal = sum(counts.get(s, 0) for s in (ExperimentState.COMPLETED, ExperimentState.FAILED,
                                                   ExperimentState.CANCELLED))
        watch.samples.append((time.time() - started, terminal))
        if terminal >= count:
            break
        if len(watch.samples) % 20 == 0:
            progress(f"takeover: {terminal}/{count} experiments terminal after {time.time() - started:.0f} s")
        time.sleep(0.5)
    finished = time.time()
    # the epoch that took the backlog over: the last fence raised (a leader fenced at start-up steps down)
    epoch, _holder, _raised = fence(cfg)
    elected = query(cfg, "SELECT elected_at FROM leader_terms WHERE epoch = %s", (epoch,))
    elected_at = float(elected[0][0]) if elected else started
    first = query(cfg, "SELECT MIN(at) FROM transitions WHERE epoch = %s AND to_state = 'SUCCEEDED'", (epoch,))[0][0]
    leader = watch.leader
    text = leader_log(cfg, leader["node_id"], offsets)
    lines = [m.groups() for m in TAKEOVER_LINE.finditer(text)]
    takeover = next((line for line in lines if int(line[0]) == epoch), None)
    counts = state_counts(cfg, prefix)
    return {
        "tasks": count, "nodes": nodes, "workers": workers, "epoch": epoch, "leader": leader["node_id"],
        "first_advance_s": None if first is None else float(first) - elected_at,
        "takeover_s": float(takeover[5]) if takeover else None, "pages": int(takeover[1]) if takeover else None,
        "redispatched": int(takeover[3]) if takeover else None,
        "all_done_s": finished - elected_at if terminal >= count else None,
        "peak_rss_mib": watch.peak_rss_mib, "rabbit_up_min": watch.rabbit_up_min,
        "connection_events": {what: text.count(what) for what in LOST_LINES},
        "leaders": sorted({r["node_id"] for r in cluster.status(cfg) if r["role"] == "leader"}),
        "completed": counts.get(ExperimentState.COMPLETED, 0), "terminal": terminal,
        "timed_out": terminal < count,
    }


def run(cfg: Config, tasks: int = 100_000, workers: int = 2, timeout_s: float = 900.0,
        progress: Progress = lambda _m: None) -> dict[str, Any]:
    started = time.time()
    cluster.down(cfg)
    with Scratch(cfg, "bench-takeover") as scratch:
        try:
            t0 = time.monotonic()
            create_backlog(cfg, scratch.prefix, tasks, progress)
            created_s = time.monotonic() - t0
            progress(f"takeover: backlog of {tasks} ready tasks created in {created_s:.0f} s; cluster up")
            result = work_off(cfg, scratch.prefix, tasks, 3, workers, timeout_s, progress)
        finally:
            cluster.down(cfg)
    return {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "created_s": created_s, **result}


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def render(result: dict[str, Any]) -> str:
    events = result["connection_events"]
    dropped = sum(events.values())
    rabbit = "—" if result["rabbit_up_min"] is None else f"{result['rabbit_up_min']:g}"
    lines = [f"### Takeover of a large backlog — {result['when']}", "",
             "| ready tasks | pages | first advance | takeover | all completed | peak leader RSS | "
             "connection drops / term retries | min rabbitmq up | completed |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| {result['tasks']} | {result['pages'] if result['pages'] is not None else '—'} | "
             f"{_s(result['first_advance_s'])} | {_s(result['takeover_s'])} | {_s(result['all_done_s'])} | "
             f"{result['peak_rss_mib']:.0f} MiB | {dropped} | "
             f"{rabbit} | "
             f"{result['completed']}/{result['tasks']} |", "",
             f"- backlog: {result['tasks']} one-task experiments created directly in the stores while no node ran "
             f"({result['created_s']:.0f} s), notices queued; workers started, then the 3 nodes "
             f"({result['workers']} workers). first advance and all completed are measured from the leader's "
             "election; takeover is the leader's own record (first page → last page, pages between batches). The "
             f"takeover re-dispatched {result['redispatched']} tasks; the queued notices and the sweep dispatched "
             "the others meanwhile.",
             "- leader log: " + ", ".join(f"{k}: {v}" for k, v in events.items())
             + f"; leaders at the end: {', '.join(result['leaders']) or 'none'}", ""]
    return "\n".join(lines)
