"""``haorch bench throughput``: task advancements per second through the real stack, batched vs batch size 1.

For each configuration, in the same run: stop the cluster, pre-submit N chain experiments (no notices), start
one node and the workers, and let the takeover dispatch every root at once; the node's term is then pure DAG
advancement. Measured from the stores afterwards, not from the client:

- advancements/s: SUCCEEDED transitions of the term / (last SUCCEEDED - first transition of the term)
- hop latency: predecessor's execution end (ledger) -> successor's execution start (ledger): the response, the
  leader's batch and the request together
- idle end-to-end: one chain at a time, submit -> COMPLETED (MariaDB created_at/finished_at)

Each part's chains have ids of their own (``bench-<label>-<run id>-...``) and are deleted from both stores when the
part ends, also on an error or Ctrl-C (:mod:`bench.scratch`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.probes import query
from bench.scratch import Scratch
from node import cluster
from node.config import Config, with_overrides
from node.experiments import Experiments
from node.model.states import TaskStatus

Progress = Callable[[str], None]


@dataclass
class RunResult:
    label: str
    batch_size: int
    experiments: int
    advancements: int
    seconds: float
    hop_p50_ms: float
    hop_p99_ms: float

    @property
    def rate(self) -> float:
        return self.advancements / self.seconds if self.seconds else 0.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _measure(cfg: Config, prefix: str) -> tuple[int, float, list[float]]:
    like = prefix + "%"
    rows = query(cfg, "SELECT MIN(at), MAX(at), SUM(to_state = %s) FROM transitions "
                      "WHERE experiment_id LIKE %s AND epoch > 0", (TaskStatus.SUCCEEDED, like))
    first, last, count = rows[0]
    ledger = query(cfg, "SELECT experiment_id, task, started_at, ended_at FROM ledger WHERE experiment_id LIKE %s "
                        "AND outcome = 'success'", (like,))
    by = {(e, t): (s, end) for e, t, s, end in ledger}
    chain = ["stage_in", "submit_job", "monitor", "stage_out"]
    hops = []
    for (exp, task), (_start, end) in by.items():
        if task in chain[:-1]:
            nxt = by.get((exp, chain[chain.index(task) + 1]))
            if nxt:
                hops.append((nxt[0] - end) * 1000)
    return int(count or 0), float((last or 0) - (first or 0)), hops


def run_config(cfg: Config, label: str, batch_size: int, experiments: int, workers: int,
               progress: Progress) -> RunResult:
    """One configuration: fresh cluster, pre-submitted chains, measured from the stores; the cluster is stopped
    and the chains deleted afterwards, whatever happens."""
    cluster.down(cfg)
    run_cfg = with_overrides(cfg, batch_size=batch_size)
    with Scratch(cfg, f"bench-{label}") as scratch:
        try:
            ids = [f"{scratch.prefix}{i:05d}" for i in range(experiments)]
            progress(f"{label}: submitting {experiments} chain experiments")
            with Experiments(run_cfg) as exps:
                exps.install_builtins()
                for experiment_id in ids:
                    exps.submit("chain", experiment_id, notify=False)
                progress(f"{label}: starting 1 node (batch size {batch_size}) and {workers} workers")
                cluster.up(run_cfg, nodes=1, workers=workers)
                exps.wait(ids, timeout_s=max(120.0, experiments * 4 * 0.1), poll_s=0.5)
            count, seconds, hops = _measure(cfg, scratch.prefix)
        finally:
            cluster.down(cfg)
    result = RunResult(label, batch_size, experiments, count, seconds, _pct(hops, 0.5), _pct(hops, 0.99))
    progress(f"{label}: {count} advancements in {seconds:.2f} s = {result.rate:.0f}/s")
    return result


def idle_latency(cfg: Config, samples: int, progress: Progress) -> tuple[float, float]:
    """p50/p99 seconds of one chain at a time, submit -> COMPLETED, on an idle cluster (stopped and the chains
    deleted afterwards, whatever happens)."""
    cluster.down(cfg)
    with Scratch(cfg, "bench-idle") as scratch:
        try:
            cluster.up(cfg, nodes=1, workers=1)
            with Experiments(cfg) as exps:
                exps.install_builtins()
                for i in range(samples):
                    experiment_id = f"{scratch.prefix}{i:04d}"
                    exps.submit("chain", experiment_id)
                    exps.wait([experiment_id], timeout_s=30, poll_s=0.002)
            rows = query(cfg, "SELECT finished_at - created_at FROM experiments WHERE experiment_id LIKE %s",
                         (scratch.prefix + "%",))
        finally:
            cluster.down(cfg)
    values = [r[0] for r in rows]
    progress(f"idle: {samples} chains, p50 {statistics.median(values) * 1000:.0f} ms")
    return _pct(values, 0.5), _pct(values, 0.99)


def run(cfg: Config, experiments: int = 2000, batch1_experiments: int = 200, workers: int = 2,
        batch_size: int = 200, idle_samples: int = 30, progress: Progress = lambda _m: None) -> dict:
    """The whole benchmark; returns a dict with every figure (see :func:`render`)."""
    started = time.time()
    batched = run_config(cfg, f"batch{batch_size}", batch_size, experiments, workers, progress)
    single = run_config(cfg, "batch1", 1, batch1_experiments, workers, progress)
    idle_p50, idle_p99 = idle_latency(cfg, idle_samples, progress)
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "runs": [vars(batched) | {"rate": batched.rate}, vars(single) | {"rate": single.rate}],
        "speedup": batched.rate / single.rate if single.rate else float("nan"),
        "idle_e2e_p50_ms": idle_p50 * 1000,
        "idle_e2e_p99_ms": idle_p99 * 1000,
        "workers": workers,
    }


def render(result: dict) -> str:
    """A Markdown section: the table printed to the terminal and appended to docs/BENCHMARKS.md."""
    lines = [f"### Throughput — {result['when']}", "",
             "| config | experiments | advancements | seconds | advancements/s | hop p50 ms | hop p99 ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["runs"]:
        lines.append(f"| batch size {r['batch_size']} | {r['experiments']} | {r['advancements']} | "
                     f"{r['seconds']:.2f} | {r['rate']:.0f} | {r['hop_p50_ms']:.1f} | {r['hop_p99_ms']:.1f} |")
    lines += ["", f"- batched / batch size 1: **{result['speedup']:.1f}x**",
              "- idle end-to-end of one 4-step chain (submit → COMPLETED): "
              f"p50 **{result['idle_e2e_p50_ms']:.0f} ms**, p99 {result['idle_e2e_p99_ms']:.0f} ms",
              f"- 1 leader node, {result['workers']} workers (noop executor), all on this 2-core machine with the "
              "whole stack; hop = predecessor's execution end → successor's execution start (ledger).", ""]
    return "\n".join(lines)
