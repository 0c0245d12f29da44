"""``haorch bench hosts``: throughput of the lab (3 hosts, Galera + RabbitMQ clusters) against the single-host stack,
in one run, as a ratio.

Both stacks must be up: the single-host one in the current state dir, the lab in ``lab_home`` (``haorch lab up``).
Each round runs the batched throughput configuration of :mod:`bench.throughput` (pre-submitted 4-step chains, one
node, ``workers`` workers, measured from the stores) on one stack, then on the other, alternating which goes first,
and an idle chain latency sample on each; the figures are the medians of the rounds. The machine is shared: only the
ratio means much.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.throughput import idle_latency, run_config
from node.config import Config
from node.errors import UsageError
from node.runtime.placement import lab_hosts

Progress = Callable[[str], None]


def run(single: Config, lab: Config, rounds: int = 2, experiments: int = 1000, workers: int = 3,
        idle_samples: int = 20, progress: Progress = lambda _m: None) -> dict[str, Any]:
    if not lab_hosts(lab):
        raise UsageError(f"{lab.home} is not a running lab; start one with `HAORCH_HOME={lab.home} haorch lab up`")
    if lab_hosts(single):
        raise UsageError(f"{single.home} is a lab: run this from the single-host stack's state dir")
    started = time.time()
    rates: dict[str, list[float]] = {"single": [], "lab": []}
    hops: dict[str, list[float]] = {"single": [], "lab": []}
    for i in range(rounds):
        order = [("single", single), ("lab", lab)] if i % 2 == 0 else [("lab", lab), ("single", single)]
        for name, cfg in order:
            result = run_config(cfg, f"hosts-{name}", cfg.batch_size, experiments, workers, progress)
            rates[name].append(result.rate)
            hops[name].append(result.hop_p50_ms)
    idle = {name: idle_latency(cfg, idle_samples, progress).p50_s * 1000 for name, cfg in (("single", single),
                                                                                         ("lab", lab))}
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "rounds": rounds,
            "experiments": experiments, "workers": workers, "rates": rates, "median": medians,
            "hop_p50_ms": {name: statistics.median(values) for name, values in hops.items()},
            "idle_e2e_p50_ms": idle, "ratio": medians["lab"] / medians["single"] if medians["single"] else None}


def render(result: dict[str, Any]) -> str:
    lines = [f"### Lab (3 hosts, ha topology) vs single-host stack — {result['when']}", "",
             "| stack | advancements/s per round | median | hop p50 | idle chain p50 |",
             "| --- | --- | ---: | ---: | ---: |"]
    for name, label in (("single", "single host (1 RabbitMQ, 1 MariaDB)"),
                        ("lab", "lab (3 RabbitMQ nodes, 3 Galera members)")):
        lines.append(f"| {label} | {', '.join(f'{r:.0f}' for r in result['rates'][name])} | "
                     f"{result['median'][name]:.0f} | {result['hop_p50_ms'][name]:.1f} ms | "
                     f"{result['idle_e2e_p50_ms'][name]:.0f} ms |")
    lines += ["", f"- lab / single = **{result['ratio']:.2f}**; {result['rounds']} rounds alternating which goes "
                  f"first, {result['experiments']} 4-step chains each, 1 node, {result['workers']} workers "
                  "(in the lab one per member host); the same machine for both."]
    return "\n".join(lines) + "\n"
