"""Experiment and template commands: template list|show|register, submit, status, list, cancel, retry, wait.

Each works on the stores directly, or with ``--url URL`` (``$HAORCH_URL``) through that node's HTTP API with the
token in ``$HAORCH_TOKEN`` (``node/client.py``); the output is the same either way."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from node.access.audit import (
    CANCEL,
    REGISTER,
    RETRY,
    SUBMIT,
    cancelled_detail,
    registered_detail,
    retried_detail,
    submitted_detail,
)
from node.access.roles import Action
from node.cli.common import api_client, audited_locally, config, emit, json_option, table, url_option
from node.client import Client
from node.errors import UsageError
from node.experiments import Experiments, Page, new_experiment_id, parse_params
from node.model.api_limits import LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT
from node.model.executors import KNOWN_EXECUTORS
from node.model.states import ExperimentState
from node.model.template import load_template_file

T = TypeVar("T")


def _fmt_time(ts: float | None) -> str | None:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}" if ts else None


def _either(url: str | None, remote: Callable[[Client], T], local: Callable[[Experiments], T]) -> T:
    """``remote`` with a client of the node at ``url`` (token: $HAORCH_TOKEN), or ``local`` on the stores."""
    if url:
        with api_client(url) as api:
            return remote(api)
    with Experiments(config()) as exps:
        return local(exps)


@click.group()
def template() -> None:
    """Experiment types (abstract DAGs)."""


@template.command("list")
@url_option
@json_option
def template_list(url: str | None, as_json: bool) -> None:
    """List registered experiment types (latest versions); installs the built-ins if missing."""
    def local(exps: Experiments) -> list[dict[str, Any]]:
        exps.install_builtins()
        return exps.dags.list_templates()
    rows = _either(url, lambda api: api.templates(), local)
    emit(rows, as_json, lambda rows: table(rows, ["type", "version", "tasks", "description"]))


@template.command("show")
@click.argument("type_", metavar="TYPE")
@url_option
@json_option
def template_show(type_: str, url: str | None, as_json: bool) -> None:
    """Show the latest version of TYPE with its tasks and dependencies."""
    data = _either(url, lambda api: api.template(type_), lambda exps: exps.show_template(type_))

    def human(d: dict[str, Any]) -> None:
        click.echo(f"{d['type']} v{d['version']}: {d.get('description', '')}")
        declared = [name if default is None else f"{name}={default}" for name, default in d.get("params", {}).items()]
        click.echo(f"overridable params (--param K=V): {', '.join(declared) or 'none'}")
        table([{**t, "depends_on": ",".join(t.get("depends_on", [])) or "-"} for t in d["tasks"]],
              ["name", "kind", "executor", "depends_on", "retries", "timeout_s"])
    emit(data, as_json, human)


@template.command("register")
@click.argument("path", type=click.Path(dir_okay=False))
@url_option
@json_option
def template_register(path: str, url: str | None, as_json: bool) -> None:
    """Register a template from a YAML or JSON FILE (a new version only if it changed)."""
    if not os.path.isfile(path):
        raise UsageError(f"no such file: {path}")
    if url:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: cannot read: {exc}") from None
        with api_client(url) as api:
            out = api.register_template(text)
    else:
        with Experiments(config()) as exps:
            template = load_template_file(path, KNOWN_EXECUTORS)
            out = audited_locally(exps.records, Action.REGISTER, REGISTER, f"template:{template.type}",
                                  lambda: exps.register_template(template), registered_detail)
    emit(out, as_json, lambda d: click.echo(
        f"{d['type']} v{d['version']} " + ("registered" if d["created"] else "unchanged (already registered)")))


@click.command()
@click.argument("type_", metavar="TYPE")
@click.option("--id", "experiment_id", default=None, help="Experiment id (submitting the same id twice is a no-op).")
@click.option("--param", "params", multiple=True, metavar="K=V", help="Experiment parameter (repeatable).")
@url_option
@json_option
def submit(type_: str, experiment_id: str | None, params: tuple[str, ...], url: str | None, as_json: bool) -> None:
    """Submit an experiment of TYPE; prints its id."""
    if url:
        with api_client(url) as api:
            out = api.submit(type_, experiment_id, parse_params(params))
    else:
        experiment_id = new_experiment_id(type_) if experiment_id is None else experiment_id
        with Experiments(config()) as exps:
            exps.install_builtins()
            out = audited_locally(exps.records, Action.SUBMIT, SUBMIT, experiment_id,
                                  lambda: exps.submit(type_, experiment_id, parse_params(params)), submitted_detail)
    emit(out, as_json, lambda d: click.echo(d["experiment_id"]))


@click.command()
@click.argument("experiment_id", metavar="ID")
@url_option
@json_option
def status(experiment_id: str, url: str | None, as_json: bool) -> None:
    """Show an experiment: state, and each task's state, attempts, timings and outputs (--json: all of them)."""
    data = _either(url, lambda api: api.status(experiment_id), lambda exps: exps.status(experiment_id))

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
@url_option
@json_option
def list_(state: str | None, limit: int | None, after: str | None, url: str | None, as_json: bool) -> None:
    """List experiments, one page, oldest first (--json: {"experiments": [...], "next": CURSOR or null})."""
    page = _either(url, lambda api: api.list(state, limit, after), lambda exps: exps.list(state, limit, after))

    def human(p: Page) -> None:
        table([{**r, "created": _fmt_time(r["created_at"])} for r in p.rows],
              ["experiment_id", "type", "state", "created"])
        if p.next:
            click.echo(f"more: the same command with --after {p.next}", err=True)
    emit({"experiments": page.rows, "next": page.next} if as_json else page, as_json, human)


@click.command()
@click.argument("experiment_id", metavar="ID")
@url_option
@json_option
def cancel(experiment_id: str, url: str | None, as_json: bool) -> None:
    """Cancel an experiment and its open tasks, and scancel its SLURM jobs (a finished one is left as it is)."""
    out = _either(url, lambda api: api.cancel(experiment_id),
                  lambda exps: audited_locally(exps.records, Action.CANCEL, CANCEL, experiment_id,
                                               lambda: exps.cancel(experiment_id), cancelled_detail))
    emit(out, as_json, lambda d: click.echo(f"{d['experiment_id']}: {d['state']} "
                                            f"({d['cancelled_tasks']} open task(s) cancelled)"))


@click.command()
@click.argument("experiment_id", metavar="ID")
@url_option
@json_option
def retry(experiment_id: str, url: str | None, as_json: bool) -> None:
    """Resume a FAILED or CANCELLED experiment from its failed step, under the same id: the tasks that did not
    succeed run again, those that succeeded do not (any other state is reported as it is)."""
    out = _either(url, lambda api: api.retry(experiment_id),
                  lambda exps: audited_locally(exps.records, Action.RETRY, RETRY, experiment_id,
                                               lambda: exps.retry(experiment_id), retried_detail))
    emit(out, as_json, lambda d: click.echo(f"{d['experiment_id']}: {d['state']} "
                                            f"({d['retried_tasks']} task(s) to run again)"))


@click.command()
@click.argument("experiment_ids", metavar="ID...", nargs=-1, required=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Seconds to wait before giving up (exit 1).")
@url_option
@json_option
def wait(experiment_ids: tuple[str, ...], timeout_s: float, url: str | None, as_json: bool) -> None:
    """Wait until every ID is COMPLETED, FAILED or CANCELLED (exit 1 if any did not complete)."""
    rows = _either(url, lambda api: api.wait(list(experiment_ids), timeout_s),
                   lambda exps: exps.wait(list(experiment_ids), timeout_s))
    emit(rows, as_json, lambda rs: table(rs, ["experiment_id", "type", "state"]))
    if any(r["state"] != ExperimentState.COMPLETED for r in rows):
        raise SystemExit(1)
