"""``haorch bench``: benchmarks through the real stack; print a table and append it to docs/BENCHMARKS.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from node.cli.common import config, emit, json_option, stderr


def _progress(message: str) -> None:
    stderr.print(f"[dim]bench[/dim] {message}")


def _finish(result: Any, render: Callable[[Any], str], no_record: bool, as_json: bool) -> None:
    """Print the run's table (or ``result`` as JSON) and, unless ``no_record``, append it to docs/BENCHMARKS.md."""
    from bench import report

    section = render(result)
    if not no_record:
        report.append(section)
    emit(result, as_json, lambda _r: click.echo(section))


@click.group()
def bench() -> None:
    """Benchmarks (the stack must be up: `haorch stack up`)."""


@bench.command()
@click.option("--experiments", type=click.IntRange(min=1), default=2000, show_default=True,
              help="4-step chains for the batched run (x4 advancements).")
@click.option("--batch1-experiments", type=click.IntRange(min=1), default=200, show_default=True,
              help="Chains for the batch-size-1 run (it is slow: fewer, compared as a rate).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=200, show_default=True)
@click.option("--no-record", is_flag=True, help="Do not append to docs/BENCHMARKS.md.")
@json_option
def throughput(experiments: int, batch1_experiments: int, workers: int, batch_size: int, no_record: bool,
               as_json: bool) -> None:
    """Task advancements/s batched vs batch size 1, hop latency, CPU per advancement by program, idle end-to-end
    latency and its floor (the chain's durability points, each timed alone)."""
    from bench import report
    from bench import throughput as tp

    if not no_record:
        report.benchmarks_file()  # one that cannot be recorded fails before the run, not after it
    result = tp.run(config(), experiments, batch1_experiments, workers, batch_size, progress=_progress)
    _finish(result, tp.render, no_record, as_json)


def _durations(_ctx: click.Context, _param: click.Parameter, value: str) -> list[int]:
    try:
        found = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"a comma-separated list of whole milliseconds, got {value!r}") from None
    if not found or any(ms < 0 or ms > 60_000 for ms in found):
        raise click.BadParameter(f"one or more durations within 0..60000 ms, got {value!r}")
    return found


@bench.command()
@click.option("--ms", "durations_ms", default="0,10,100,1000", show_default=True, callback=_durations,
              help="Task durations to run, comma-separated milliseconds (0: a sleep of nothing).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1, max=256), default=16, show_default=True,
              help="Threads per worker.")
@click.option("--seconds", "target_s", type=click.FloatRange(min=1, max=600), default=20.0, show_default=True,
              help="Work per duration at the ideal rate (sets how many chains; at most 8,000).")
@click.option("--no-record", is_flag=True, help="Do not append to docs/BENCHMARKS.md.")
@json_option
def durations(durations_ms: list[int], workers: int, concurrency: int, target_s: float, no_record: bool,
              as_json: bool) -> None:
    """Chains of real-duration tasks with a backlog beyond the prefetch: rate vs ideal, thread utilization, hop
    latency, exactly one execution per task."""
    from bench import durations as bench_durations
    from bench import report

    if not no_record:
        report.benchmarks_file()
    result = bench_durations.run(config(), durations_ms, workers, concurrency, target_s, progress=_progress)
    _finish(result, bench_durations.render, no_record, as_json)


@bench.command()
@click.option("--lab-home", type=click.Path(file_okay=False, exists=True), required=True,
              help="State dir of a running lab (`haorch lab up`).")
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--experiments", type=click.IntRange(min=1), default=1000, show_default=True,
              help="4-step chains per run.")
@click.option("--workers", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--no-record", is_flag=True, help="Do not append to docs/BENCHMARKS.md.")
@json_option
def hosts(lab_home: str, rounds: int, experiments: int, workers: int, no_record: bool, as_json: bool) -> None:
    """Throughput of a 3-host lab (Galera + RabbitMQ clusters) vs this single-host stack, as a ratio."""
    from bench import hosts as bench_hosts
    from bench import report
    from node.lab.lab import lab_config

    if not no_record:
        report.benchmarks_file()
    single = config()
    lab = lab_config(lab_home)
    result = bench_hosts.run(single, lab, rounds, experiments, workers, progress=_progress)
    _finish(result, bench_hosts.render, no_record, as_json)


@bench.command()
@click.option("--kills", type=click.IntRange(min=1), default=20, show_default=True,
              help="SIGKILLs per session timeout.")
@click.option("--timeouts", default="0.5,2", show_default=True, help="ZooKeeper session timeouts (s), comma-separated.")
@click.option("--handovers", type=click.IntRange(min=1), default=5, show_default=True, help="SIGTERM handovers.")
@click.option("--rescan-experiments", type=click.IntRange(min=1), default=10000, show_default=True,
              help="Pre-submitted chains for the rescan timing (x4 task nodes).")
@click.option("--no-record", is_flag=True, help="Do not append to docs/BENCHMARKS.md.")
@json_option
def failover(kills: int, timeouts: str, handovers: int, rescan_experiments: int, no_record: bool,
             as_json: bool) -> None:
    """Failover under load (SIGKILL, by phase) at each session timeout, SIGTERM handover, rescan time."""
    from bench import failover as fo
    from bench import report

    try:
        values = tuple(float(t) for t in timeouts.split(","))
    except ValueError:
        raise click.BadParameter(f"expected numbers like 0.5,2; got {timeouts!r}", param_hint="--timeouts") from None
    if not no_record:
        report.benchmarks_file()  # one that cannot be recorded fails before the run, not after it
    result = fo.run(config(), kills, values, handovers, rescan_experiments, progress=_progress)
    _finish(result, fo.render, no_record, as_json)


@bench.command()
@click.option("--kills", type=click.IntRange(min=1), default=10, show_default=True,
              help="SIGKILLs of the leader per runtime (containers, then processes).")
@click.option("--session-timeout", "session_timeout_s", type=click.FloatRange(0.2, 60), default=2.0,
              show_default=True, help="ZooKeeper session timeout of both clusters (beacon on).")
@click.option("--cached-only", is_flag=True, help="Skip the cold build (keep the images that exist).")
@click.option("--no-record", is_flag=True, help="Do not append to docs/BENCHMARKS.md.")
@json_option
def docker(kills: int, session_timeout_s: float, cached_only: bool, no_record: bool, as_json: bool) -> None:
    """Images (cold and cached build time, sizes) and leader failover in containers vs processes."""
    from bench import docker as dk
    from bench import report

    if not no_record:
        report.benchmarks_file()  # one that cannot be recorded fails before the run, not after it
    result = dk.run(config(), kills, session_timeout_s, cold=not cached_only, progress=_progress)
    _finish(result, dk.render, no_record, as_json)


@bench.command()
@click.option("--tasks", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Ready tasks in the stores when the cluster starts (one-task experiments, notices queued).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=900.0, show_default=True,
              help="Give up waiting for completion after this many seconds (reported as not completed).")
@click.option("--no-record", is_flag=True, help="Do not append to docs/BENCHMARKS.md.")
@json_option
def takeover(tasks: int, workers: int, timeout_s: float, no_record: bool, as_json: bool) -> None:
    """Cluster start over a large ready backlog: first advance, paged takeover, leader RSS, connections."""
    from bench import report
    from bench import takeover as tk

    if not no_record:
        report.benchmarks_file()  # one that cannot be recorded fails before the run, not after it
    result = tk.run(config(), tasks, workers, timeout_s, progress=_progress)
    _finish(result, tk.render, no_record, as_json)


@bench.command()
@click.option("--experiments", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Experiments of the built-in types recorded in MariaDB (a fifth QUEUED, the rest RUNNING or "
                   "COMPLETED).")
@click.option("--page-size", type=click.IntRange(min=1, max=10_000), default=1000, show_default=True,
              help="Experiments per Neo4j transaction.")
@click.option("--no-record", is_flag=True, help="Do not append to docs/BENCHMARKS.md.")
@json_option
def recover(experiments: int, page_size: int, no_record: bool, as_json: bool) -> None:
    """Time to rebuild Neo4j from MariaDB (`haorch recover neo4j`); stops the cluster first."""
    from bench import recover as rc

    result = rc.run(config(), experiments, page_size, progress=_progress)
    _finish(result, rc.render, no_record, as_json)


@bench.command()
@click.option("--jobs", type=click.IntRange(min=1, max=5000), default=200, show_default=True,
              help="SLURM jobs per phase.")
@click.option("--hold", "hold_s", type=click.IntRange(min=10, max=600), default=60, show_default=True,
              help="Seconds SLURM holds the jobs of the slot phase (they must all be queued within it).")
@click.option("--no-record", is_flag=True, help="Do not append to docs/BENCHMARKS.md.")
@json_option
def hpc(jobs: int, hold_s: int, no_record: bool, as_json: bool) -> None:
    """Short SLURM jobs through haorch against sbatch+sacct by hand (ratio), and worker slots held while jobs wait.

    Needs the stack; starts the HPC test site and a 1-node cluster with 2 workers if they are not running."""
    from bench import hpc as hp

    result = hp.run(config(), jobs, hold_s, progress=_progress)
    _finish(result, hp.render, no_record, as_json)


@bench.command()
@click.option("--experiments", type=click.IntRange(min=1000), default=100_000, show_default=True,
              help="Experiments in the stores (the missing ones are submitted and run first).")
@click.option("--samples", type=click.IntRange(min=10), default=100, show_default=True,
              help="Requests per measured kind.")
@click.option("--submits", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Single-experiment POSTs per submit round.")
@click.option("--clients", type=click.IntRange(min=1, max=64), default=8, show_default=True,
              help="Client threads of a submit round.")
@click.option("--no-record", is_flag=True, help="Do not append to docs/BENCHMARKS.md.")
@json_option
def console(experiments: int, samples: int, submits: int, clients: int, no_record: bool, as_json: bool) -> None:
    """The console and API with 100,000 experiments (p50/p99), and API submits/s vs the handler it replaced."""
    from bench import console as bench_console
    from bench import report

    if not no_record:
        report.benchmarks_file()
    result = bench_console.run(config(), experiments, samples, submits, clients, progress=_progress)
    _finish(result, bench_console.render, no_record, as_json)


@bench.command()
@click.option("--minutes", type=click.FloatRange(min=1, max=24 * 60), default=30.0, show_default=True,
              help="How long the load runs (then it drains and is checked).")
@click.option("--rate", type=click.FloatRange(min=1), default=None,
              help="Advancements/s to submit [default: half of a capacity run made first].")
@click.option("--tasks", type=click.IntRange(min=1, max=20), default=4, show_default=True,
              help="Steps of each experiment's noop chain.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--kill-every", "kill_every_s", type=click.FloatRange(min=20), default=180.0, show_default=True,
              help="Seconds between leader SIGKILLs.")
@click.option("--retention", "retention_s", type=click.FloatRange(min=10), default=120.0, show_default=True,
              help="Retention of the soak's experiments (seconds after they finish).")
@click.option("--sample", "sample_s", type=click.FloatRange(min=5), default=60.0, show_default=True,
              help="Seconds between samples (one table row each).")
@click.option("--no-record", is_flag=True, help="Do not append to docs/BENCHMARKS.md or write the PNG.")
@json_option
def soak(minutes: float, rate: float | None, tasks: int, workers: int, kill_every_s: float, retention_s: float,
         sample_s: float, no_record: bool, as_json: bool) -> None:
    """Steady load at half capacity with leader SIGKILLs and retention: memory, store sizes, p99, lost work."""
    from bench import report
    from bench import soak as bench_soak

    if not no_record:
        png = report.benchmarks_file().parent / "img" / "soak.png"
    result = bench_soak.run(config(), minutes, rate, tasks, workers, kill_every_s, retention_s, sample_s,
                            progress=_progress)
    if not no_record:
        result["png"] = str(bench_soak.plot(result, png).relative_to(png.parents[2]))
    _finish(result, bench_soak.render, no_record, as_json)


@bench.command()
@click.option("--in-flight", type=click.IntRange(min=100), default=100_000, show_default=True,
              help="Experiments in flight (dispatched, unanswered) when the leader is killed.")
@click.option("--burst", type=click.IntRange(min=10), default=10_000, show_default=True,
              help="Single-experiment API submissions of the burst.")
@click.option("--clients", type=click.IntRange(min=1, max=128), default=32, show_default=True,
              help="Client threads of the burst.")
@click.option("--burst-limit", type=click.IntRange(min=1), default=2000, show_default=True,
              help="max_in_flight of the node during the burst.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--no-record", is_flag=True, help="Do not append to docs/BENCHMARKS.md.")
@json_option
def scale(in_flight: int, burst: int, clients: int, burst_limit: int, workers: int, no_record: bool,
          as_json: bool) -> None:
    """Takeover with 100,000 experiments in flight; a burst of 10,000 API submissions against backpressure."""
    from bench import report
    from bench import scale as bench_scale

    if not no_record:
        report.benchmarks_file()
    result = bench_scale.run(config(), in_flight, burst, clients, burst_limit, workers, progress=_progress)
    _finish(result, bench_scale.render, no_record, as_json)
