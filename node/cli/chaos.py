"""``haorch chaos``: fault-injection runs and the invariant checker over the stores."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from node.cli.common import config, emit, json_option
from node.config import RUNTIMES, with_overrides
from node.errors import UsageError
from node.runtime.placement import lab_hosts


@click.group()
def chaos() -> None:
    """Chaos testing: verify the invariants over what the stores recorded."""


def _parse_since(value: str | None) -> float | None:
    """UNIX seconds, or an ISO 8601 time (naive means UTC)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--since expects UNIX seconds or an ISO 8601 time, got {value!r}") from None
    if parsed.tzinfo is None:

        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@chaos.command("check")
@click.option("--since", "since", metavar="TS", default=None,
              help="Only experiments created at or after TS (UNIX seconds or ISO 8601, UTC if no zone).")
@click.option("--id", "experiment_ids", multiple=True, metavar="ID", help="Only this experiment (repeatable).")
@json_option
def check(since: str | None, experiment_ids: tuple[str, ...], as_json: bool) -> None:
    """Verify every invariant over MariaDB and Neo4j (and the retention archive, when archive_dir is set); exit 1
    naming each violation, 0 when all hold."""
    from node.verify import Scope
    from node.verify import check as run_check

    cfg = config()
    report = run_check(cfg, Scope(since=_parse_since(since), experiment_ids=list(experiment_ids) or None,
                                  archive_dir=cfg.archive_dir or None))

    def human(_data: object) -> None:
        counters = ", ".join(f"{k} {v}" for k, v in report.counters().items())
        verdict = "OK" if report.ok else f"{len(report.violations)} VIOLATION(S)"
        click.echo(f"chaos check: {verdict} ({counters}; {report.elapsed_s:.2f} s)")
        for violation in report.violations:
            click.echo(f"violation {violation.line()}")

    emit(report.to_dict(), as_json, human)
    if not report.ok:
        sys.exit(1)


@chaos.command("run")
@click.argument("scenario")
@click.option("--kills", type=click.IntRange(0, 10000), default=3, show_default=True, help="Faults to inject.")
@click.option("--experiments", type=click.IntRange(1, 1000000), default=200, show_default=True,
              help="Experiments the steady load submits.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seed of the fault plan (mixed: the faults; workers and ZooKeeper members to stop).")
@click.option("--rate", type=click.FloatRange(0.1, 1000), default=None, help="Submissions per second (default: "
              "spread the experiments over the planned faults).")
@click.option("--interval", "interval_s", type=click.FloatRange(0, 3600), default=2.0, show_default=True,
              help="Seconds between a fault's recovery and the next fault.")
@click.option("--session-timeout", "session_timeout_s", type=click.FloatRange(0.2, 60), default=None,
              help="ZooKeeper session timeout of the cluster's nodes (default: the config's).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Write result.json, report.md and timeline.png into DIR.")
@click.option("--backend", type=click.Choice(RUNTIMES), default=None,
              help="Run the stack and cluster as processes (signals by PID) or as Docker containers (docker kill, "
                   "pause/unpause, stop/start through the docker SDK). Default: the state dir's runtime.")
@click.option("--workers", type=click.IntRange(1, 99), default=None,
              help="Workers of the cluster [default: one per lab host in a lab, else 2].")
@json_option
def run(scenario: str, kills: int, experiments: int, seed: int, rate: float | None, interval_s: float,
        session_timeout_s: float | None, report_dir: str | None, backend: str | None, workers: int | None,
        as_json: bool) -> None:
    """Run SCENARIO: a 3-node cluster + workers under steady load, KILLS faults, then the checker.

    \b
    Scenarios: kill-leader, stop-leader, freeze-leader, partition-leader, kill-worker, zk-member,
    zk-quorum, restart-services, mixed. Exit 1 if any invariant is violated or an experiment did not finish.
    Adversarial (process runtime; every task leaves a marker file, so an attempt executed twice fails the run):
    slow-tasks (2-6 s tasks), backlog (bursts beyond all workers' prefetch), poison (on every queue, during
    leader kills), freeze-publish (a leader stopped between its fenced writes and its publish), adversarial
    (all of them mixed).
    Hosts (a lab, `haorch lab up`; the last three also on `stack up --topology ha`): host-crash, host-isolate,
    partition (2|1), rabbit-leader, galera-wipe, rolling-restart, and hosts (each of them in turn).
    HPC (process runtime; starts the HPC test site if it is not up; every fault waits until jobs are queued and
    running in SLURM): hpc (kill-leader, kill-worker, restart-slurmctld in turn; every other worker kill right
    after an sbatch, at a failpoint), hpc-kill-leader, hpc-kill-worker, hpc-restart-slurmctld. Exit 1 also if an
    experiment did not complete, a submit task has other than one COMPLETED job in sacct (or a second job while
    an earlier one had not failed), or a staged file was placed twice.
    """
    from chaos_tests import report as chaos_report
    from chaos_tests import scenarios
    from node.cli.common import stderr

    if scenario not in scenarios.SCENARIOS:
        raise UsageError(f"unknown scenario {scenario!r}; one of {', '.join(scenarios.SCENARIOS)}")
    cfg = with_overrides(config(), runtime=backend) if backend else config()
    if workers is None:
        workers = max(2, len(lab_hosts(cfg)) - 1)
    result = scenarios.run(cfg, scenario, kills=kills, experiments=experiments, seed=seed, rate=rate,
                           interval_s=interval_s, session_timeout_s=session_timeout_s, workers=workers,
                           progress=lambda m: stderr.print(f"chaos {m}"))
    if report_dir:
        result["report_files"] = chaos_report.write(result, report_dir)

    def human(data: dict) -> None:
        exp, fo = data["experiments"], data["failover"]
        click.echo(f"chaos run {scenario}: {'OK' if data['ok'] else 'FAILED'}: {data['violations']} violation(s), "
                   f"{exp['completed']}/{exp['submitted']} experiments completed, {len(data['faults'])} fault(s), "
                   f"{data['duplicate_executions']} attempt(s) executed more than once")
        adv = data.get("adversarial")
        if adv:
            poison = adv["poison"] or {"dead_lettered": 0, "sent": 0}
            click.echo(f"attempts executed twice (marker files): {adv['exactly_once']['attempts_executed_twice']}, "
                       f"successes without a marker: {adv['exactly_once']['succeeded_without_marker']}, poison "
                       f"dead-lettered: {poison['dead_lettered']}/{poison['sent']}, unexpected exits: "
                       f"{', '.join(adv['unexpected_exits']) or 'none'}")
        hpc = data.get("hpc")
        if hpc:
            click.echo(f"SLURM: {hpc['jobs']} job(s) for {hpc['tasks']} submit task(s), per task "
                       f"{hpc['jobs_per_task']}, {hpc['adopted']} adopted by a later attempt; staging: "
                       f"{hpc['placements']} placements journaled; {len(hpc['violations'])} HPC violation(s)")
            for violation in hpc["violations"][:20]:
                click.echo(f"violation {violation['kind']}: {violation['detail']}")
        if fo["count"]:
            click.echo(f"failover ({fo['count']}): p50 {fo['p50_s'] * 1000:.0f} ms, p99 {fo['p99_s'] * 1000:.0f} ms, "
                       f"max {fo['max_s'] * 1000:.0f} ms")
        for violation in data["check"]["violations"][:20]:
            click.echo(f"violation {violation['kind']}: {violation['detail']}")
        if data.get("report_files"):
            click.echo(f"report: {data['report_files']['markdown']}")

    summary = {k: v for k, v in result.items() if k not in ("leader_timeline", "check_markdown")}
    emit(summary, as_json, human)
    if not result["ok"]:
        sys.exit(1)
