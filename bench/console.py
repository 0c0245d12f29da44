"""``haorch bench console``: the web console and the API with ``experiments`` (100,000) experiments in the stores,
and the API's submit throughput against the hand-written handler it replaced, in one run.

1. **seed**: experiments ``bc-000000 …`` (four built-in types in turn, and one in ten of a type whose only task
   always fails) submitted in chunks of 1,000 to the running cluster, which runs them to the end; a rerun submits
   only the missing ones. Their completion rate is the cluster's, for comparison with the API's submit rate.
2. **read**: ``samples`` sequential requests of each kind, with a token (an admin's, created for the run and
   revoked after it): the API listing and the console's experiments page — first page, a page 50,000 rows deep
   (its cursor), filtered by state, by type, by id prefix — and one experiment (API status, console page with its
   Graphviz drawing: a different experiment each time, so no drawing comes from the cache). p50 and p99.
3. **submit**: ``submits`` single-experiment POSTs from ``clients`` threads (keep-alive where the server allows it)
   to each implementation served by a process of its own (``bench/api_server.py``), and 10 × ``submits``
   experiments in batches of 100 to the new one's ``POST /api/experiments/batch``, twice each, alternating;
   experiments/s and latency per request, and the ratios to the baseline.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import yaml

from bench.api_server import BASELINE_COMMIT
from bench.report import percentile
from node import cluster
from node.access.tokens import Tokens
from node.config import Config
from node.demo import _require_stack
from node.experiments import BUILTIN_TYPES, Experiments, encode_cursor
from node.stores.records import Records

Progress = Callable[[str], None]
PREFIX = "bc-"
CHUNK = 1000
FAIL_TYPE = "bench_console_fail"
WORKERS = 2
SEED_TIMEOUT_S = 3600.0
DEEP_ROW = 50_000
BATCH = 100  # experiments per request of the batched round
BATCHED = "new, batched"
BATCHED_FACTOR = 10  # a batched round submits this many times the experiments of a single-experiment round


def fail_template() -> dict[str, Any]:
    return {"type": FAIL_TYPE, "description": "one task that always fails (haorch bench console)",
            "tasks": [{"name": "doomed", "kind": "job_submission", "executor": "fail"}]}


def summary(latencies: list[float]) -> dict[str, float]:
    return {"n": len(latencies), "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1)}


def run(cfg: Config, experiments: int, samples: int, submits: int, clients: int,
        progress: Progress) -> dict[str, Any]:
    _require_stack(cfg)
    cluster.up(cfg, nodes=1, workers=WORKERS, progress=lambda m: progress(f"cluster: {m}"))
    seeded = seed(cfg, experiments, progress)
    records = Records(cfg)
    tokens = Tokens(records)
    name = f"bench-console-{uuid.uuid4().hex[:6]}"
    token = tokens.create("admin", name, "bench")["token"]
    try:
        reads = measure_reads(cfg, token, experiments, samples, progress)
        submit = compare_submits(cfg, token, submits, clients, progress)
    finally:
        tokens.revoke(name, "bench")
        records.close()
    return {"experiments": experiments, "seed": seeded, "reads": reads, "submit": submit,
            "samples": samples, "baseline_commit": BASELINE_COMMIT}


def seed(cfg: Config, experiments: int, progress: Progress) -> dict[str, Any]:
    """Submit the missing ``bc-`` experiments in chunks and wait until none is live; their completion rate."""
    types = list(BUILTIN_TYPES)
    with Experiments(cfg) as exps:
        path = cfg.home / "bench" / f"{FAIL_TYPE}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(fail_template(), sort_keys=False))
        exps.register(path)
        exps.install_builtins()
        have = {r["experiment_id"] for r in exps.records.experiments(
            "WHERE experiment_id LIKE %s", (PREFIX + "%",))}
        started = time.monotonic()
        added = 0
        for chunk in range(0, experiments, CHUNK):
            ids = [f"{PREFIX}{i:06d}" for i in range(chunk, min(chunk + CHUNK, experiments))
                   if f"{PREFIX}{i:06d}" not in have]
            if not ids:
                continue
            type_ = FAIL_TYPE if (chunk // CHUNK) % 10 == 9 else types[(chunk // CHUNK) % len(types)]
            added += len(exps.submit_many(type_, ids))
            if (chunk // CHUNK) % 10 == 0:
                progress(f"seed: {chunk + len(ids)} of {experiments} submitted")
        live = _live(exps)
        while live and time.monotonic() - started < SEED_TIMEOUT_S:
            progress(f"seed: {live} experiment(s) still running")
            time.sleep(5)
            live = _live(exps)
        seconds = time.monotonic() - started
        counts = exps.records.state_counts()
    return {"added": added, "seconds": round(seconds, 1), "states": counts, "live_left": live,
            "experiments_per_s": round(added / seconds, 1) if added else None}


def _live(exps: Experiments) -> int:
    counts = exps.records.state_counts()
    return counts.get("QUEUED", 0) + counts.get("RUNNING", 0)


def _timed(client: httpx.Client, url: str, n: int, expect: int = 200) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = client.get(url)
        out.append(time.perf_counter() - t0)
        if response.status_code != expect:
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")
    return out


def measure_reads(cfg: Config, token: str, experiments: int, samples: int, progress: Progress) -> dict[str, Any]:
    base = cfg.node_url(1)
    records = Records(cfg)
    try:
        total = sum(records.state_counts().values())
        depth = min(DEEP_ROW, total // 2)  # a smaller run: half-way
        deep = records.transaction(lambda cur: (cur.execute(
            "SELECT created_at, experiment_id FROM experiments ORDER BY created_at, experiment_id "
            "LIMIT 1 OFFSET %s", (depth,)), cur.fetchone())[1])
    finally:
        records.close()
    ids = [f"{PREFIX}{i:06d}" for i in random.Random(7).sample(range(experiments), min(samples, experiments))]
    if deep is None:
        raise RuntimeError("the experiments table is empty")
    cursor = encode_cursor(deep[0], deep[1])
    kinds = {"first page": "", f"{depth:,} rows deep": f"after={cursor}", "state=FAILED": "state=FAILED",
             "type=diamond": "type=diamond", "id prefix": f"q={PREFIX}0123"}
    out: dict[str, Any] = {}
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as api, \
            httpx.Client(cookies={"haorch_token": token}, timeout=30) as page:
        for label, query in kinds.items():
            progress(f"read: {label}")
            out[f"api list, {label}"] = summary(_timed(api, f"{base}/api/experiments?limit=50&{query}", samples))
            out[f"console experiments, {label}"] = summary(_timed(page, f"{base}/experiments?{query}", samples))
        progress("read: one experiment")
        out["api experiment status"] = summary([_timed(api, f"{base}/api/experiments/{i}", 1)[0] for i in ids])
        out["console experiment page"] = summary([_timed(page, f"{base}/experiments/{i}", 1)[0] for i in ids])
    return out


def compare_submits(cfg: Config, token: str, submits: int, clients: int, progress: Progress) -> dict[str, Any]:
    """Each implementation twice, alternating (baseline, new, baseline, new), on a port of the bench's own."""
    port = cfg.port_base + 275  # free in the port map (node/config.py): after the rabbit cluster, before the site
    rounds: dict[str, list[dict[str, Any]]] = {"baseline": [], "new": [], BATCHED: []}
    run_id = uuid.uuid4().hex[:6]
    for n, impl in enumerate(["baseline", "new", BATCHED] * 2):
        progress(f"submit: {impl} (round {n // 3 + 1})")
        ids = [f"bs-{run_id}-{n}-{i}" for i in range(submits if impl != BATCHED else submits * BATCHED_FACTOR)]
        rounds[impl].append(_submit_round(cfg, impl, port, token, ids, clients))
    out: dict[str, Any] = {"clients": clients, "submits": submits, "batch": BATCH,
                           "batched_experiments": submits * BATCHED_FACTOR}
    for impl, results in rounds.items():
        latencies = [x for r in results for x in r["latencies"]]
        out[impl] = {"submits_per_s": round(statistics.mean(r["per_s"] for r in results), 1),
                     "rounds_per_s": [round(r["per_s"], 1) for r in results], **summary(latencies)}
    out["ratio_new_baseline"] = round(out["new"]["submits_per_s"] / out["baseline"]["submits_per_s"], 2)
    out["ratio_batched_baseline"] = round(out[BATCHED]["submits_per_s"] / out["baseline"]["submits_per_s"], 2)
    return out


def _submit_round(cfg: Config, impl: str, port: int, token: str, ids: list[str], clients: int) -> dict[str, Any]:
    server = subprocess.Popen([sys.executable, "-m", "bench.api_server", "baseline" if impl == "baseline" else "new",
                               str(port), "600"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {impl} API server did not start (exit {server.poll()})")
        url = f"http://{cfg.host}:{port}/api/experiments"
        latencies: list[float] = []
        lock = threading.Lock()

        def worker(part: list[str]) -> None:
            mine = []
            requests = ([(url, {"type": "chain", "experiment_id": i}) for i in part] if impl != BATCHED else
                        [(f"{url}/batch", {"type": "chain", "experiment_ids": part[k:k + BATCH]})
                         for k in range(0, len(part), BATCH)])
            with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
                for target, body in requests:
                    t0 = time.perf_counter()
                    response = client.post(target, json=body)
                    mine.append(time.perf_counter() - t0)
                    if response.status_code != 201:
                        raise RuntimeError(f"{impl}: POST {response.status_code} {response.text[:200]}")
            with lock:
                latencies.extend(mine)

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            for future in [pool.submit(worker, ids[k::clients]) for k in range(clients)]:
                future.result()
        return {"per_s": len(ids) / (time.perf_counter() - started), "latencies": latencies}
    finally:
        server.terminate()
        server.wait(30)


def render(result: dict[str, Any]) -> str:
    seed, submit = result["seed"], result["submit"]
    lines = [f"## Console and API with {result['experiments']:,} experiments ({time.strftime('%Y-%m-%d %H:%M')})",
             "",
             f"`haorch bench console`: the stores hold {sum(seed['states'].values()):,} experiments "
             f"({', '.join(f'{k} {v:,}' for k, v in sorted(seed['states'].items()))}); {result['samples']} "
             "sequential requests per row, with a token, against node-1 while the cluster (1 node, 2 workers) "
             "is idle.", "",
             "| request | p50 ms | p99 ms |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {r['p50_ms']} | {r['p99_ms']} |" for label, r in result["reads"].items()]
    lines += ["", f"Submit: {submit['submits']} single-experiment POSTs from {submit['clients']} threads per round, "
              "two rounds per implementation, alternating, each served by a process of its own "
              f"(baseline: the http.server handler of {result['baseline_commit']}):", "",
              "| API | experiments/s (rounds) | p50 ms per request | p99 ms |", "| --- | ---: | ---: | ---: |"]
    for impl in ("baseline", "new", BATCHED):
        r = submit[impl]
        lines.append(f"| {impl} | {r['submits_per_s']} ({', '.join(map(str, r['rounds_per_s']))}) | "
                     f"{r['p50_ms']} | {r['p99_ms']} |")
    lines += ["", f"Ratio new/baseline: **{submit['ratio_new_baseline']}** one experiment per request; "
              f"**{submit['ratio_batched_baseline']}** with `POST /api/experiments/batch` ({submit['batch']} "
              f"experiments per request, {submit['batched_experiments']} per round)."]
    if seed["experiments_per_s"]:
        lines.append(f"The cluster ran the {seed['added']:,} seeded experiments at {seed['experiments_per_s']} "
                     "experiments/s (submitted in chunks of 1,000, not through the API).")
    return "\n".join(lines) + "\n"
