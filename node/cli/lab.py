"""``haorch lab``: a 3-host deployment on this machine (network namespaces on a private bridge; node/lab/)."""

from __future__ import annotations

import click

from node.cli.common import config, emit, json_option, stderr, table
from node.lab import lab as lab_ops


def _progress(message: str) -> None:
    stderr.print(f"[dim]lab[/dim] {message}")


@click.group()
def lab() -> None:
    """A multi-host lab: each host a network namespace with its own address and cgroup.

    \b
    HAORCH_HOME=.haorch-lab haorch lab up --hosts 3
    HAORCH_HOME=.haorch-lab haorch submit chain     # every command drives the lab
    HAORCH_HOME=.haorch-lab haorch lab crash host-2
    HAORCH_HOME=.haorch-lab haorch lab down
    """


@lab.command()
@click.option("--hosts", type=int, default=3, show_default=True,
              help="Member hosts (3), each with a ZooKeeper member, RabbitMQ node, Galera member, node and worker; "
                   "one more host runs Neo4j and Prometheus.")
@json_option
def up(hosts: int, as_json: bool) -> None:
    """Create the lab (bridge, namespaces, cgroups) and start everything on it (idempotent)."""
    rows = lab_ops.up(config(), hosts, progress=_progress)
    emit(rows, as_json, _human_status)


@lab.command()
@click.option("--purge", is_flag=True, help="Also delete the state dir (data, logs, passwords).")
@json_option
def down(purge: bool, as_json: bool) -> None:
    """Stop every program of the lab, then remove its namespaces, bridge, rules and cgroups."""
    out = lab_ops.down(config(), purge=purge, progress=_progress)
    emit(out, as_json, lambda d: click.echo(f"stopped {len(d['stopped'])} process(es), removed "
                                            f"{', '.join(d['removed']) or 'nothing'}"))


def _human_status(rows: list[dict]) -> None:
    if not rows:
        click.echo("no lab is up in this state dir (`haorch lab up`)")
        return
    table([{**r, "isolated": "YES" if r["isolated"] else "no",
            "processes": " ".join(f"{p['name']}({p['pid']})" for p in r["processes"]) or "-"} for r in rows],
          ["host", "address", "isolated", "processes"])


@lab.command()
@json_option
def status(as_json: bool) -> None:
    """Each host: its address, whether it is isolated, its running processes."""
    emit(lab_ops.status(config()), as_json, _human_status)


@lab.command()
@click.argument("host")
@json_option
def crash(host: str, as_json: bool) -> None:
    """SIGKILL every process of HOST (host-2, or 2) at once."""
    out = lab_ops.crash(config(), host)
    emit(out, as_json, lambda d: click.echo(f"{d['host']}: {d['killed']} process(es) killed"))


@lab.command()
@click.argument("host")
@click.option("--from", "peers", multiple=True,
              help="Only cut HOST off from this host (repeatable): --from host-1 --from host-2 makes a 2|1 partition.")
@json_option
def isolate(host: str, peers: tuple[str, ...], as_json: bool) -> None:
    """Drop all traffic of HOST, both ways (or only with the --from hosts)."""
    out = lab_ops.isolate(config(), host, list(peers) or None)
    emit(out, as_json, lambda d: click.echo(f"{d['host']} isolated from {d['from']}"))


@lab.command()
@click.argument("host", required=False)
@json_option
def heal(host: str | None, as_json: bool) -> None:
    """Lift the isolation of HOST (of every host without HOST)."""
    healed = lab_ops.heal(config(), host)
    emit({"healed": healed}, as_json, lambda d: click.echo(f"healed {', '.join(d['healed']) or 'nothing'}"))


@lab.command()
@click.argument("host")
@json_option
def restart(host: str, as_json: bool) -> None:
    """Start the programs of HOST that are not running and wait until its services answer."""
    out = lab_ops.restart(config(), host, progress=_progress)
    emit(out, as_json, lambda d: click.echo(f"{d['host']}: started {', '.join(d['started']) or 'nothing'} "
                                            f"in {d['seconds']} s"))
