"""``haorch bench failover``: kill -9 the leader under steady load, at two session timeouts in one run.

Per kill, measured from the stores (not from client polling): failover = the SIGKILL → the new epoch's first
SUCCEEDED transition (its first DAG advancement). The phase breakdown is what the new leader recorded in
``leader_terms.phases`` (detect = the old leader's last sign of life → this node won the lock; elect = won → new
epoch taken; then fence, rescan, redispatch, first_advance). Also: SIGTERM handover (signal → the next epoch's
election) and the time of one takeover rescan over 10,000 pre-submitted experiments (~40,000 unflagged task
nodes). After the load: every experiment terminal (no lost work) and each task advanced exactly once
(:mod:`node.verify`).

Every experiment the benchmark creates has an id of its own (``bench-failover-...``, ``bench-rescan-...``) and is
deleted from both stores when its part ends, also on an error or Ctrl-C (:mod:`bench.scratch`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from bench.probes import first_success_at, query
from bench.scratch import Scratch
from bench.throughput import _pct
from node import cluster
from node.config import Config, with_overrides
from node.experiments import Experiments
from node.load import SteadyLoad
from node.model.states import TERMINAL_EXPERIMENT_STATES, ExperimentState
from node.runtime.process import wait_gone
from node.stores.connect import neo4j_driver
from node.stores.dags import DagStore
from node.verify import EXACTLY_ONCE_KINDS, Scope, check

PHASES = ("detect", "elect", "fence", "rescan", "redispatch", "first_advance")

Progress = Callable[[str], None]


def recorded_phases(cfg: Config, epoch: int, timeout_s: float = 5.0) -> dict[str, float]:
    """The failover phases (seconds) the leader of ``epoch`` recorded in ``leader_terms`` (once it advanced: see
    node/leader/term.py's PhaseClock), waiting up to ``timeout_s`` for them; {} if none came."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = query(cfg, "SELECT phases FROM leader_terms WHERE epoch = %s", (epoch,))
        if rows and rows[0][0]:
            return json.loads(rows[0][0])
        time.sleep(0.05)
    return {}


def _kill(run_cfg: Config, k: int, kills: int, progress: Progress) -> dict[str, Any]:
    """SIGKILL the leader, measure until the new one's first advancement, restart the killed node."""
    timeout_s = run_cfg.zk_session_timeout_s + 30
    old = cluster.wait_for_leader(run_cfg, 30)
    victim = int(old["node_id"].split("-")[1])
    killed = cluster.kill_leader(run_cfg, "KILL")
    new = cluster.wait_for_leader(run_cfg, timeout_s, newer_than=old["epoch"])
    first = first_success_at(run_cfg, new["epoch"], timeout_s)
    phases = recorded_phases(run_cfg, new["epoch"])
    total = (first - killed["at"]) if first else float("nan")
    progress(f"timeout {run_cfg.zk_session_timeout_s:g}s beacon {'on' if run_cfg.leader_beacon else 'off'} kill "
             f"{k + 1}/{kills}: {old['node_id']} -> {new['node_id']} in {total * 1000:.0f} ms")
    wait_gone(killed["pid"], 10.0)  # a node still exiting would look alive: start_node would skip it
    cluster.start_node(run_cfg, victim)
    time.sleep(1.0)
    return {"kill": k + 1, "from": old["node_id"], "to": new["node_id"], "epoch": new["epoch"], "total_s": total,
            "phases": phases}


def kill_series(cfg: Config, session_timeout_s: float, kills: int, progress: Progress,
                beacon: bool = False) -> dict[str, Any]:
    """``kills`` SIGKILLs of the leader under steady load; the killed node is restarted each time. The cluster is
    stopped and the load's experiments (``bench-failover-...``) deleted afterwards, whatever happens."""
    run_cfg = with_overrides(cfg, zk_session_timeout_s=session_timeout_s, leader_beacon=beacon)
    cluster.down(cfg)
    with Scratch(cfg, f"bench-failover-{session_timeout_s:g}-{int(beacon)}") as scratch:
        try:
            cluster.up(run_cfg, nodes=3, workers=2)
            load = SteadyLoad(run_cfg, scratch.prefix).start()
            try:
                time.sleep(2.0)
                samples = [_kill(run_cfg, k, kills, progress) for k in range(kills)]
            finally:
                load.stop()
            with Experiments(cfg) as exps:
                rows = exps.wait(load.ids, timeout_s=120, poll_s=0.5)
            report = check(cfg, Scope(experiment_ids=load.ids))
        finally:
            cluster.down(cfg)
    lost = sum(r["state"] not in TERMINAL_EXPERIMENT_STATES for r in rows)
    doubles = len(report.of_kinds(EXACTLY_ONCE_KINDS))
    not_completed = sum(r["state"] != ExperimentState.COMPLETED for r in rows)
    totals = [s["total_s"] for s in samples if s["total_s"] == s["total_s"]]
    return {"session_timeout_s": session_timeout_s, "beacon": beacon, "kills": kills, "samples": samples,
            "p50_s": _pct(totals, 0.5), "p99_s": _pct(totals, 0.99), "max_s": max(totals, default=float("nan")),
            "phase_p50_s": {p: _pct([s["phases"][p] for s in samples if p in s["phases"]], 0.5) for p in PHASES},
            "experiments": len(rows), "lost": lost, "double_advanced": int(doubles), "not_completed": not_completed}


def handovers(cfg: Config, count: int, progress: Progress) -> list[float]:
    """SIGTERM the leader ``count`` times: seconds from the signal to the next epoch's election."""
    cluster.down(cfg)
    cluster.up(cfg, nodes=3, workers=1)
    times = []
    for _ in range(count):
        old = cluster.wait_for_leader(cfg, 30)
        signalled = cluster.kill_leader(cfg, "TERM")
        new = cluster.wait_for_leader(cfg, 30, newer_than=old["epoch"])
        elected = query(cfg, "SELECT elected_at FROM leader_terms WHERE epoch = %s", (new["epoch"],))
        at = float(elected[0][0]) if elected else time.time()
        times.append(at - signalled["at"])
        progress(f"SIGTERM handover {old['node_id']} -> {new['node_id']} in {times[-1] * 1000:.0f} ms")
        wait_gone(signalled["pid"], 20.0)
        cluster.start_node(cfg, int(old["node_id"].split("-")[1]))
        time.sleep(1.0)
    cluster.down(cfg)
    return times


def ready_count(dags: DagStore, page: int = 5000) -> int:
    """Every ready task, read page by page as a takeover reads them (epoch -1: none is skipped as already
    dispatched by the reading epoch)."""
    found, after = 0, ""
    while rows := dags.rescan(epoch=-1, after=after, limit=page):
        found += len(rows)
        after = rows[-1]["key"]
    return found


def full_rescan(cfg: Config, repeats: int = 3) -> tuple[int, list[float]]:
    """Read every ready task of the stores as a takeover does, ``repeats`` times: (how many, seconds of each)."""
    seconds, found = [], 0
    with neo4j_driver(cfg) as driver:
        dags = DagStore(driver)
        for _ in range(repeats):
            started = time.perf_counter()
            found = ready_count(dags)
            seconds.append(time.perf_counter() - started)
    return found, seconds


def rescan_time(cfg: Config, experiments: int, progress: Progress, repeats: int = 3) -> dict[str, float]:
    """Time DagStore.rescan over ``experiments`` pre-submitted chains (nothing running); the chains
    (``bench-rescan-...``) are deleted afterwards, whatever happens: a later leader must not dispatch them."""
    cluster.down(cfg)
    with Scratch(cfg, "bench-rescan") as scratch:
        with Experiments(cfg) as exps:
            exps.install_builtins()
            for start in range(0, experiments, 1000):
                exps.submit_many("chain", [f"{scratch.prefix}{i:06d}"
                                           for i in range(start, min(experiments, start + 1000))], notify=False)
                progress(f"rescan: {min(experiments, start + 1000)}/{experiments} experiments submitted")
        with neo4j_driver(cfg) as driver:
            unflagged = driver.execute_query("MATCH (t:Task) WHERE t.executed = false RETURN count(t) AS n")[0][0]["n"]
        found, seconds = full_rescan(cfg, repeats)
        progress(f"rescan: {found} ready of {unflagged} unflagged tasks in {min(seconds) * 1000:.0f} ms (best)")
    return {"experiments": experiments, "unflagged_tasks": unflagged, "ready_found": found,
            "best_s": min(seconds), "p50_s": _pct(seconds, 0.5)}


def run(cfg: Config, kills: int = 20, timeouts: tuple[float, ...] = (0.5, 2.0), handover_count: int = 5,
        rescan_experiments: int = 10000, progress: Progress = lambda _m: None) -> dict[str, Any]:
    """Each session timeout with the beacon off (session expiry alone), then the longest with it on."""
    started = time.time()
    series = [kill_series(cfg, t, kills, progress) for t in timeouts]
    series.append(kill_series(cfg, max(timeouts), kills, progress, beacon=True))
    term = handovers(cfg, handover_count, progress)
    rescan = rescan_time(cfg, rescan_experiments, progress)
    return {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "series": series,
            "handover_s": term, "rescan": rescan}


def render(result: dict[str, Any]) -> str:
    lines = [f"### Failover — {result['when']}", "",
             "| session timeout | beacon | kills | failover p50 | p99 | max | target p99 | detect p50 | elect | "
             "fence | rescan | redispatch | first advance | experiments | lost | double-advanced |",
             "| ---: | --- " + "| ---: " * 14 + "|"]
    for s in result["series"]:
        ph = s["phase_p50_s"]
        lines.append(
            f"| {s['session_timeout_s']:g} s | {'on' if s['beacon'] else 'off'} | {s['kills']} | "
            f"{s['p50_s'] * 1000:.0f} ms | {s['p99_s'] * 1000:.0f} ms | {s['max_s'] * 1000:.0f} ms | "
            f"≤ {(s['session_timeout_s'] + 0.5) * 1000:.0f} ms | "
            + " | ".join(f"{ph[p] * 1000:.0f} ms" for p in PHASES)
            + f" | {s['experiments']} | {s['lost']} | {s['double_advanced']} |")
    handover = result["handover_s"]
    rescan = result["rescan"]
    lines += ["", f"- SIGTERM handover (signal → next epoch elected), {len(handover)} runs: "
                  f"p50 {_pct(handover, 0.5) * 1000:.0f} ms, max {max(handover) * 1000:.0f} ms (target ≤ 500 ms)",
              f"- takeover rescan over {rescan['experiments']} experiments ({rescan['unflagged_tasks']} unflagged "
              f"task nodes, {rescan['ready_found']} ready): best {rescan['best_s'] * 1000:.0f} ms, "
              f"p50 {rescan['p50_s'] * 1000:.0f} ms (target ≤ 2 s)",
              "- failover = SIGKILL → first SUCCEEDED transition of the new epoch; phases are the new leader's own "
              "record (p50): detect = old leader's last sign of life → lock won, elect = lock won → epoch taken. "
              "Beacon off: only ZooKeeper session expiry reveals the death; on: the leader's beacon socket does.", ""]
    return "\n".join(lines)
