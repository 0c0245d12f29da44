"""``haorch bench soak``: steady load for many minutes, the leader SIGKILLed every few minutes, retention acting.

The run (3 nodes, ``workers`` workers, the stack already up):

1. capacity: unless ``rate`` is given, a short :func:`bench.throughput.run_config` measures advancements/s on this
   machine now; the soak then submits about ``load_fraction`` (half) of it, as experiments of a ``tasks``-step
   chain of noop tasks (type ``soak``, registered with ``retention_days`` = ``retention_s`` so that retention
   deletes them during the run while the global default is left alone), with every deleted experiment archived
   (``archive_dir`` of the run) so that nothing deleted can pass for lost;
2. every ``kill_every_s`` the leader is SIGKILLed and restarted once a new leader acts;
3. every ``sample_s`` a row: the RSS of every program of the stack (``/proc``), the Neo4j store and MariaDB data
   directory sizes (``du``) and the MariaDB tables' own size (``information_schema``), the experiments MariaDB
   holds, queue depths, the experiments completed in the window with the advancements they made, and the p99 of
   their task advancement latency (each task's DISPATCHED → SUCCEEDED transition);
4. after ``minutes``: the load stops, the backlog drains, and every submitted id must be COMPLETED in MariaDB or
   COMPLETED in the archive; the verifier runs over what the stores still hold of the run.

Growth per hour is the least-squares slope of each series after the warm-up (the first third of the rows, at least
one). What the run leaves behind: the experiments still in the stores (``soak-<run id>-...``) are deleted at the end,
also on an error or Ctrl-C (:mod:`bench.scratch`), and so is the archive, once checked.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.failover import full_rescan, recorded_phases
from bench.probes import query
from bench.report import percentile
from bench.scratch import Scratch
from bench.throughput import run_config
from node import cluster
from node.config import Config, with_overrides
from node.experiments import Experiments
from node.load import Load
from node.model.executors import KNOWN_EXECUTORS
from node.model.states import ExperimentState, TaskStatus
from node.model.template import Template, parse_template
from node.retention.archive import archive_files, read_lines
from node.runtime.process import rss_bytes, wait_gone
from node.runtime.programs import names, recorded
from node.stores.queues import QUEUES
from node.stores.rabbit import connect
from node.verify import EXACTLY_ONCE_KINDS, Scope, check

Progress = Callable[[str], None]
TYPE = "soak"
MIB = 1024 * 1024


def soak_template(tasks: int, retention_s: float) -> Template:
    """A chain of ``tasks`` noop tasks whose experiments are kept ``retention_s`` after they finish."""
    steps = [{"name": f"step{i}", "kind": "soak", **({"depends_on": [f"step{i - 1}"]} if i else {})}
             for i in range(tasks)]
    return parse_template({"type": TYPE, "description": f"haorch bench soak: a chain of {tasks} noop tasks",
                           "retention_days": retention_s / 86400.0, "tasks": steps}, KNOWN_EXECUTORS)


class SoakLoad(Load):
    """The run's experiments: ``<prefix><7 digits>``, one type."""

    def _id(self, type_: str, index: int) -> str:
        return f"{self.prefix}{index:07d}"


@dataclass
class Row:
    """One sample: what the stack looked like at ``minute`` (minutes since the load started)."""

    minute: float
    rss_mib: dict[str, float]
    neo4j_mib: float
    mariadb_mib: float
    tables_mib: float
    stored: int
    queues: dict[str, int]
    completed: int
    advancements_per_s: float
    p99_ms: float
    submitted: int
    kills: int


@dataclass
class Soak:
    cfg: Config
    prefix: str
    started: float
    load: SoakLoad
    rows: list[Row] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)


def _du_mib(path: Path) -> float:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=False)
    return int(out.stdout.split()[0]) / MIB if out.returncode == 0 and out.stdout else float("nan")


def _rss(cfg: Config) -> dict[str, float]:
    found: dict[str, float] = {}
    for name in names(cfg):
        size = rss_bytes(recorded(cfg, name).pids())
        if size is not None:
            found[name] = size / MIB
    return found


def _queue_depths(cfg: Config) -> dict[str, int]:
    conn = connect(cfg, name="haorch-bench-soak")
    try:
        channel = conn.channel()
        return {q: channel.queue_declare(queue=q, passive=True).method.message_count for q in QUEUES}
    finally:
        conn.close()


def _window(cfg: Config, prefix: str, start: float, end: float, tasks: int) -> tuple[int, float, float]:
    """Experiments of the run COMPLETED in [start, end): their count, advancements/s, p99 ms of their tasks'
    DISPATCHED → SUCCEEDED (served by idx_state_finished, then the transitions index per experiment)."""
    rows = query(cfg, "SELECT s.at - d.at FROM experiments e "
                      "JOIN transitions d ON d.experiment_id = e.experiment_id AND d.to_state = %s "
                      "JOIN transitions s ON s.experiment_id = d.experiment_id AND s.task = d.task "
                      "AND s.attempt = d.attempt AND s.to_state = %s "
                      "WHERE e.state = %s AND e.finished_at >= %s AND e.finished_at < %s "
                      "AND e.experiment_id LIKE %s",
                 (TaskStatus.DISPATCHED, TaskStatus.SUCCEEDED, ExperimentState.COMPLETED, start, end, prefix + "%"))
    latencies = [r[0] * 1000 for r in rows]
    completed = len(latencies) // tasks
    return completed, len(latencies) / (end - start), percentile(latencies, 0.99) if latencies else float("nan")


def sample(soak: Soak, window_s: float, tasks: int) -> Row:
    cfg = soak.cfg
    now = time.time()
    tables = query(cfg, "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables "
                        "WHERE table_schema = DATABASE()")
    stored = query(cfg, "SELECT COUNT(*) FROM experiments WHERE experiment_id LIKE %s", (soak.prefix + "%",))
    completed, rate, p99 = _window(cfg, soak.prefix, now - window_s, now, tasks)
    row = Row(minute=(now - soak.started) / 60, rss_mib=_rss(cfg), neo4j_mib=_du_mib(cfg.data_dir("neo4j")),
              mariadb_mib=_du_mib(cfg.data_dir("mariadb")), tables_mib=float(tables[0][0]) / MIB,
              stored=int(stored[0][0]), queues=_queue_depths(cfg), completed=completed, advancements_per_s=rate,
              p99_ms=p99, submitted=soak.load.done, kills=len(soak.kills))
    soak.rows.append(row)
    return row


def kill_leader(cfg: Config, progress: Progress) -> dict[str, Any]:
    """SIGKILL the leader; wait for the next to act; start the killed node again."""
    old = cluster.wait_for_leader(cfg, 30)
    killed = cluster.kill_leader(cfg, "KILL")
    new = cluster.wait_for_leader(cfg, cfg.zk_session_timeout_s + 30, newer_than=old["epoch"])
    took = time.time() - killed["at"]
    wait_gone(killed["pid"], 10.0)
    cluster.start_node(cfg, int(old["node_id"].split("-")[1]))
    progress(f"killed {old['node_id']} (epoch {old['epoch']}); {new['node_id']} leads epoch {new['epoch']} "
             f"after {took * 1000:.0f} ms")
    return {"from": old["node_id"], "to": new["node_id"], "epoch": new["epoch"], "acting_after_s": took}


def archived(archive_dir: Path) -> Iterator[dict[str, Any]]:
    """Every experiment record of the archive, file by file (not all in memory at once)."""
    for path in archive_files(archive_dir):
        yield from read_lines(path)


def account(cfg: Config, prefix: str, ids: list[str], archive_dir: Path) -> dict[str, int]:
    """Where each submitted id ended: COMPLETED in MariaDB, COMPLETED in the archive, or neither (lost)."""
    in_store = {r[0]: r[1] for r in query(cfg, "SELECT experiment_id, state FROM experiments "
                                               "WHERE experiment_id LIKE %s", (prefix + "%",))}
    in_archive: dict[str, str] = {}
    for record in archived(archive_dir):
        in_archive[record["experiment_id"]] = record["experiment"]["state"]
    counts = {"stored_completed": 0, "archived_completed": 0, "other_state": 0, "lost": 0}
    for experiment_id in ids:
        if in_store.get(experiment_id) == ExperimentState.COMPLETED:
            counts["stored_completed"] += 1
        elif in_archive.get(experiment_id) == ExperimentState.COMPLETED:
            counts["archived_completed"] += 1
        elif experiment_id in in_store or experiment_id in in_archive:
            counts["other_state"] += 1
        else:
            counts["lost"] += 1
    return counts


def _rss_of(program: str) -> Callable[[Row], float]:
    return lambda row: row.rss_mib.get(program, float("nan"))


def growth_per_hour(rows: list[Row], value: Callable[[Row], float]) -> float:
    """Least-squares slope (per hour) of ``value`` over the rows after the warm-up (the first third)."""
    kept = rows[max(1, len(rows) // 3):]
    points = [(r.minute / 60, value(r)) for r in kept if value(r) == value(r)]
    if len(points) < 2:
        return float("nan")
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else float("nan")


def run(cfg: Config, minutes: float = 30.0, rate: float | None = None, tasks: int = 4, workers: int = 2,
        kill_every_s: float = 180.0, retention_s: float = 120.0, sample_s: float = 60.0,
        load_fraction: float = 0.5, drain_s: float = 300.0, progress: Progress = lambda _m: None) -> dict[str, Any]:
    """The whole soak; returns every figure (see :func:`render`)."""
    started_at = time.time()
    if rate is None:
        probe = run_config(cfg, "soak-capacity", cfg.batch_size, 1500, workers, progress)
        rate = probe.rate * load_fraction
        capacity: float | None = probe.rate
    else:
        capacity = None
    per_s = rate / tasks
    archive_dir = cfg.home / "bench" / f"soak-archive-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(started_at))}"
    archive_dir.mkdir(parents=True, exist_ok=True)
    run_cfg = with_overrides(cfg, archive_dir=str(archive_dir), gc_interval_s=1.0)
    cluster.down(cfg)
    with Scratch(cfg, "soak") as scratch:
        try:
            with Experiments(run_cfg) as exps:
                exps.register_template(soak_template(tasks, retention_s))
            cluster.up(run_cfg, nodes=3, workers=workers)
            total = int(per_s * minutes * 60 * 1.2) + 100
            load = SoakLoad(run_cfg, rate=per_s, total=total, types=(TYPE,), batch=max(1, int(per_s / 4)),
                            threads=2, prefix=scratch.prefix, max_s=minutes * 60)
            soak = Soak(run_cfg, scratch.prefix, time.time(), load)
            progress(f"soak: {per_s:.0f} experiments/s of {tasks} tasks ({rate:.0f} advancements/s) for "
                     f"{minutes:g} min; leader SIGKILL every {kill_every_s:g} s; retention {retention_s:g} s")
            load.start()
            next_kill = time.monotonic() + kill_every_s
            next_sample = time.monotonic() + sample_s
            end = time.monotonic() + minutes * 60
            while time.monotonic() < end:
                time.sleep(max(0.0, min(next_kill, next_sample, end) - time.monotonic()))
                if time.monotonic() >= next_sample:
                    row = sample(soak, sample_s, tasks)
                    next_sample += sample_s
                    progress(f"soak: minute {row.minute:.1f}: {row.advancements_per_s:.0f} adv/s, p99 "
                             f"{row.p99_ms:.0f} ms, stored {row.stored}, neo4j {row.neo4j_mib:.0f} MiB, mariadb "
                             f"{row.mariadb_mib:.0f} MiB, submitted {load.done}")
                if time.monotonic() >= next_kill and time.monotonic() < end - 30:
                    kill = kill_leader(run_cfg, progress)
                    soak.kills.append({**kill, "minute": (time.time() - soak.started) / 60})
                    next_kill += kill_every_s
            load.stop()
            load.join(60)
            progress(f"soak: load stopped after {load.done} experiments; draining")
            with Experiments(run_cfg) as exps:
                pending = [r[0] for r in query(cfg, "SELECT experiment_id FROM experiments WHERE experiment_id "
                                                    "LIKE %s AND state IN ('QUEUED', 'RUNNING')",
                                               (scratch.prefix + "%",))]
                exps.wait(pending, timeout_s=drain_s, poll_s=1.0)
            cluster.down(cfg)  # a quiescent store: the leader's gc would delete under the verifier's reads
            for kill in soak.kills:  # recorded long ago, if ever (a term killed before its first advance)
                kill["phases"] = recorded_phases(cfg, kill["epoch"], timeout_s=0.5)
            ready, rescans = full_rescan(cfg)
            counts = account(cfg, scratch.prefix, load.ids, archive_dir)
            archived_mib = _du_mib(archive_dir)
            report = check(cfg, Scope(since=soak.started - 1))
        finally:
            cluster.down(cfg)
            shutil.rmtree(archive_dir, ignore_errors=True)
    rows = soak.rows
    programs = sorted({name for r in rows for name in r.rss_mib})
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started_at)),
        "minutes": minutes, "tasks": tasks, "workers": workers, "capacity": capacity, "rate": rate,
        "retention_s": retention_s, "kill_every_s": kill_every_s, "submitted": load.done,
        "submit_errors": load.errors, "kills": soak.kills, "rows": [vars(r) for r in rows], "accounting": counts,
        "violations": len(report.violations), "double_advanced": len(report.of_kinds(EXACTLY_ONCE_KINDS)),
        "violation_kinds": dict(Counter(v.kind for v in report.violations)),
        "growth_per_hour": {
            **{f"rss {p}": growth_per_hour(rows, _rss_of(p)) for p in programs},
            "neo4j store": growth_per_hour(rows, lambda r: r.neo4j_mib),
            "mariadb datadir": growth_per_hour(rows, lambda r: r.mariadb_mib),
            "mariadb tables": growth_per_hour(rows, lambda r: r.tables_mib),
            "p99 ms": growth_per_hour(rows, lambda r: r.p99_ms),
        },
        "kill_minutes": [k["minute"] for k in soak.kills], "archive_mib": archived_mib,
        "rescan_end": {"ready": ready, "seconds": min(rescans)},
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    """A PNG of the rows: RSS per program, store sizes, throughput and p99, queue depths, against minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    minutes = [r["minute"] for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    rss_ax, store_ax, rate_ax, queue_ax = axes.flat
    for program in sorted({p for r in rows for p in r["rss_mib"]}):
        rss_ax.plot(minutes, [r["rss_mib"].get(program, float("nan")) for r in rows], label=program)
    rss_ax.set_title("RSS (MiB)")
    rss_ax.legend(fontsize=6, ncol=2)
    for key, label in (("neo4j_mib", "neo4j store"), ("mariadb_mib", "mariadb datadir"),
                       ("tables_mib", "mariadb tables")):
        store_ax.plot(minutes, [r[key] for r in rows], label=label)
    store_ax.set_title("store sizes (MiB)")
    store_ax.legend(fontsize=7)
    rate_ax.plot(minutes, [r["advancements_per_s"] for r in rows], label="advancements/s")
    rate_ax.set_title("advancements/s and p99 advancement latency")
    p99_ax = rate_ax.twinx()
    p99_ax.plot(minutes, [r["p99_ms"] for r in rows], color="tab:red", label="p99 ms")
    p99_ax.set_ylabel("p99 ms")
    for kill in result["kill_minutes"]:
        for ax in axes.flat:
            ax.axvline(kill, color="grey", linewidth=0.5, linestyle=":")
    for queue in sorted({q for r in rows for q in r["queues"]}):
        queue_ax.plot(minutes, [r["queues"].get(queue, 0) for r in rows], label=queue)
    queue_ax.set_title("queue depths (messages ready)")
    queue_ax.legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("minutes (dotted: leader SIGKILL)")
    fig.suptitle(f"haorch bench soak {result['when']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def render(result: dict[str, Any]) -> str:
    """A Markdown section: the table printed to the terminal and appended to docs/BENCHMARKS.md."""
    rows = result["rows"]
    programs = sorted({p for r in rows for p in r["rss_mib"]})
    nodes = [p for p in programs if p.startswith(("node-", "worker-"))]
    services = [p for p in programs if p not in nodes]
    capacity = (f"capacity measured first: {result['capacity']:.0f} advancements/s; " if result["capacity"] else "")
    lines = [f"## Soak — {result['when']}", "",
             f"`haorch bench soak --minutes {result['minutes']:g}`: 3 nodes, {result['workers']} workers, {capacity}"
             f"load {result['rate']:.0f} advancements/s ({result['tasks']}-task noop chains), leader SIGKILL every "
             f"{result['kill_every_s']:g} s ({len(result['kills'])} kills), retention {result['retention_s']:g} s "
             f"(type `soak`), archive on ({result['archive_mib']:.0f} MiB of jsonl.gz at the end, then deleted).",
             "",
             "| minute | adv/s | p99 ms | stored exps | neo4j MiB | mariadb MiB | tables MiB | requests | responses "
             "| nodes+workers RSS MiB | services RSS MiB |",
             "| ---: " * 11 + "|"]
    for r in rows:
        queues = r["queues"]
        rss = r["rss_mib"]
        lines.append(
            f"| {r['minute']:.1f} | {r['advancements_per_s']:.0f} | {r['p99_ms']:.0f} | {r['stored']} | "
            f"{r['neo4j_mib']:.0f} | {r['mariadb_mib']:.0f} | {r['tables_mib']:.0f} | "
            f"{queues.get('haorch.requests', 0)} | {queues.get('haorch.responses', 0)} | "
            f"{' '.join(f'{rss.get(p, 0):.0f}' for p in nodes)} | "
            f"{' '.join(f'{rss.get(p, 0):.0f}' for p in services)} |")
    counts = result["accounting"]
    growth = result["growth_per_hour"]
    lines += ["", f"RSS columns: {', '.join(nodes)} | {', '.join(services)}.", "",
              f"- submitted {result['submitted']} experiments ({result['submit_errors']} submit attempts retried); "
              f"COMPLETED and still stored {counts['stored_completed']}, COMPLETED and archived+deleted by "
              f"retention {counts['archived_completed']}, other state {counts['other_state']}, "
              f"**lost {counts['lost']}**; verifier over what remains (cluster stopped): {result['violations']} "
              f"violations {result.get('violation_kinds') or ''} ({result['double_advanced']} double advancements)",
              "- leader kills (SIGKILL → next leader acting): "
              + ", ".join(f"{k['acting_after_s'] * 1000:.0f} ms" for k in result["kills"]),
              "- each takeover's rescan phase (first page) / failover total as the new leader recorded them: "
              + ", ".join(f"{k['phases'].get('rescan', float('nan')) * 1000:.0f} / "
                          f"{k['phases'].get('total', float('nan')) * 1000:.0f} ms" for k in result["kills"]),
              f"- full rescan at the end (every ready task, page by page, cluster stopped, best of 3): "
              f"{result['rescan_end']['ready']} ready tasks in {result['rescan_end']['seconds'] * 1000:.0f} ms",
              "- growth per hour after warm-up (least squares over the last two thirds): "
              + "; ".join(f"{name} {value:+.1f}" for name, value in growth.items() if value == value)
              + " (MiB/h; p99 in ms/h)",
              f"- plot: `{result.get('png', '')}`", ""]
    return "\n".join(lines)

