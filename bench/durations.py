"""``haorch bench durations``: chains of tasks that take real time, with a backlog far larger than the prefetch.

The noop chains of ``haorch bench throughput`` measure haorch's own cost; real tasks take time, hold worker threads
and make every request wait in the queue behind hundreds of others. For each task duration ``ms`` (0 = noop
sleep), in the same run: stop the cluster, pre-submit enough 4-step chains of ``sleep`` tasks (type
``bench-sleep``) for about ``target_s`` seconds of work at the ideal rate, and at least 1.5 times what the workers
may prefetch (:func:`chains_for`), start one node and ``workers`` workers
of ``concurrency`` threads each, and let the takeover dispatch every root at once, so that the requests queue far
beyond the workers' prefetch. Measured from the stores afterwards:

- advancements/s: SUCCEEDED transitions / (last SUCCEEDED - first transition), against the ideal
  ``workers × concurrency × 1000 / ms`` (the threads never idle, haorch costs nothing): the **efficiency**;
- the threads' **utilization** in steady state: the executions' summed time (ledger ``ended_at - started_at``)
  within the busy window less its first and last fifth (the takeover's dispatch of the roots page by page, and the
  last chains' final steps, when there is not enough ready work for every thread), over ``workers × concurrency ×``
  that time;
- a hop (a task's end to its successor's start, ledger) p50/p99: the response, the leader's batch, the request's
  wait in the queue behind the backlog, and the claim;
- exactly once: every attempt has one ledger row, none replayed, no task needed a second attempt, and every chain
  is COMPLETED;
- the deepest ``haorch.requests`` seen (sampled every 0.5 s) against ``worker_prefetch``, and the CPU per
  advancement of each kind of program (:mod:`bench.cpu`).

The chains of each part have ids of their own and are deleted from both stores when the part ends, also on an
error or Ctrl-C (:mod:`bench.scratch`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.cpu import CpuSampler
from bench.probes import query
from bench.report import percentile
from bench.scratch import Scratch
from bench.throughput import CHAIN, EVER, Execution, advancements, cpu_per_advancement, executions, hops
from node import cluster
from node.config import Config
from node.experiments import Experiments
from node.model.executors import KNOWN_EXECUTORS
from node.model.template import Template, parse_template
from node.stores.queues import REQUESTS
from node.stores.rabbit import connect

Progress = Callable[[str], None]
TYPE = "bench-sleep"
MAX_CHAINS = 8000  # submitting more takes longer than the run it feeds
DEPTH_EVERY_S = 0.5
STEADY_FROM = 0.2  # utilization is measured over the window without its first and last fifth


def sleep_template() -> Template:
    """The chain's four steps, each a ``sleep`` task of ``ms`` milliseconds (an experiment's param)."""
    steps = [{"name": name, "kind": "bench_sleep", "executor": "sleep",
              **({"depends_on": [CHAIN[i - 1]]} if i else {})} for i, name in enumerate(CHAIN)]
    return parse_template({"type": TYPE, "description": "haorch bench durations: 4 sleep tasks of ms each",
                           "params": {"ms": None}, "tasks": steps}, KNOWN_EXECUTORS)


def chains_for(ms: int, workers: int, concurrency: int, target_s: float, prefetch: int) -> int:
    """Chains for about ``target_s`` of work at the ideal rate (noop: as for 10 ms), but at least half again what
    the workers may prefetch (their roots alone are a backlog beyond it), and at most MAX_CHAINS."""
    ideal = workers * concurrency * 1000.0 / max(ms, 10)
    backlog = math.ceil(1.5 * workers * prefetch)
    return min(MAX_CHAINS, max(backlog, math.ceil(ideal * target_s / len(CHAIN))))


@dataclass
class Part:
    """One task duration's figures (see the module docstring)."""

    ms: int
    chains: int
    advancements: int
    seconds: float
    ideal_per_s: float | None
    utilization: float | None
    hop_p50_ms: float
    hop_p99_ms: float
    max_requests_ready: int
    ledger_rows: int
    replayed: int
    second_attempts: int
    completed: int
    cpu_us: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.advancements / self.seconds if self.seconds else 0.0

    @property
    def exactly_once(self) -> bool:
        tasks = self.chains * len(CHAIN)
        return (self.ledger_rows == tasks and self.replayed == 0 and self.second_attempts == 0
                and self.completed == self.chains)


class DepthSampler:
    """The deepest ``haorch.requests`` (messages ready) seen every DEPTH_EVERY_S while the ``with`` block runs."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.deepest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-depth", daemon=True)

    def __enter__(self) -> DepthSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        conn = connect(self.cfg, name="haorch-bench-depth")  # pika connections stay on the thread that opened them
        try:
            channel = conn.channel()
            while not self._stop.wait(DEPTH_EVERY_S):
                depth = channel.queue_declare(queue=REQUESTS, passive=True).method.message_count
                self.deepest = max(self.deepest, depth)
        finally:
            conn.close()


def _ledger(cfg: Config, prefix: str) -> tuple[int, int, int]:
    """All ledger rows of ``prefix``'s chains, those replayed, and those of a second attempt or later."""
    rows, replayed, later = query(cfg, "SELECT COUNT(*), COALESCE(SUM(replayed_count > 0), 0), "
                                       "COALESCE(SUM(attempt > 1), 0) FROM ledger WHERE experiment_id LIKE %s",
                                  (prefix + "%",))[0]
    return int(rows), int(replayed), int(later)


def busy_share(runs: list[Execution], threads: int, start: float, end: float) -> float:
    """The share of ``threads`` × [start, end] that the executions ``runs`` (each clipped to it) kept busy."""
    busy = sum(max(0.0, min(stop, end) - max(began, start)) for _e, _t, began, stop in runs)
    return busy / (threads * (end - start))


def run_part(cfg: Config, ms: int, chains: int, workers: int, concurrency: int, progress: Progress) -> Part:
    """One task duration: fresh cluster, pre-submitted chains, measured from the stores; the cluster is stopped and
    the chains deleted afterwards, whatever happens."""
    cluster.down(cfg)
    with Scratch(cfg, f"bench-d{ms}") as scratch:
        try:
            ids = [f"{scratch.prefix}{i:05d}" for i in range(chains)]
            progress(f"{ms} ms: submitting {chains} chains of 4 sleep tasks")
            with Experiments(cfg) as exps:
                exps.register_template(sleep_template())
                for start in range(0, chains, 500):
                    exps.submit_many(TYPE, ids[start:start + 500], params={"ms": str(ms)}, notify=False)
                progress(f"{ms} ms: starting 1 node and {workers} workers of {concurrency} threads")
                with CpuSampler(cfg) as cpu, DepthSampler(cfg) as depth:
                    cluster.up(cfg, nodes=1, workers=workers, concurrency=concurrency)
                    ideal = workers * concurrency * 1000.0 / ms if ms else None
                    budget = 120.0 + (chains * len(CHAIN) / ideal * 3 if ideal else chains * 0.05)
                    exps.wait(ids, timeout_s=budget, poll_s=0.5)
            first, last, count = advancements(cfg, scratch.prefix, 0.0, EVER)
            runs = executions(cfg, scratch.prefix)
            rows, replayed, later = _ledger(cfg, scratch.prefix)
            completed = int(query(cfg, "SELECT COUNT(*) FROM experiments WHERE experiment_id LIKE %s "
                                       "AND state = 'COMPLETED'", (scratch.prefix + "%",))[0][0])
            cpu_us = cpu_per_advancement(cfg, scratch.prefix, cpu, first, last)
        finally:
            cluster.down(cfg)
    waits = hops(runs)
    window = last - first
    middle = (first + STEADY_FROM * window, last - STEADY_FROM * window)  # without the ramp-up and the drain
    utilization = busy_share(runs, workers * concurrency, *middle) if ms and window else None
    p50, p99 = (percentile(waits, 0.5), percentile(waits, 0.99)) if waits else (math.nan, math.nan)
    part = Part(ms, chains, count, window, ideal, utilization, p50, p99, depth.deepest, rows, replayed, later,
                completed, cpu_us)
    progress(f"{ms} ms: {count} advancements in {window:.1f} s = {part.rate:.0f}/s"
             + (f" ({part.rate / ideal:.0%} of the ideal {ideal:.0f}/s)" if ideal else ""))
    return part


def run(cfg: Config, durations_ms: list[int], workers: int = 2, concurrency: int = 16, target_s: float = 20.0,
        progress: Progress = lambda _m: None) -> dict[str, Any]:
    """Every duration of ``durations_ms`` in turn (see the module docstring)."""
    started = time.time()
    parts = [run_part(cfg, ms, chains_for(ms, workers, concurrency, target_s, cfg.worker_prefetch), workers,
                      concurrency, progress) for ms in durations_ms]
    return {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "workers": workers,
            "concurrency": concurrency, "prefetch": cfg.worker_prefetch, "batch_size": cfg.batch_size,
            "target_s": target_s,
            "parts": [{**asdict(p), "rate": p.rate, "exactly_once": p.exactly_once} for p in parts]}


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}{suffix}"


def render(result: dict[str, Any]) -> str:
    """The run as a BENCHMARKS.md section."""
    lines = [f"## Real-duration tasks — {result['when']}", "",
             f"`haorch bench durations`: 4-step chains of `sleep` tasks, all submitted before 1 node and "
             f"{result['workers']} workers of {result['concurrency']} threads start (worker prefetch "
             f"{result['prefetch']}, batch size {result['batch_size']}), about {result['target_s']:g} s of work at "
             "the ideal rate per duration. Ideal: every thread always busy, haorch free (efficiency: the rate over "
             "it, ramp-up and drain included). Utilization: the executions' summed time over threads × time, in "
             "the busy window less its first and last fifth. A hop: a task's end to its successor's start "
             "(response, leader batch, the request's wait behind the backlog, claim). Exactly once: one ledger row "
             "per task, none replayed, no second attempt, every chain COMPLETED.", "",
             "| task ms | chains | adv/s | ideal adv/s | efficiency | utilization | hop p50 / p99 ms "
             "| deepest requests queue | CPU µs/adv (all programs) | exactly once |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for p in result["parts"]:
        ideal = p["ideal_per_s"]
        lines.append(
            f"| {p['ms']} | {p['chains']} | {p['rate']:,.0f} | {_fmt(ideal, ',.0f')} | "
            f"{_fmt(p['rate'] / ideal * 100 if ideal else None, '.0f', ' %')} | "
            f"{_fmt(p['utilization'] * 100 if p['utilization'] is not None else None, '.0f', ' %')} | "
            f"{_fmt(p['hop_p50_ms'], '.1f')} / {_fmt(p['hop_p99_ms'], '.1f')} | {p['max_requests_ready']:,} | "
            f"{_fmt(sum(p['cpu_us'].values()) if p['cpu_us'] else None, ',.0f')} | "
            f"{'yes' if p['exactly_once'] else 'NO'} ({p['ledger_rows']} rows, {p['replayed']} replayed, "
            f"{p['second_attempts']} retried, {p['completed']}/{p['chains']} completed) |")
    return "\n".join(lines) + "\n"
