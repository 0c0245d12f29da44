"""``haorch dashboard``: render the Grafana dashboard to PNGs and an index.html, straight from Prometheus.

The panels and their queries are read from ``node/assets/grafana/dashboards/haorch-cluster.json`` (one source of
truth, built by ``grafana/build_dashboard.py``; package data, so a wheel install has it); each query runs as a
range query against the stack's Prometheus and each panel becomes one PNG (matplotlib, Agg backend), plus
``dashboard.png`` with every panel on one page::

    render(cfg, Path("out"), minutes=15)   # -> {"out", "index", "overview", "panels": [...], "start", "end", ...}
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node.config import Config
from node.errors import ServiceError, UsageError
from node.paths import DASHBOARD_FILE
from node.stack.prometheus import prometheus_query, prometheus_query_range

POINTS = 300  # samples per series: the step is the window divided by this (at least 1 s)


@dataclass
class Target:
    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    unit: str
    targets: list[Target]
    series: list[tuple[str, list[float], list[float]]] = field(default_factory=list)  # (label, times, values)


def load_panels(path: Path = DASHBOARD_FILE) -> list[Panel]:
    """Every panel with queries of the dashboard JSON, in order (rows flattened)."""
    try:
        board = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read dashboard {path}: {exc}") from None
    panels: list[Panel] = []

    def walk(items: list[dict]) -> None:
        for item in items:
            walk(item.get("panels", []))  # collapsed rows keep their panels inside
            targets = [Target(t["expr"], t.get("legendFormat", "")) for t in item.get("targets", []) if t.get("expr")]
            if targets:
                unit = item.get("fieldConfig", {}).get("defaults", {}).get("unit", "none")
                panels.append(Panel(item.get("title", f"panel {len(panels) + 1}"), unit, targets))

    walk(board.get("panels", []))
    return panels


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat (``{{label}}``) applied to a series' labels."""
    if fmt:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{labels.get('__name__', '')}{{{inner}}}"


def query_panels(cfg: Config, panels: list[Panel], start: float, end: float, step_s: float) -> None:
    """Fill each panel's series from Prometheus range queries (ServiceError on any failure)."""
    for panel in panels:
        for target in panel.targets:
            for row in prometheus_query_range(cfg, target.expr, start, end, step_s):
                times: list[float] = []
                values: list[float] = []
                for t, v in row["values"]:
                    if times and float(t) - times[-1] > 1.5 * step_s:  # a gap (target down): break the line
                        times.append(times[-1] + step_s)
                        values.append(float("nan"))
                    times.append(float(t))
                    values.append(float(v))
                panel.series.append((legend(target.legend, row["metric"]), times, values))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48]


def _draw(ax, panel: Panel, start: float, end: float) -> None:
    import matplotlib.dates as mdates

    ax.set_title(panel.title, fontsize=10, loc="left")
    ax.grid(True, alpha=0.3)
    ax.set_xlim(datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=7, tz=UTC))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
    ax.tick_params(labelsize=7)
    if panel.unit in ("s", "ops"):
        ax.set_ylabel({"s": "seconds", "ops": "per second"}[panel.unit], fontsize=8)
    if not panel.series:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        return
    for label, times, values in sorted(panel.series, key=lambda s: s[0]):
        ax.plot([datetime.fromtimestamp(t, UTC) for t in times], values, label=label or " ",
                linewidth=1.2, marker="." if len(times) < 3 else None)
    finite = [v for _, _, values in panel.series for v in values if v == v and abs(v) != float("inf")]
    if panel.unit == "none" and finite and min(finite) >= 0 and max(finite) <= 1:
        ax.set_ylim(-0.05, 1.15)  # 0/1 panels (leader, up, health) and idle counters: a readable axis
    ax.legend(fontsize=7, loc="upper left", ncol=2 if len(panel.series) > 4 else 1, framealpha=0.6)


def render(cfg: Config, out: Path, minutes: float = 15.0, end: float | None = None,
           dashboard: Path = DASHBOARD_FILE) -> dict[str, Any]:
    """Query every panel over the last ``minutes`` and write PNGs, dashboard.png and index.html into ``out``."""
    if minutes <= 0:
        raise UsageError(f"--minutes must be positive, got {minutes:g}")
    panels = load_panels(dashboard)
    try:
        prometheus_query(cfg, "vector(1)", timeout_s=3.0)
    except ServiceError:
        raise ServiceError(f"prometheus is not answering at {cfg.prometheus_url} (start it with `haorch stack up`, "
                           f"check `haorch stack status`)") from None
    end = time.time() if end is None else end
    start = end - minutes * 60
    step_s = max(1.0, round(minutes * 60 / POINTS))
    query_panels(cfg, panels, start, end, step_s)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out}: {exc.strerror}") from None
    rows = []
    for n, panel in enumerate(panels, 1):
        fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
        _draw(ax, panel, start, end)
        fig.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.1)  # fixed: tight_layout costs seconds
        name = f"panel-{n:02d}-{_slug(panel.title)}.png"
        fig.savefig(out / name)
        plt.close(fig)
        rows.append({"title": panel.title, "file": name, "series": len(panel.series),
                     "queries": [t.expr for t in panel.targets]})
    cols = 2
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(16, 3.2 * nrows), dpi=80, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(panels):
            _draw(ax, panels[i], start, end)
        else:
            ax.axis("off")
    when = f"{datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M:%S} – " \
           f"{datetime.fromtimestamp(end, UTC):%H:%M:%S} UTC"
    fig.suptitle(f"haorch cluster — {when}", fontsize=13, y=1 - 0.15 / (3.2 * nrows))
    fig.subplots_adjust(left=0.05, right=0.99, top=1 - 0.75 / (3.2 * nrows), bottom=0.03, hspace=0.35, wspace=0.12)
    fig.savefig(out / "dashboard.png")
    plt.close(fig)
    (out / "index.html").write_text(_index_html(rows, when, cfg.prometheus_url))
    return {"out": str(out), "index": str(out / "index.html"), "overview": str(out / "dashboard.png"),
            "start": start, "end": end, "step_s": step_s, "prometheus": cfg.prometheus_url, "panels": rows}


def _index_html(rows: list[dict[str, Any]], when: str, url: str) -> str:
    cells = "\n".join(
        f'<figure><img src="{html.escape(r["file"])}" alt="{html.escape(r["title"])}">'
        f'<figcaption>{html.escape(r["title"])} — <code>{"</code>; <code>".join(html.escape(q) for q in r["queries"])}'
        f"</code></figcaption></figure>" for r in rows)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>haorch cluster dashboard</title>
<style>
body {{ font-family: sans-serif; margin: 1em; background: #fafafa; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(640px, 1fr)); gap: 1em; }}
figure {{ margin: 0; background: #fff; border: 1px solid #ddd; padding: 0.5em; }}
img {{ width: 100%; }}
figcaption {{ font-size: 0.75em; color: #555; word-break: break-all; }}
</style></head><body>
<h1>haorch cluster</h1>
<p>{html.escape(when)} · Prometheus {html.escape(url)} · panels of the dashboard haorch-cluster.json ·
<a href="dashboard.png">all panels on one page</a></p>
<main>
{cells}
</main></body></html>
"""
