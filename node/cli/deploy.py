"""``haorch deploy``: the whole 3-node service (stack + cluster) in one command, as processes or containers."""

from __future__ import annotations

import sys
from typing import Any

import click

from node.cli.common import config, emit, json_option, stderr, table
from node.config import Config, with_overrides

docker_option = click.option("--docker", "docker", is_flag=True,
                             help="Run as Docker containers (host networking; the state dir remembers it).")


def _progress(message: str) -> None:
    stderr.print(f"[dim]deploy[/dim] {message}")


def _config(docker: bool) -> Config:
    cfg = config()
    return with_overrides(cfg, runtime="docker") if docker else cfg


def _mib(size: object) -> str | None:
    return f"{int(size) / 2**20:.0f} MiB" if isinstance(size, int) else None


@click.group()
def deploy() -> None:
    """The 3-node service in one step: build images, start or stop everything, show its state.

    \b
    haorch deploy up --docker      # images (built when missing), 7 service containers, 3 nodes, 2 workers
    haorch deploy status           # every program: state, health, restarts, role; exit 1 if unhealthy
    haorch deploy down             # stop and remove them (data stays; --purge deletes it)
    """


@deploy.command()
@click.option("--image", "roles", multiple=True, metavar="ROLE",
              help="Only this image and the ones it builds on (repeatable; default: all).")
@click.option("--rebuild-base", is_flag=True, help="Bootstrap the Debian base again even if it exists.")
@json_option
def build(roles: tuple[str, ...], rebuild_base: bool, as_json: bool) -> None:
    """Build the images offline: a debootstrap Debian 12 base, then one image per role (cached layers)."""
    from node.containers.images import build_images

    rows = build_images(list(roles) or None, progress=_progress, rebuild_base=rebuild_base)

    def human(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            row["size"] = _mib(row.get("size_bytes"))
            row["time"] = f"{row['seconds']:.1f} s" if row.get("built") else "present"
        table(rows, ["image", "time", "cached_steps", "size"])

    emit(rows, as_json, human)


@deploy.command()
@json_option
def images(as_json: bool) -> None:
    """List haorch's images: present or not, size, creation time."""
    from node.containers.images import describe

    rows = describe()

    def human(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            row["size"] = _mib(row.get("size_bytes"))
            row["present"] = "yes" if row["present"] else "no"
        table(rows, ["image", "present", "size", "created"])

    emit(rows, as_json, human)


@deploy.command()
@docker_option
@click.option("--nodes", type=click.IntRange(1, 29), default=3, show_default=True, help="Orchestrator replicas.")
@click.option("--workers", type=click.IntRange(0, 99), default=2, show_default=True, help="Workers.")
@json_option
def up(docker: bool, nodes: int, workers: int, as_json: bool) -> None:
    """Start the stack and the cluster (whatever is not running) and wait for a leader. Idempotent."""
    from node import deployment

    data = deployment.up(_config(docker), nodes=nodes, workers=workers, progress=_progress)
    emit(data, as_json, lambda d: click.echo(
        f"deploy up ({d['runtime']}): {len(d['services_started'])} service(s) and {len(d['cluster_started'])} "
        f"node(s)/worker(s) started; {d['leader']} leads (epoch {d['epoch']}); state dir {d['home']}"))


@deploy.command()
@docker_option
@click.option("--purge", is_flag=True, help="Also delete the state dir (data, logs, passwords).")
@json_option
def down(docker: bool, purge: bool, as_json: bool) -> None:
    """Stop the cluster, then the stack (containers are removed; images and data stay)."""
    from node import deployment

    cfg = _config(docker)
    stopped = deployment.down(cfg, purge=purge, progress=_progress)
    emit({"runtime": cfg.runtime, "stopped": stopped, "purged": purge}, as_json,
         lambda d: click.echo(f"deploy down ({d['runtime']}): stopped {len(d['stopped'])}"
                              + (", state dir deleted" if purge else "")))


@deploy.command()
@docker_option
@json_option
def status(docker: bool, as_json: bool) -> None:
    """Every program of the deployment; exit 1 unless all are healthy and a node leads."""
    from node import deployment

    cfg = _config(docker)
    rows = deployment.status(cfg)
    ok = all(r["healthy"] for r in rows) and any(r.get("role") == "leader" for r in rows)
    columns = ["program", "pid", "port", "healthy", "role", "epoch"]
    if cfg.runtime == "docker":
        columns += ["container", "state", "health", "restarts"]

    def human(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            row["healthy"] = "yes" if row["healthy"] else "NO"
        table(rows, columns)

    emit(rows, as_json, human)
    if not ok:
        sys.exit(1)
