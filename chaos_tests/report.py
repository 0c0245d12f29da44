"""Writes a chaos run's result as ``result.json``, ``report.md`` and ``timeline.png`` into a report dir.

    paths = write(result, "docs/chaos")      # {"json": ..., "markdown": ..., "png": ...}

An adversarial run's report adds its evidence (``result["adversarial"]``): attempts executed twice (marker
files), successes without a marker, poison dead-lettered, processes that exited unexpectedly, the bursts. An hpc
run's adds SLURM's (``result["hpc"]``): jobs per submit task from sacct, jobs adopted by a later attempt, the
staging journals, the jobs queued and running at each fault, and the HPC check (node/verify/hpc.py).
``combined`` renders several runs as the sections of one document (``docs/CHAOS.md``)::

    python -m chaos_tests.report docs/CHAOS.md docs/chaos docs/chaos-adversarial

The timeline (matplotlib, Agg backend) has two panels over the seconds since the run started: the role of each
node as coloured bands (leader coloured by epoch, standby grey, down or unanswered red) with every fault as a
shaded span (inject → undo) and its failover (fault → first SUCCEEDED transition of the next epoch) as a black
bar; and the throughput per time bucket (task successes, finished experiments, submissions) with the faults
marked again.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from chaos_tests.faults import LEADER_KINDS as LEADER_FAULTS

EPOCH_COLOURS = (0, 1, 2, 4, 5, 6, 8, 9)
#: short labels of the faults on the timeline
CODES = {"kill-leader": "K", "stop-leader": "T", "freeze-leader": "F", "partition-leader": "P", "kill-worker": "W",
         "zk-member": "Z1", "zk-quorum": "ZQ", "restart-rabbitmq": "Rmq", "restart-mariadb": "Rdb",
         "restart-neo4j": "Rneo", "backlog-kill-leader": "BK", "poison-kill-leader": "PK", "freeze-publish": "FP",
         "restart-slurmctld": "S"}


ADVERSARIAL_NOTE = (
    "Adversarial evidence, independent of the ledger: every task ran the `mark` executor, which creates "
    "`<experiment>.<task>.<attempt>` exclusively after its work (a `.twice` file if that attempt had run before), so "
    "an attempt executed twice leaves two files whatever the ledger recorded, and a SUCCEEDED transition without "
    "its marker is a success nobody executed. BK = a burst of more ready tasks than all workers prefetch, the "
    "leader killed while it waits in `haorch.requests`; PK = poison on the responses, submissions and requests "
    "queues just before and after a leader kill (each must reach `haorch.dead` with a reason, and no process may "
    "exit that a fault did not kill); FP = the leader stopped at the failpoint `leader.before_publish` (after its "
    "fenced Neo4j write, before publishing what it dispatched) until a standby's new epoch advanced a DAG, then "
    "continued: its stale requests (its last batch's dispatches) reach the workers, and an attempt whose ledger row "
    "carries the old epoch was executed by the stale copy (it won the attempt's claim; the other copy was not run).")


HPC_NOTE = (
    "HPC evidence, read from the site after the run: SLURM's accounting (sacct, merged with squeue for jobs "
    "slurmctld still holds) lists every job by the name haorch gives it (`haorch.<experiment>.<task>.a<attempt>`), "
    "so the jobs of each submit task of every attempt are counted whatever the ledger says; a second job is a "
    "violation unless every earlier one failed, and a COMPLETED experiment needs exactly one COMPLETED job. Both "
    "stages append each placement to a journal before renaming the verified temporary file into place, with that "
    "file's inode: a target staged twice leaves a journaled inode that is neither the target's nor a leftover "
    "temporary file's. Every fault waited until the run had jobs pending and running in SLURM (counts in the faults "
    "table: P pending, R running array elements); `@sbatch` = the worker stopped by the failpoint "
    "`worker.after_sbatch` right after sbatch answered, then SIGKILLed (its attempt's job exists, its answer never "
    "came); restart-slurmctld (S) = SIGTERM, exited, started again after 2 s, `scontrol ping` UP.")


def _ms(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * 1000:.0f} ms"


def markdown(result: dict[str, Any], timeline: str = "timeline.png") -> str:
    exp = result["experiments"]
    fo = result["failover"]
    verdict = "OK" if result["ok"] else "FAILED"
    lines = [f"# Chaos run `{result['scenario']}`: {verdict}", "",
             f"Seed {result['seed']}, {len(result['faults'])} fault(s), {exp['submitted']} experiments at "
             f"{result['rate']:.1f}/s, {result['nodes']} nodes, {result['workers']} workers, ZooKeeper session "
             f"{result['session_timeout_s']:g} s; {result['duration_s']:.0f} s in all. Ids `{result['prefix']}*`.", "",
             "| result | value |", "| --- | --- |",
             f"| invariant violations | {result['violations']} |",
             f"| experiments completed | {exp['completed']} / {exp['submitted']} (states: "
             + ", ".join(f"{k} {v}" for k, v in sorted(exp["states"].items())) + ") |",
             f"| not terminal / missing | {exp['not_terminal']} / {exp['missing']} |",
             f"| attempts executed more than once (keys / extra rows) / replays | {result['duplicate_executions']} / "
             f"{result['duplicate_rows']} / {result['replays']} |",
             f"| leader failovers measured | {fo['count']} |",
             f"| failover p50 / p99 / max | {_ms(fo['p50_s'])} / {_ms(fo['p99_s'])} / {_ms(fo['max_s'])} |",
             f"| frozen processes / chaos iptables rules left | {len(result['frozen_left'])} / "
             f"{result['rules_left']} |",
             *_adversarial_rows(result.get("adversarial")),
             *_hpc_rows(result.get("hpc")),
             ""]
    if fo["by_fault"]:
        lines += ["| leader fault | count | failover p50 | max |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {k} | {v['count']} | {_ms(v['p50_s'])} | {_ms(v['max_s'])} |" for k, v in fo["by_fault"].items()]
        lines.append("")
    if result.get("stalls"):
        lines += ["| fault | count | stall p50 | stall p99 | stall max | after undo: p50 | max | "
                  "cut-off leader stepped down after (max) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {k} | {v['count']} | {_ms(v['p50_s'])} | {_ms(v['p99_s'])} | {_ms(v['max_s'])} | "
                  f"{_ms(v['repair_p50_s'])} | {_ms(v['repair_max_s'])} | {_ms(v.get('stepped_down_max_s'))} |"
                  for k, v in result["stalls"].items()]
        lines += ["", "Stall = the longest pause between task successes from the fault until its undo (advancing "
                      "again within N s means stall ≤ N); after undo = the same for the 30 s after the undo (or until "
                      "the next fault). Stepped down = an isolated leader, watched from inside its own host, stopped "
                      "reporting itself leader.", ""]
    lines += ["## Faults", "",
              "| # | fault | detail | at (s) | held (s) | new leader | elected after | failover | stall |",
              "| ---: | --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    t0 = result["started_at"]
    for rec in result["faults"]:
        at = rec.get("injected_at")
        held = (rec["undone_at"] - at) if at and rec.get("undone_at") else None
        detail = rec.get("victim") or ",".join(rec.get("services", [])) or ""
        detail += _fault_evidence(rec)
        if rec.get("error"):
            detail += f" error: {rec['error']}"
        leader = (rec.get("next_leader") or "-") + (f" e{rec['next_epoch']}" if rec.get("next_epoch") else "")
        lines.append(f"| {rec['n']} | {rec['fault']} | {detail} | {(at - t0) if at else float('nan'):.1f} | "
                     f"{held if held is not None else float('nan'):.1f} | {leader} | {_ms(rec.get('elected_s'))} | "
                     f"{_ms(rec.get('failover_s'))} | {_ms(rec.get('stall_s'))} |")
    if result["errors"]:
        lines += ["", "Errors during the run:", ""] + [f"- {e}" for e in result["errors"]]
    lines += ["", "Failover = fault injected → first SUCCEEDED transition of the next epoch (from the stores). "
                  "An attempt executed more than once is a violation (`double_execution`); a replay is a copy of an "
                  "ended attempt answered from the ledger without running it."]
    if result.get("adversarial"):
        lines += ["", ADVERSARIAL_NOTE]
    if result.get("hpc"):
        lines += ["", HPC_NOTE]
    lines += ["", f"![timeline]({timeline})", "", result["check_markdown"]]
    if result.get("hpc"):
        lines += ["", result["hpc"]["markdown"]]
    return "\n".join(lines).rstrip() + "\n"


def _adversarial_rows(adv: dict[str, Any] | None) -> list[str]:
    """The evidence rows of an adversarial run (none for the others)."""
    if adv is None:
        return []
    once, poison = adv["exactly_once"], adv["poison"]
    rows = [f"| workload | {', '.join(adv['types'])}, every task leaving a marker file; {adv['bursts']} burst(s) of "
            f"{adv['burst_experiments']} experiments |",
            f"| **attempts executed twice** (marker files) | {once['attempts_executed_twice']}"
            + (f" ({', '.join(once['twice_examples'][:3])} ...)" if once["twice_examples"] else "") + " |",
            f"| markers / SUCCEEDED transitions without a marker | {once['markers']} / "
            f"{once['succeeded_without_marker']} |",
            f"| freeze-publish: stale requests published / executed by their stale copy | "
            f"{adv.get('stale_requests', 0)} / {adv['stale_executions']} |",
            f"| processes exited that no fault killed | {', '.join(adv['unexpected_exits']) or 'none'} |"]
    if poison is not None:
        rows.append(f"| poison messages in haorch.dead (with a reason) | {poison['dead_lettered']} / {poison['sent']} "
                    f"({poison['dead_lettered'] - poison['without_reason']}) |")
    return rows


def _hpc_rows(hpc: dict[str, Any] | None) -> list[str]:
    """The evidence rows of an hpc run (none for the others)."""
    if hpc is None:
        return []
    per_task = ", ".join(f"{n} job(s): {c} task(s)" for n, c in hpc["jobs_per_task"].items()) or "-"
    faults = hpc["faults"]
    return [f"| workload | chaos-hpc: stage_in 3 files, an array job of 3 x 2 CPUs sleeping 2-5 s, slurm_monitor, "
            f"stage_out; {hpc['completed']} / {hpc['experiments']} COMPLETED |",
            f"| **SLURM jobs per submit task** (sacct) | {per_task} |",
            f"| jobs / in sacct / states | {hpc['jobs']} / {hpc['jobs_accounted']} / "
            + (", ".join(f"{k} {v}" for k, v in hpc["job_states"].items()) or "-") + " |",
            f"| submit tasks whose job a lost earlier attempt submitted (adopted) | {hpc['adopted']} |",
            f"| staging placements journaled / targets / interrupted before the rename / **staged twice** | "
            f"{hpc['placements']} / {hpc['targets']} / {hpc['not_placed']} / "
            f"{hpc['violations_by_kind'].get('staged_twice', 0)} |",
            f"| faults with jobs pending and running in SLURM | {faults['with_jobs_pending_and_running']} / "
            f"{faults['faults']} |",
            f"| worker kills at the failpoint after sbatch | {faults['worker_kills_at_failpoint']} / "
            f"{faults['worker_kills_armed']} armed |",
            f"| HPC violations (jobs, staging) | {len(hpc['violations'])} |"]


def _fault_evidence(rec: dict[str, Any]) -> str:
    """What an adversarial or hpc fault did beyond its victim, for the faults table."""
    if rec["fault"] == "backlog-kill-leader" and "burst_ready_tasks" in rec:
        return (f" (burst {rec['burst_ready_tasks']} ready > prefetch {rec['prefetch_total']}; "
                f"{rec.get('queued_at_kill', 0)} queued at the kill)")
    if rec["fault"] == "poison-kill-leader" and "poison" in rec:
        return f" ({rec['poison']} poison)"
    if rec["fault"] == "freeze-publish" and "stale_requests" in rec:
        return f" ({rec['stale_requests']} stale requests, {rec['stale_executions']} executed by them)"
    out = ""
    if rec.get("at_failpoint"):
        out += " @sbatch"
    elif rec.get("at"):
        out += " (failpoint not reached)"
    jobs = rec.get("jobs_at_fault")
    if isinstance(jobs, dict) and "error" not in jobs:
        out += f" (jobs P{jobs.get('PENDING', 0)} R{jobs.get('RUNNING', 0)})"
    if rec["fault"] == "restart-slurmctld" and "restart_s" in rec:
        out += f" (SIGTERM → exited {rec.get('stop_s', 0):.1f} s; start → ping UP {rec['restart_s']:.1f} s)"
    if rec.get("settle_s") is not None:  # a host fault: the clusters whole again this long after its undo
        out += f" (settled after {rec['settle_s']:.1f} s)"
    return out


def _demoted(markdown_text: str) -> str:
    """Every heading one level down (a run's report becomes a section)."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown_text.splitlines()) + "\n"


def combined(sections: list[tuple[dict[str, Any], str]]) -> str:
    """One document of several runs: each ``(result, timeline path relative to the document)`` a section."""
    verdict = "OK" if all(result["ok"] for result, _ in sections) else "FAILED"
    lines = [f"# Chaos campaigns: {verdict}", "",
             "Written by `make chaos`: each section is one `haorch chaos run` (its files in the directory of its "
             "timeline).", ""]
    lines += [f"- [`{result['scenario']}`](#chaos-run-{result['scenario']}-{'ok' if result['ok'] else 'failed'}): "
              f"{'OK' if result['ok'] else 'FAILED'}, {len(result['faults'])} faults, "
              f"{result['experiments']['submitted']} experiments" for result, _ in sections]
    out = "\n".join(lines) + "\n"
    for result, timeline in sections:
        out += "\n" + _demoted(markdown(result, timeline))
    return out


def _segments(samples: list[dict[str, Any]], node: str, t0: float) -> list[tuple[float, float, str, Any]]:
    """(start, end, role, epoch) runs of one node's sampled role (each sample lasts until the next one)."""
    out: list[tuple[float, float, str, Any]] = []
    for i, sample in enumerate(samples):
        info = sample["nodes"].get(node, {"role": "down", "epoch": None})
        start = sample["t"] - t0
        end = (samples[i + 1]["t"] - t0) if i + 1 < len(samples) else start
        key = (info["role"], info["epoch"] if info["role"] == "leader" else None)
        if out and (out[-1][2], out[-1][3]) == key and abs(out[-1][1] - start) < 1e-6:
            out[-1] = (out[-1][0], end, key[0], key[1])
        else:
            out.append((start, end, key[0], key[1]))
    return out


def timeline_png(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t0 = result["started_at"]
    samples = result["leader_timeline"]
    present = {rec["fault"] for rec in result["faults"]}
    nodes = sorted({n for s in samples for n in s["nodes"]}, key=lambda n: int(n.split("-")[1]))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(10.0, min(22.0, result["duration_s"] / 30)), 7.0),
                                   sharex=True, gridspec_kw={"height_ratios": [1.2, 1]})
    palette = plt.get_cmap("tab10")
    for row, node in enumerate(nodes):
        for start, end, role, epoch in _segments(samples, node, t0):
            if role == "leader":  # tab10 without its red and grey (those mean down and standby)
                rgba = palette(EPOCH_COLOURS[int(epoch or 0) % len(EPOCH_COLOURS)])
                color: str | tuple[float, float, float, float] = rgba
            elif role == "standby":
                color = "#d0d0d0"
            else:
                color = "#e05050"
            ax1.broken_barh([(start, end - start)], (row - 0.35, 0.7), facecolors=color, linewidth=0)
    ax1.set_yticks(range(len(nodes)), nodes)
    ax1.set_ylim(-0.8, len(nodes) - 0.2 + 0.6)
    ax1.set_title(f"chaos {result['scenario']} (seed {result['seed']}): leader per node, faults, failovers\n"
                  + "  ".join(f"{c} {k}" for k, c in CODES.items() if k in present), fontsize=9)
    many = len(result["faults"]) > 20
    top = len(nodes) - 0.2
    for rec in result["faults"]:
        at = rec.get("injected_at")
        if not at:
            continue
        start = at - t0
        end = (rec["undone_at"] - t0) if rec.get("undone_at") else start + 0.5
        color = "#ff9f1c" if rec["fault"] in LEADER_FAULTS else "#2ec4b6"
        for ax in (ax1, ax2):
            ax.axvspan(start, max(end, start + 0.1), color=color, alpha=0.25, linewidth=0)
            ax.axvline(start, color=color, linewidth=0.8)
        ax1.text(start, top + 0.05, CODES.get(rec["fault"], rec["fault"]), fontsize=6, va="bottom")
        if rec.get("failover_s") is not None:
            ax1.plot([start, start + rec["failover_s"]], [-0.6, -0.6], color="black", linewidth=2)
            if not many:
                ax1.text(start, -0.75, f"{rec['failover_s'] * 1000:.0f} ms", fontsize=6, va="top")
    ax1.legend(handles=[Patch(color=palette(1), label="leader (colour = epoch)"),
                        Patch(color="#d0d0d0", label="standby"),
                        Patch(color="#e05050", label="down / no answer"),
                        Patch(color="#ff9f1c", alpha=0.4, label="leader fault"),
                        Patch(color="#2ec4b6", alpha=0.4, label="other fault"),
                        Patch(color="black", label="failover")], fontsize=7, loc="upper right", ncols=6)
    tp = result["throughput"]
    bucket = tp["bucket_s"]
    xs = [i * bucket for i in range(len(tp["tasks_succeeded"]))]
    ax2.step(xs, [v / bucket for v in tp["tasks_succeeded"]], where="post", label="tasks succeeded /s")
    ax2.step(xs, [v / bucket for v in tp["experiments_finished"]], where="post", label="experiments finished /s")
    ax2.step(xs, [v / bucket for v in tp["submitted"]], where="post", label="submitted /s", alpha=0.6)
    ax2.set_xlabel("seconds since the run started")
    ax2.set_ylabel("per second")
    ax2.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result: dict[str, Any], directory: str | Path) -> dict[str, str]:
    """Write result.json, report.md and timeline.png into ``directory`` (created); returns their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "result.json"
    json_path.write_text(json.dumps(result, indent=1, default=str))
    md_path = out / "report.md"
    md_path.write_text(markdown(result))
    png_path = timeline_png(result, out / "timeline.png")
    return {"json": str(json_path), "markdown": str(md_path), "png": str(png_path)}


def main(argv: list[str]) -> int:
    """``python -m chaos_tests.report OUT DIR...``: the runs written into each DIR as sections of OUT."""
    if len(argv) < 2:
        sys.stderr.write("usage: python -m chaos_tests.report OUT.md REPORT_DIR...\n")
        return 2
    out = Path(argv[0])
    sections = []
    for directory in argv[1:]:
        result = json.loads((Path(directory) / "result.json").read_text())
        timeline = os.path.relpath(Path(directory) / "timeline.png", out.resolve().parent)
        sections.append((result, timeline))
    out.write_text(combined(sections))
    return 0 if all(result["ok"] for result, _ in sections) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
