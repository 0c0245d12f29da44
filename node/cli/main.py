"""Entry point of the ``haorch`` console script.

Errors reach the user as one line on stderr (``haorch: ...``) with exit code 2 for bad input, 1 for a failure
and 75 for a submission refused as busy (retry later); tracebacks only with ``HAORCH_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys

import click

from node import __version__
from node.errors import DependencyError, HaorchError
from node.logs import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="haorch")
@click.option("--home", envvar="HAORCH_HOME", type=click.Path(file_okay=False), default=None,
              help="State dir (default $HAORCH_HOME or ./.haorch).")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """haorch: a highly available workflow orchestrator.

    \b
    Quick start:
      haorch stack up          # ZooKeeper x3, RabbitMQ, MariaDB, Neo4j, Prometheus
      haorch cluster up        # 3 orchestrator nodes + workers
      haorch submit chain      # run an experiment
      haorch token create --role admin --name me   # then the web console: http://127.0.0.1:17171/
      haorch deploy up --docker    # or: stack and cluster as Docker containers
    """
    ctx.obj = {"home": home}


@cli.command()
@click.option("--rate", type=click.FloatRange(min=1, max=1000), default=40, show_default=True,
              help="Experiments submitted per second (all four built-in types in turn).")
@click.option("--duration", type=click.FloatRange(min=5, max=600), default=60, show_default=True,
              help="Seconds of submissions.")
@click.option("--kills", type=click.IntRange(0, 10), default=3, show_default=True,
              help="Times the leader is killed with SIGKILL.")
@click.option("--hpc", is_flag=True,
              help="Instead: run the example science workload (hpc_wordcount) on the HPC test site: stage in, a "
                   "SLURM array job, monitor, stage out, check every result.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def demo(rate: float, duration: float, kills: int, hpc: bool, as_json: bool) -> None:
    """Kill the leader of a 3-node cluster under load (SIGKILL, 3 times): nothing lost, nothing advanced twice.

    Needs the stack (`haorch stack up`); starts the cluster if it is not running and leaves it up. Exits 1
    when an invariant is violated. With --hpc: starts the HPC test site (`haorch hpc up`) if needed and runs one
    hpc_wordcount experiment on it; exits 1 when a result is wrong or the submit task has other than one job.
    """
    from node.cli.common import config, emit, stderr

    if hpc:
        from node.demo_hpc import print_hpc_summary, run_hpc_demo

        result = run_hpc_demo(config(), console=stderr)
        emit(result, as_json, lambda s: print_hpc_summary(s, stderr))
        if not result["ok"]:
            sys.exit(1)
        return
    from node.demo import print_summary, run_demo

    summary = run_demo(config(), rate=rate, duration_s=duration, kills=kills, console=stderr)
    emit(summary, as_json, lambda s: print_summary(s, stderr))
    if not summary["ok"]:
        sys.exit(1)


def _register_commands() -> None:
    from node.cli import bench, chaos, cluster, deploy, experiments, lab, node, recover, stack, worker

    for command in (stack.stack, cluster.cluster, deploy.deploy, bench.bench, node.node, worker.worker,
                    experiments.template, experiments.submit, experiments.status, experiments.list_,
                    experiments.cancel, experiments.retry, experiments.wait, chaos.chaos, lab.lab, recover.recover):
        cli.add_command(command)
    from node.cli.dashboard import dashboard
    cli.add_command(dashboard)
    from node.cli.hpc import hpc
    cli.add_command(hpc)
    from node.cli.token import audit, token
    cli.add_command(token)
    cli.add_command(audit)
    from node.cli.gc import gc
    cli.add_command(gc)
    from node.cli.pool import pool
    cli.add_command(pool)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; never lets a traceback reach the user unless HAORCH_DEBUG is set."""
    configure_logging(os.environ.get("HAORCH_LOG_LEVEL", "WARNING"))
    _register_commands()
    debug = bool(os.environ.get("HAORCH_DEBUG"))
    try:
        cli.main(args=argv, prog_name="haorch", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("haorch: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # bad arguments: one line, exit 2
        click.echo(f"haorch: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except DependencyError as exc:  # a store did not answer
        if debug:
            raise
        click.echo(_not_reachable(exc.service, f"{exc.endpoint}: {exc.cause}"), err=True)
        sys.exit(exc.exit_code)
    except HaorchError as exc:
        if debug:
            raise
        click.echo(f"haorch: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("haorch: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        down = _unreachable_service(exc)
        if down:
            click.echo(_not_reachable(down, _first_line(exc)), err=True)
        else:
            click.echo(f"haorch: unexpected error: {type(exc).__name__}: {_first_line(exc)} "
                       "(HAORCH_DEBUG=1 shows the traceback)", err=True)
        sys.exit(1)


def _not_reachable(service: str, detail: str) -> str:
    return f"haorch: {service} is not reachable ({detail}); is the stack up? (`haorch stack status`)"


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _unreachable_service(exc: Exception) -> str | None:
    """The service a client library failed to reach, when ``exc`` is such a failure."""
    import neo4j.exceptions
    import pika.exceptions
    import pymysql

    if isinstance(exc, neo4j.exceptions.ServiceUnavailable):
        return "neo4j"
    if isinstance(exc, pika.exceptions.AMQPConnectionError):
        return "rabbitmq"
    if isinstance(exc, pymysql.err.OperationalError) and exc.args and exc.args[0] in (2003, 2006, 2013):
        return "mariadb"
    return None
