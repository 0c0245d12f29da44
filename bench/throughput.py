"""``haorch bench throughput``: task advancements per second through the real stack, batched vs batch size 1.

For each configuration, in the same run: stop the cluster, pre-submit N chain experiments (no notices), start
one node and the workers, and let the takeover dispatch every root at once; the node's term is then pure DAG
advancement. Measured from the stores afterwards, not from the client:

- advancements/s: SUCCEEDED transitions of the term / (last SUCCEEDED - first transition of the term)
- hop latency: predecessor's execution end (ledger) -> successor's execution start (ledger): the response, the
  leader's batch and the request together
- CPU per advancement of each kind of program (µs), between the first and the last transition (:mod:`bench.cpu`)
- idle end-to-end: one chain at a time, submit -> COMPLETED (MariaDB created_at/finished_at), and next to it the
  floor that the chain's durability points make on this stack, each timed alone (:mod:`bench.floor`)

Each part's chains have ids of their own (``bench-<label>-<run id>-...``) and are deleted from both stores when the
part ends, also on an error or Ctrl-C (:mod:`bench.scratch`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import floor
from bench.cpu import CpuSampler
from bench.probes import query
from bench.scratch import Scratch
from node import cluster
from node.config import Config, with_overrides
from node.experiments import Experiments
from node.model.states import TaskStatus

Progress = Callable[[str], None]
EVER = 1e12  # a wall time later than any transition's


@dataclass
class RunResult:
    label: str
    batch_size: int
    experiments: int
    advancements: int
    seconds: float
    hop_p50_ms: float
    hop_p99_ms: float
    cpu_us: dict[str, float] = field(default_factory=dict)  # CPU µs per advancement by kind of program

    @property
    def rate(self) -> float:
        return self.advancements / self.seconds if self.seconds else 0.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def advancements(cfg: Config, prefix: str, start: float, end: float) -> tuple[float, float, int]:
    """First and last transition of the term among ``prefix``'s chains and the SUCCEEDED ones in [start, end]."""
    rows = query(cfg, "SELECT MIN(at), MAX(at), SUM(to_state = %s AND at BETWEEN %s AND %s) FROM transitions "
                      "WHERE experiment_id LIKE %s AND epoch > 0", (TaskStatus.SUCCEEDED, start, end, prefix + "%"))
    first, last, count = rows[0]
    return float(first or 0), float(last or 0), int(count or 0)


def cpu_per_advancement(cfg: Config, prefix: str, cpu: CpuSampler, first: float, last: float) -> dict[str, float]:
    """CPU µs per advancement by kind of program, over the samples inside the busy window."""
    t0, t1, used = cpu.between(first, last)
    count = advancements(cfg, prefix, t0, t1)[2] if used else 0
    return {kind: seconds * 1e6 / count for kind, seconds in sorted(used.items())} if count else {}


Execution = tuple[str, str, float, float]  # experiment, task, started_at, ended_at (ledger)
CHAIN = ("stage_in", "submit_job", "monitor", "stage_out")


def executions(cfg: Config, prefix: str) -> list[Execution]:
    """The successful executions of ``prefix``'s chains, from the ledger."""
    return [(e, t, float(s), float(end)) for e, t, s, end in query(
        cfg, "SELECT experiment_id, task, started_at, ended_at FROM ledger WHERE experiment_id LIKE %s "
             "AND outcome = 'success'", (prefix + "%",))]


def hops(runs: list[Execution]) -> list[float]:
    """ms from each chain task's end to its successor's start (where both ran)."""
    by = {(e, t): (s, end) for e, t, s, end in runs}
    return [(by[(e, CHAIN[CHAIN.index(t) + 1])][0] - end) * 1000 for e, t, _s, end in runs
            if t in CHAIN[:-1] and (e, CHAIN[CHAIN.index(t) + 1]) in by]


def _measure(cfg: Config, prefix: str) -> tuple[int, float, float, list[float]]:
    """SUCCEEDED transitions of the term, its first and last transition, and the hops' latencies (ms)."""
    first, last, count = advancements(cfg, prefix, 0.0, EVER)
    return count, first, last, hops(executions(cfg, prefix))


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
                with CpuSampler(cfg) as cpu:
                    cluster.up(run_cfg, nodes=1, workers=workers)
                    exps.wait(ids, timeout_s=max(120.0, experiments * 4 * 0.1), poll_s=0.5)
            count, first, last, hops = _measure(cfg, scratch.prefix)
            cpu_us = cpu_per_advancement(cfg, scratch.prefix, cpu, first, last)
        finally:
            cluster.down(cfg)
    result = RunResult(label, batch_size, experiments, count, last - first, _pct(hops, 0.5), _pct(hops, 0.99), cpu_us)
    progress(f"{label}: {count} advancements in {result.seconds:.2f} s = {result.rate:.0f}/s")
    return result


@dataclass
class Idle:
    """One chain at a time: submit -> COMPLETED, and its parts from the ledger (ms, p50 over the chains)."""

    p50_s: float
    p99_s: float
    parts_ms: dict[str, float] = field(default_factory=dict)  # submit -> 1st start, each hop, last end -> completion


def _idle_parts(cfg: Config, prefix: str) -> dict[str, float]:
    """p50 of each part of the idle chains: the submit to the first task's start (submit, notice, the root's
    dispatch, request, claim), each hop (a task's end to the next one's start: its end's ledger commit, response,
    the leader's batch, request, claim) and the last task's end to the leader's completing batch."""
    created = dict(query(cfg, "SELECT experiment_id, created_at FROM experiments WHERE experiment_id LIKE %s",
                         (prefix + "%",)))
    finished = dict(query(cfg, "SELECT experiment_id, finished_at FROM experiments WHERE experiment_id LIKE %s",
                          (prefix + "%",)))
    runs = {(e, t): (s, end) for e, t, s, end in executions(cfg, prefix)}
    parts: dict[str, list[float]] = {}
    for experiment_id, at in created.items():
        times = [runs.get((experiment_id, task)) for task in CHAIN]
        done = finished.get(experiment_id)
        if done is None or any(t is None for t in times):
            continue
        starts, ends = [t[0] for t in times if t], [t[1] for t in times if t]
        steps = {"submit → 1st start": starts[0] - at, "last end → completed": done - ends[-1]}
        steps |= {f"hop {i + 1}→{i + 2}": starts[i + 1] - ends[i] for i in range(len(CHAIN) - 1)}
        for name, seconds in steps.items():
            parts.setdefault(name, []).append(seconds * 1000)
    order = ["submit → 1st start", *[f"hop {i + 1}→{i + 2}" for i in range(len(CHAIN) - 1)], "last end → completed"]
    return {name: statistics.median(parts[name]) for name in order if name in parts}


def idle_latency(cfg: Config, samples: int, progress: Progress) -> Idle:
    """One chain at a time on an idle cluster: p50/p99 seconds of submit -> COMPLETED and the p50 of its parts
    (stopped and the chains deleted afterwards, whatever happens)."""
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
            parts = _idle_parts(cfg, scratch.prefix)
        finally:
            cluster.down(cfg)
    values = [r[0] for r in rows]
    progress(f"idle: {samples} chains, p50 {statistics.median(values) * 1000:.0f} ms")
    return Idle(_pct(values, 0.5), _pct(values, 0.99), parts)


def run(cfg: Config, experiments: int = 2000, batch1_experiments: int = 200, workers: int = 2,
        batch_size: int = 200, idle_samples: int = 30, progress: Progress = lambda _m: None) -> dict:
    """The whole benchmark; returns a dict with every figure (see :func:`render`)."""
    started = time.time()
    batched = run_config(cfg, f"batch{batch_size}", batch_size, experiments, workers, progress)
    single = run_config(cfg, "batch1", 1, batch1_experiments, workers, progress)
    idle = idle_latency(cfg, idle_samples, progress)
    floor_ms = floor.run(cfg, progress=progress)
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "runs": [vars(batched) | {"rate": batched.rate}, vars(single) | {"rate": single.rate}],
        "speedup": batched.rate / single.rate if single.rate else float("nan"),
        "idle_e2e_p50_ms": idle.p50_s * 1000,
        "idle_e2e_p99_ms": idle.p99_s * 1000,
        "idle_parts_ms": idle.parts_ms,
        "floor": floor_ms,
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
    batched = result["runs"][0]
    if batched.get("cpu_us"):
        kinds = list(batched["cpu_us"])
        lines += ["", f"CPU µs per advancement, batch size {batched['batch_size']}, by program (busy window):", "",
                  "| " + " | ".join([*kinds, "total"]) + " |", "|" + " ---: |" * (len(kinds) + 1),
                  "| " + " | ".join(f"{batched['cpu_us'][k]:.0f}" for k in kinds)
                  + f" | {sum(batched['cpu_us'].values()):.0f} |"]
    lines += ["", f"- batched / batch size 1: **{result['speedup']:.1f}x**",
              "- idle end-to-end of one 4-step chain (submit → COMPLETED): "
              f"p50 **{result['idle_e2e_p50_ms']:.0f} ms**, p99 {result['idle_e2e_p99_ms']:.0f} ms"]
    if result.get("idle_parts_ms"):
        lines.append("- its parts (p50, from the ledger's start and end of each task): "
                     + ", ".join(f"{name} {ms:.1f} ms" for name, ms in result["idle_parts_ms"].items()))
    if "floor" in result:
        f = result["floor"]
        lines.append(f"- its floor, the chain's durability points each timed alone (p50): {floor.NEO4J_WRITES} Neo4j "
                     f"write transactions × {f['neo4j_write_p50_ms']:.2f} ms + {floor.QUEUE_HOPS} quorum-queue hops × "
                     f"{f['queue_hop_p50_ms']:.2f} ms + {floor.MARIADB_COMMITS} MariaDB commits × "
                     f"{f['mariadb_commit_p50_ms']:.2f} ms = **{f['floor_ms']:.1f} ms**; the rest, "
                     f"{result['idle_e2e_p50_ms'] - f['floor_ms']:.0f} ms, is haorch's own work and waits")
    lines += [f"- 1 leader node, {result['workers']} workers (noop executor), all on this 2-core machine with the "
              "whole stack; hop = predecessor's execution end → successor's execution start (ledger).", ""]
    return "\n".join(lines)
