"""Experiment and template commands: template list|show|register, submit, status, list, cancel, wait."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click

from node.cli.common import config, emit, json_option, table
from node.errors import UsageError
from node.experiments import Experiments, Page, parse_params
from node.model.api_limits import LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT
from node.model.states import ExperimentState


def _fmt_time(ts: float | None) -> str | None:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}" if ts else None


@click.group()
def template() -> None:
    """Experiment types (abstract DAGs)."""


@template.command("list")
@json_option
def template_list(as_json: bool) -> None:
    """List registered experiment types (latest versions); installs the built-ins if missing."""
    with Experiments(config()) as exps:
        exps.install_builtins()
        emit(exps.dags.list_templates(), as_json, lambda rows: table(rows, ["type", "version", "tasks", "description"]))


@template.command("show")
@click.argument("type_", metavar="TYPE")
@json_option
def template_show(type_: str, as_json: bool) -> None:
    """Show the latest version of TYPE with its tasks and dependencies."""
    with Experiments(config()) as exps:
        data = exps.show_template(type_)

    def human(d: dict[str, Any]) -> None:
        click.echo(f"{d['type']} v{d['version']}: {d.get('description', '')}")
        declared = [name if default is None else f"{name}={default}" for name, default in d.get("params", {}).items()]
        click.echo(f"overridable params (--param K=V): {', '.join(declared) or 'none'}")
        table([{**t, "depends_on": ",".join(t.get("depends_on", [])) or "-"} for t in d["tasks"]],
              ["name", "kind", "executor", "depends_on", "retries", "timeout_s"])
    emit(data, as_json, human)


@template.command("register")
@click.argument("path", type=click.Path(dir_okay=False))
@json_option
def template_register(path: str, as_json: bool) -> None:
    """Register a template from a YAML or JSON FILE (a new version only if it changed)."""
    if not os.path.isfile(path):
        raise UsageError(f"no such file: {path}")
    with Experiments(config()) as exps:
        out = exps.register(path)
    emit(out, as_json, lambda d: click.echo(
        f"{d['type']} v{d['version']} " + ("registered" if d["created"] else "unchanged (already registered)")))


@click.command()
@click.argument("type_", metavar="TYPE")
@click.option("--id", "experiment_id", default=None, help="Experiment id (submitting the same id twice is a no-op).")
@click.option("--param", "params", multiple=True, metavar="K=V", help="Experiment parameter (repeatable).")
@json_option
def submit(type_: str, experiment_id: str | None, params: tuple[str, ...], as_json: bool) -> None:
    """Submit an experiment of TYPE; prints its id."""
    with Experiments(config()) as exps:
        exps.install_builtins()
        out = exps.submit(type_, experiment_id, parse_params(params))
    emit(out, as_json, lambda d: click.echo(d["experiment_id"]))


@click.command()
@click.argument("experiment_id", metavar="ID")
@json_option
def status(experiment_id: str, as_json: bool) -> None:
    """Show an experiment: state, and each task's state, attempts, timings and outputs (--json: all of them)."""
    with Experiments(config()) as exps:
        data = exps.status(experiment_id)

    def human(d: dict[str, Any]) -> None:
        took = f" in {d['finished_at'] - d['created_at']:.3f} s" if d.get("finished_at") else ""
        click.echo(f"{d['experiment_id']}  type={d['type']} v{d['template_version']}  state={d['state']}{took}")
        table([{"task": t["name"], "kind": t["kind"], "state": t["status"],
                "attempts": f"{t['attempt']}/{t['max_attempts']}", "dispatched": _fmt_time(t["dispatched_at"]),
                "finished": _fmt_time(t["finished_at"]),
                "note": (t.get("last_error") or (f"waiting: {t['waiting_on']}" if t.get("waiting_on") else "")
                         or _short_json(t.get("outputs")))[:60] or None}
               for t in d["tasks"]], ["task", "kind", "state", "attempts", "dispatched", "finished", "note"])
    emit(data, as_json, human)


def _short_json(value: Any) -> str:
    """Outputs on one line (the table cuts it; ``--json`` has all of it)."""
    return json.dumps(value, separators=(",", ":")) if value else ""


@click.command("list")
@click.option("--state", type=click.Choice(list(ExperimentState), case_sensitive=False), default=None,
              help="Only this state.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help=f"At most this many (default {LIST_DEFAULT_LIMIT}, at most {LIST_MAX_LIMIT}).")
@click.option("--after", default=None, metavar="CURSOR", help="The page after CURSOR (a previous page's 'next').")
@json_option
def list_(state: str | None, limit: int | None, after: str | None, as_json: bool) -> None:
    """List experiments, one page, oldest first (--json: {"experiments": [...], "next": CURSOR or null})."""
    with Experiments(config()) as exps:
        page = exps.list(state, limit, after)

    def human(p: Page) -> None:
        table([{**r, "created": _fmt_time(r["created_at"])} for r in p.rows],
              ["experiment_id", "type", "state", "created"])
        if p.next:
            click.echo(f"more: the same command with --after {p.next}", err=True)
    emit({"experiments": page.rows, "next": page.next} if as_json else page, as_json, human)


@click.command()
@click.argument("experiment_id", metavar="ID")
@json_option
def cancel(experiment_id: str, as_json: bool) -> None:
    """Cancel an experiment and its open tasks, and scancel its SLURM jobs (a finished one is left as it is)."""
    with Experiments(config()) as exps:
        out = exps.cancel(experiment_id)
    emit(out, as_json, lambda d: click.echo(f"{d['experiment_id']}: {d['state']} "
                                            f"({d['cancelled_tasks']} open task(s) cancelled)"))


@click.command()
@click.argument("experiment_ids", metavar="ID...", nargs=-1, required=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Seconds to wait before giving up (exit 1).")
@json_option
def wait(experiment_ids: tuple[str, ...], timeout_s: float, as_json: bool) -> None:
    """Wait until every ID is COMPLETED, FAILED or CANCELLED (exit 1 if any did not complete)."""
    with Experiments(config()) as exps:
        rows = exps.wait(list(experiment_ids), timeout_s)
    emit(rows, as_json, lambda rs: table(rs, ["experiment_id", "type", "state"]))
    if any(r["state"] != ExperimentState.COMPLETED for r in rows):
        raise SystemExit(1)
