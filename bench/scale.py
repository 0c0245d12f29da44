"""``haorch bench scale``: two scale points of a long-running service, on the stack that is up.

1. **takeover with experiments in flight**: ``in_flight`` one-task experiments created directly in the stores
   (:func:`bench.takeover.create_backlog`), a 3-node cluster started with NO worker, so that the first leader
   dispatches every task and none is answered: all of them are in flight. Then:

   - the full rescan a takeover reads (every unflagged ready task, page by page, as :meth:`DagStore.rescan`
     gives them; best of three);
   - the leader is SIGKILLed; the next one's takeover phases as it recorded them (``leader_terms``): detect, elect,
     fence, rescan and redispatch of its first page, first advance, and its whole paged takeover (its log line);
   - workers start; every experiment must complete.

2. **a burst of API submissions**: ``burst`` single-experiment POSTs from ``clients`` threads, as fast as they go,
   against one node whose ``max_in_flight`` is ``burst_limit`` (below the burst, so backpressure must answer):
   each 429 is honoured (its Retry-After) and the same id posted again. Reported: the latency of every request
   (p50/p99 of 201s and of 429s), how many 429s, the time until all were accepted, and that all complete.

What a part creates has ids of its own and is deleted from both stores when the part ends, also on an error or
Ctrl-C (:mod:`bench.scratch`); the cluster is stopped first. The third scale point, the stores after a million
experiments went through with retention on, is ``haorch bench soak`` (its table and sizes).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from bench import takeover as tk
from bench.failover import full_rescan, recorded_phases
from bench.report import percentile
from bench.scratch import Scratch
from node import cluster
from node.access.tokens import Tokens
from node.config import Config, with_overrides
from node.experiments import Experiments
from node.runtime.process import wait_gone
from node.stores.connect import neo4j_driver
from node.stores.records import Records

Progress = Callable[[str], None]
PHASES = ("detect", "elect", "fence", "rescan", "redispatch", "first_advance", "total")


def _dispatched(cfg: Config, prefix: str) -> int:
    with neo4j_driver(cfg) as driver:
        records, _, _ = driver.execute_query(
            "MATCH (t:Task) WHERE t.experiment_id STARTS WITH $p AND t.status = 'DISPATCHED' RETURN count(t) AS n",
            p=prefix)
    return int(records[0]["n"])


def takeover_in_flight(cfg: Config, in_flight: int, workers: int, progress: Progress,
                       timeout_s: float = 1800.0) -> dict[str, Any]:
    """Part 1 (see the module docstring); the cluster is stopped and the experiments deleted at the end."""
    cluster.down(cfg)
    with Scratch(cfg, "bench-inflight") as scratch:
        try:
            started = time.perf_counter()
            ids = tk.create_backlog(cfg, scratch.prefix, in_flight, progress)
            created_s = time.perf_counter() - started
            cluster.up(cfg, nodes=3, workers=0)
            deadline = time.monotonic() + timeout_s
            while (dispatched := _dispatched(cfg, scratch.prefix)) < in_flight:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {dispatched} of {in_flight} tasks dispatched in {timeout_s:g} s")
                progress(f"in flight: {dispatched}/{in_flight} dispatched")
                time.sleep(5.0)
            found, rescan_s = full_rescan(cfg)
            progress(f"in flight: full rescan found {found} ready tasks in {min(rescan_s):.2f} s (best)")
            old = cluster.wait_for_leader(cfg, 30)
            offsets = tk.log_offsets(cfg, 3)
            killed = cluster.kill_leader(cfg, "KILL")
            new = cluster.wait_for_leader(cfg, cfg.zk_session_timeout_s + 30, newer_than=old["epoch"])
            wait_gone(killed["pid"], 10.0)
            cluster.start_node(cfg, int(old["node_id"].split("-")[1]))
            for n in range(1, workers + 1):
                cluster.start_worker(cfg, n, cfg.worker_concurrency)
            phases = recorded_phases(cfg, new["epoch"], timeout_s=60.0)
            with Experiments(cfg) as exps:
                rows = exps.wait(ids, timeout_s=timeout_s, poll_s=2.0)
            completed_s = time.time() - killed["at"]
            log = tk.leader_log(cfg, new["node_id"], offsets)
            match = tk.TAKEOVER_LINE.search(log)
        finally:
            cluster.down(cfg)
    takeover = ({"pages": int(match.group(2)), "rescanned": int(match.group(3)),
                 "redispatched": int(match.group(4)), "seconds": float(match.group(6))} if match else None)
    progress(f"in flight: {old['node_id']} killed; {new['node_id']} phases {phases}; all completed "
             f"{completed_s:.0f} s after the kill")
    return {"in_flight": in_flight, "created_s": created_s, "ready_found": found, "rescan_best_s": min(rescan_s),
            "rescan_p50_s": percentile(rescan_s, 0.5), "phases": phases, "takeover": takeover,
            "completed": sum(r["state"] == "COMPLETED" for r in rows), "completed_after_kill_s": completed_s,
            "killed": old["node_id"], "new_leader": new["node_id"]}


def api_burst(cfg: Config, burst: int, clients: int, limit: int, workers: int,
              progress: Progress) -> dict[str, Any]:
    """Part 2 (see the module docstring)."""
    run_cfg = with_overrides(cfg, max_in_flight=limit)
    cluster.down(cfg)
    records = Records(cfg)
    tokens = Tokens(records)
    name = f"bench-burst-{uuid.uuid4().hex[:6]}"
    token = tokens.create("operator", name, "bench")["token"]
    with Scratch(cfg, "bench-burst") as scratch:
        try:
            with Experiments(cfg) as exps:
                exps.install_builtins()
            cluster.up(run_cfg, nodes=1, workers=workers)
            ids = [f"{scratch.prefix}{i:05d}" for i in range(burst)]
            url = f"{cfg.node_url(1)}/api/experiments"
            accepted: list[float] = []
            refused: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()

            def submit(part: list[str]) -> None:
                ok, busy = [], []
                with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
                    for experiment_id in part:
                        for _ in range(10_000):
                            t0 = time.perf_counter()
                            response = client.post(url, json={"type": "chain", "experiment_id": experiment_id})
                            took = time.perf_counter() - t0
                            if response.status_code == 201:
                                ok.append(took)
                                break
                            if response.status_code != 429:
                                with lock:
                                    errors.append(f"{response.status_code} {response.text[:120]}")
                                break
                            busy.append(took)
                            time.sleep(float(response.headers.get("Retry-After", "1")))
                with lock:
                    accepted.extend(ok)
                    refused.extend(busy)

            progress(f"burst: {burst} POSTs from {clients} clients, max_in_flight {limit}")
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                for future in [pool.submit(submit, ids[k::clients]) for k in range(clients)]:
                    future.result()
            all_accepted_s = time.perf_counter() - started
            with Experiments(cfg) as exps:
                rows = exps.wait(ids[:len(accepted)] if not errors else [], timeout_s=900, poll_s=2.0)
            all_completed_s = time.perf_counter() - started
        finally:
            cluster.down(cfg)
            tokens.revoke(name, "bench")
            records.close()
    progress(f"burst: {len(accepted)} accepted in {all_accepted_s:.1f} s, {len(refused)} answers 429")
    return {"burst": burst, "clients": clients, "max_in_flight": limit, "accepted": len(accepted),
            "refused_429": len(refused), "errors": errors[:5], "error_count": len(errors),
            "accepted_p50_ms": percentile(accepted, 0.5) * 1000 if accepted else None,
            "accepted_p99_ms": percentile(accepted, 0.99) * 1000 if accepted else None,
            "refused_p50_ms": percentile(refused, 0.5) * 1000 if refused else None,
            "refused_p99_ms": percentile(refused, 0.99) * 1000 if refused else None,
            "all_accepted_s": all_accepted_s, "all_completed_s": all_completed_s,
            "completed": sum(r["state"] == "COMPLETED" for r in rows)}


def run(cfg: Config, in_flight: int = 100_000, burst: int = 10_000, clients: int = 32, burst_limit: int = 2000,
        workers: int = 2, progress: Progress = lambda _m: None) -> dict[str, Any]:
    started = time.time()
    return {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            "takeover": takeover_in_flight(cfg, in_flight, workers, progress),
            "burst": api_burst(cfg, burst, clients, burst_limit, workers, progress)}


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def render(result: dict[str, Any]) -> str:
    t, b = result["takeover"], result["burst"]
    ph = t["phases"]
    whole = t["takeover"]
    lines = [f"## Scale points — {result['when']}", "",
             f"**Takeover with {t['in_flight']:,} experiments in flight** (one task each, all dispatched, no worker "
             f"running; created in the stores in {t['created_s']:.0f} s):", "",
             "| full rescan (best of 3) | detect | elect | fence | rescan (1st page) | redispatch (1st page) "
             "| first advance | failover total | whole paged takeover | completed |",
             "| ---: " * 10 + "|",
             f"| {t['rescan_best_s'] * 1000:.0f} ms ({t['ready_found']:,} tasks) | "
             + " | ".join(f"{ph[p] * 1000:.0f} ms" if p in ph else "–" for p in PHASES)
             + f" | {(str(whole['seconds']) + ' s, ' + str(whole['pages']) + ' pages') if whole else '–'} "
             f"| {t['completed']:,}/{t['in_flight']:,} |", "",
             f"- {t['killed']} SIGKILLed once every task was dispatched; {t['new_leader']} took over; workers started "
             f"after the kill; all completed {t['completed_after_kill_s']:.0f} s after it. Goal: rescan ≤ 2 s.", "",
             f"**Burst of {b['burst']:,} API submissions** (`POST /api/experiments`, {b['clients']} client threads, "
             f"1 node, `max_in_flight` {b['max_in_flight']:,}; a 429 is honoured with its Retry-After, then the same "
             "id is posted again):", "",
             "| accepted | 201 p50 ms | 201 p99 ms | 429 answers | 429 p50 ms | 429 p99 ms | all accepted after "
             "| all completed after | completed | other errors |",
             "| ---: " * 10 + "|",
             f"| {b['accepted']:,} | {_ms(b['accepted_p50_ms'])} | {_ms(b['accepted_p99_ms'])} | {b['refused_429']:,} "
             f"| {_ms(b['refused_p50_ms'])} | {_ms(b['refused_p99_ms'])} | {b['all_accepted_s']:.1f} s "
             f"| {b['all_completed_s']:.1f} s | {b['completed']:,} | {b['error_count']} |", ""]
    return "\n".join(lines)
