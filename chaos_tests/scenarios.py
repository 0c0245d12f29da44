"""Named chaos scenarios: a 3-node cluster under steady load, N faults at intervals, then the invariant checker.

    result = run(cfg, "kill-leader", kills=3, experiments=200, seed=1)
    result["ok"], result["violations"], result["failover"]["p50_s"]

Each run: make sure the stack runs, (re)start the cluster (``nodes`` nodes, ``workers`` workers) → start the
load (ids ``chaos-<scenario>-<run>-NNNNN``) and a sampler of ``cluster.status`` every 0.25 s → for every fault
of the plan: inject, hold (bounded), undo, wait until every process runs and a leader acts (bounded), pause
``interval_s`` → let the load reach its count → wait (bounded) until every experiment is terminal → run
:func:`node.verify.check` over exactly the load's ids. Whatever happens, a ``finally`` undoes every
fault again and deletes every iptables rule and cgroup of the stack (:func:`chaos_tests.faults.cleanup`), stops the
cluster (unless ``keep_cluster``) and deletes the run's experiments from both stores (:mod:`bench.scratch`; the
result keeps what the report needs).

The result dict (what :mod:`chaos_tests.report` renders): the plan, each fault with its timestamps and the
leader change it caused (failover = fault → the next epoch's first SUCCEEDED transition, as ``bench failover``
measures it), the sampled leader per node over time, submissions / task successes / finished experiments per
time bucket (from MariaDB), experiment states, the checker's report, violations and attempts executed more than once.

The adversarial scenarios (:data:`ADVERSITY`: ``slow-tasks``, ``backlog``, ``poison``, ``freeze-publish``,
``adversarial``) run a :class:`~chaos_tests.workloads.Workload` instead of the built-in types: every task runs the
``mark`` executor (real-duration tasks of 2-6 s for ``slow``), bursts of more ready tasks than all workers
prefetch, poison on the queues, the failpoint freeze (see :mod:`chaos_tests.faults`). Their result has an
``adversarial`` part, and it is OK only if, beyond the checker: no attempt left two marker files, every SUCCEEDED
transition has its attempt's marker, every poison message is in ``haorch.dead`` with a reason, and no node or
worker process exited that no fault made its victim. These runs need the process runtime.

The HPC scenarios (``hpc`` and ``hpc-kill-leader``, ``hpc-kill-worker``, ``hpc-restart-slurmctld``; see
:mod:`chaos_tests.hpc`) start the HPC test site if it is not up and run a load of ``chaos-hpc`` experiments (stage in,
an array job in SLURM, monitor, stage out); each fault waits until jobs are both queued and running. Their result
has an ``hpc`` part (SLURM jobs per submit task from sacct, the staging journals; node/verify/hpc.py), and it is OK
only if that check holds and every experiment COMPLETED. They need the process runtime too.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.probes import first_success_at, query
from bench.scratch import Scratch
from chaos_tests import faults as fault_mod
from chaos_tests import host_faults, hpc
from chaos_tests.hpc import HpcWorkload
from chaos_tests.workloads import Workload, like_prefix
from node import cluster
from node.config import Config, with_overrides
from node.errors import HaorchError, TimeoutExpired, UsageError
from node.experiments import BUILTIN_TYPES, Experiments
from node.load import SteadyLoad
from node.model.states import REDISPATCHED, TERMINAL_EXPERIMENT_STATES, ExperimentState, TaskStatus
from node.stack import manager
from node.verify import Scope, check

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: scenario → the fault kinds it cycles through (``mixed`` draws from all of them with ``random_mix``)
SCENARIOS: dict[str, tuple[str, ...]] = {
    "kill-leader": ("kill-leader",),
    "stop-leader": ("stop-leader",),
    "freeze-leader": ("freeze-leader",),
    "partition-leader": ("partition-leader",),
    "kill-worker": ("kill-worker",),
    "zk-member": ("zk-member",),
    "zk-quorum": ("zk-quorum",),
    "restart-services": ("restart-rabbitmq", "restart-mariadb", "restart-neo4j"),
    "mixed": fault_mod.KINDS,
    "slow-tasks": ("kill-leader", "kill-worker", "freeze-leader", "partition-leader"),
    "backlog": ("backlog-kill-leader",),
    "poison": ("poison-kill-leader",),
    "freeze-publish": ("freeze-publish",),
    "adversarial": fault_mod.ADVERSARIAL_KINDS,
    "hosts": host_faults.HOST_KINDS,  # a lab (`haorch lab up`): each kind in turn
    **{kind: (kind,) for kind in host_faults.HOST_KINDS},
    **hpc.SCENARIOS,  # the HPC test site (`haorch hpc up`, started by the run): jobs queued and running in SLURM
}
#: scenarios drawing a random plan from their kinds (the others cycle through them)
RANDOM = ("mixed", "adversarial")
SAMPLE_PERIOD_S = 0.25
FIRST_ADVANCE_WAIT_S = 20.0
POISON_WAIT_S = 60.0


@dataclass(frozen=True)
class Adversity:
    """What an adversarial scenario runs: the workload's mix (:data:`chaos_tests.workloads.MIXES`) and a burst
    before the first fault (``burst`` × workers × worker_prefetch ready tasks; 0: none)."""

    mix: str
    burst: float = 0.0


ADVERSITY: dict[str, Adversity] = {
    "slow-tasks": Adversity("slow"),
    "backlog": Adversity("chain"),
    "poison": Adversity("chain"),
    "freeze-publish": Adversity("mixed"),  # stale copies of short tasks are replayed, of 2-6 s ones hit a claim
    "adversarial": Adversity("mixed", burst=1.5),
}


def plan(scenario: str, kills: int, seed: int, workers: int = 2) -> list[dict[str, Any]]:
    """The reproducible list of fault specs of a run."""
    if scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    if scenario in RANDOM:
        return fault_mod.random_mix(seed, kills, SCENARIOS[scenario], workers=workers)
    if scenario in hpc.SCENARIOS:
        return hpc.plan(hpc.SCENARIOS[scenario], kills, seed, workers)
    rng = random.Random(seed)
    kinds = SCENARIOS[scenario]
    if set(kinds) <= set(host_faults.HOST_KINDS):
        return [host_faults.host_spec(kinds[i % len(kinds)], rng) for i in range(kills)]
    return [fault_mod.spec(kinds[i % len(kinds)], rng, workers) for i in range(kills)]


class LeaderSampler:
    """Samples ``cluster.status`` every ``period_s`` on a thread (bounded by ``max_s``): role and epoch per node,
    kept as the list of changes (each state lasts until the next entry's ``t``)."""

    def __init__(self, cfg: Config, period_s: float = SAMPLE_PERIOD_S, max_s: float = 24 * 3600.0) -> None:
        self.cfg, self.period_s, self.max_s = cfg, period_s, max_s
        self.samples: list[dict[str, Any]] = []   # the sampled states, from one change to the next
        self.count = 0                             # samples taken
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-sampler", daemon=True)

    def start(self) -> LeaderSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        end = time.monotonic() + self.max_s
        while not self._stop.is_set() and time.monotonic() < end:
            started = time.monotonic()
            try:
                rows = cluster.status(self.cfg)
            except Exception as exc:  # noqa: BLE001 - a sample may fail mid-fault; keep sampling
                log.debug("sampler: %s", exc)
                rows = []
            self._record({r["node_id"]: {"role": r["role"], "epoch": r["epoch"]} for r in rows})
            self._stop.wait(max(0.0, self.period_s - (time.monotonic() - started)))
        self._record(None)

    def _record(self, nodes: dict[str, Any] | None) -> None:
        """Keep a sample only when some node's role or epoch changed (and the last one, closing the timeline)."""
        self.count += nodes is not None
        if nodes is None:
            if self.samples:
                self.samples.append({"t": time.time(), "nodes": self.samples[-1]["nodes"]})
        elif not self.samples or self.samples[-1]["nodes"] != nodes:
            self.samples.append({"t": time.time(), "nodes": nodes})


def _stack_up(cfg: Config, progress: Progress) -> None:
    if not all(s.proc.alive() for s in manager.services(cfg)):
        manager.up(cfg, progress=lambda m: progress(f"stack: {m}"))


def _run_fault(fault: fault_mod.Fault, nodes: int, workers: int, progress: Progress,
               on_injected: Callable[[fault_mod.Fault], None] | None) -> dict[str, Any]:
    try:
        fault.inject()
        progress(f"fault {fault.name} injected {fault.detail}")
        if on_injected is not None:
            on_injected(fault)
        fault.hold()
        if fault.leader_fault and fault.detail.get("new_epoch"):
            # like `bench failover`: the fault lasts until the new leader advanced a DAG (bounded)
            first_success_at(fault.cfg, fault.detail["new_epoch"], FIRST_ADVANCE_WAIT_S, poll_s=0.1)
    finally:
        fault.undo()
    recovered = fault_mod.wait_recovered(fault.cfg, nodes, workers)
    record = {**fault.record(), **recovered}
    progress(f"fault {fault.name} undone; recovered={recovered['recovered']}")
    return record


def _leader_changes(cfg: Config, records: list[dict[str, Any]], end: float) -> None:
    """Per fault: the first epoch elected after it (before the next fault), its election and first advance."""
    terms = query(cfg, "SELECT epoch, node_id, elected_at FROM leader_terms ORDER BY epoch")
    for i, rec in enumerate(records):
        start = rec.get("injected_at")
        if start is None:
            continue
        until = records[i + 1]["injected_at"] if i + 1 < len(records) and records[i + 1].get("injected_at") else end
        before = rec.get("epoch_before") or 0
        nxt = next(((e, n, float(at)) for e, n, at in terms if e > before and start - 0.5 <= float(at) < until),
                   None)
        rec["epoch_changed"] = nxt is not None
        if nxt is None:
            continue
        epoch, node_id, elected_at = nxt
        first = first_success_at(cfg, epoch)
        rec.update({"next_epoch": epoch, "next_leader": node_id, "elected_s": round(elected_at - start, 4),
                    "failover_s": round(float(first) - start, 4) if first is not None else None})


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _failover_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    leader = [r for r in records if r.get("failover_s") is not None and r["fault"] in fault_mod.LEADER_KINDS]
    by_kind: dict[str, list[float]] = {}
    for r in leader:
        by_kind.setdefault(r["fault"], []).append(r["failover_s"])
    values = [r["failover_s"] for r in leader]
    return {"count": len(values), "p50_s": _pct(values, 0.5), "p99_s": _pct(values, 0.99),
            "max_s": max(values) if values else None,
            "by_fault": {k: {"count": len(v), "p50_s": _pct(v, 0.5), "max_s": max(v)} for k, v in by_kind.items()}}


def _stall_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per fault kind: how long task successes paused during the fault and after its undo (p50, p99, max)."""
    out: dict[str, Any] = {}
    for kind in sorted({r["fault"] for r in records if r.get("stall_s") is not None}):
        stall = [r["stall_s"] for r in records if r["fault"] == kind and r.get("stall_s") is not None]
        repair = [r["repair_stall_s"] for r in records if r["fault"] == kind and r.get("repair_stall_s") is not None]
        down = [r["stepped_down_s"] for r in records if r["fault"] == kind and r.get("stepped_down_s") is not None]
        out[kind] = {"count": len(stall), "p50_s": _pct(stall, 0.5), "p99_s": _pct(stall, 0.99), "max_s": max(stall),
                     "repair_p50_s": _pct(repair, 0.5), "repair_max_s": max(repair) if repair else None,
                     "stepped_down_max_s": max(down) if down else None}
    return out


def _throughput(cfg: Config, prefix: str, t0: float, end: float) -> dict[str, Any]:
    """Submissions, task successes and finished experiments per bucket, from MariaDB."""
    bucket = max(1.0, round((end - t0) / 300.0))
    n = int((end - t0) // bucket) + 1
    like = prefix + "%"

    def series(sql: str, *args: object) -> list[int]:
        out = [0] * n
        for idx, count in query(cfg, sql, (t0, bucket, like, *args)):
            if idx is not None and 0 <= int(idx) < n:
                out[int(idx)] += int(count)
        return out

    return {"bucket_s": bucket, "t0": t0,
            "submitted": series("SELECT FLOOR((created_at - %s) / %s), COUNT(*) FROM experiments "
                                "WHERE experiment_id LIKE %s GROUP BY 1"),
            "tasks_succeeded": series("SELECT FLOOR((at - %s) / %s), COUNT(*) FROM transitions WHERE experiment_id "
                                      "LIKE %s AND to_state = %s AND task IS NOT NULL GROUP BY 1",
                                      TaskStatus.SUCCEEDED),
            "experiments_finished": series("SELECT FLOOR((finished_at - %s) / %s), COUNT(*) FROM experiments "
                                           "WHERE experiment_id LIKE %s AND finished_at IS NOT NULL GROUP BY 1")}


def _wait_terminal(cfg: Config, ids: list[str], timeout_s: float) -> dict[str, Any]:
    started = time.monotonic()
    quiescent = True
    if ids:
        with Experiments(cfg) as exps:
            try:
                exps.wait(ids, timeout_s=timeout_s, poll_s=0.5)
            except TimeoutExpired:
                quiescent = False
    rows = query(cfg, "SELECT state, COUNT(*) FROM experiments WHERE experiment_id IN ("
                 + ",".join(["%s"] * len(ids)) + ") GROUP BY state", ids) if ids else []
    states = {s: int(c) for s, c in rows}
    return {"submitted": len(ids), "states": states, "completed": states.get(ExperimentState.COMPLETED, 0),
            "not_terminal": sum(c for s, c in states.items() if s not in TERMINAL_EXPERIMENT_STATES),
            "missing": len(ids) - sum(states.values()), "quiescent": quiescent,
            "wait_s": round(time.monotonic() - started, 3)}


def _pids(cfg: Config, nodes: int, workers: int) -> dict[str, int | None]:
    """The pid of every node and worker process (None: not running)."""
    pids = {f"node-{n}": cluster.node_process(cfg, n).pid() for n in range(1, nodes + 1)}
    return pids | {f"worker-{n}": cluster.worker_process(cfg, n).pid() for n in range(1, workers + 1)}


def _make_fault(cfg: Config, spec: dict[str, Any], workload: Workload | HpcWorkload | None,
                n: int) -> fault_mod.Fault:
    if spec["kind"] in host_faults.HOST_KINDS:
        return host_faults.make_host_fault(cfg, spec)
    if isinstance(workload, HpcWorkload):
        return hpc.make_fault(cfg, spec, workload)
    return fault_mod.make_fault(cfg, spec, workload, n=n)


def _inject_all(run_cfg: Config, specs: list[dict[str, Any]], load: SteadyLoad, nodes: int, workers: int,
                interval_s: float, load_bound_s: float, progress: Progress,
                on_injected: Callable[[fault_mod.Fault], None] | None,
                workload: Workload | HpcWorkload | None = None,
                burst: float = 0.0) -> tuple[list[dict[str, Any]], list[str]]:
    """Start the load (and the workload's first burst), run every fault of the plan in turn; a ``finally`` undoes
    them all and cleans up."""
    made: list[fault_mod.Fault] = []
    records: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        load.start()
        if isinstance(workload, Workload) and burst:
            progress(f"burst: {workload.burst(burst)}")
        time.sleep(min(2.0, 4.0 / load.rate + 0.5))
        for i, fault_spec in enumerate(specs):
            fault = _make_fault(run_cfg, fault_spec, workload, i + 1)
            made.append(fault)
            progress(f"fault {i + 1}/{len(specs)}: {fault_spec}")
            try:
                records.append({"n": i + 1, **_run_fault(fault, nodes, workers, progress, on_injected)})
            except HaorchError as exc:  # e.g. no leader to kill: record it, keep going
                errors.append(f"fault {i + 1} {fault.name}: {exc}")
                records.append({"n": i + 1, **fault.record(), "error": str(exc)})
                progress(f"fault {fault.name} failed: {exc}")
                fault_mod.wait_recovered(run_cfg, nodes, workers)
            time.sleep(interval_s)
        progress("faults done; letting the load finish")
        if not load.wait_done(load_bound_s):
            errors.append("load did not finish within its bound")
    finally:
        for fault in reversed(made):
            try:
                fault.undo()
            except Exception as exc:  # noqa: BLE001 - undo the others anyway
                errors.append(f"undo {fault.name}: {exc}")
        leftover = fault_mod.cleanup(run_cfg)
        if leftover:
            errors.append(f"cleanup deleted {leftover} leftover iptables rule(s)")
        load.stop(timeout_s=60.0)
    return records, errors


def _stale_executions(cfg: Config, prefix: str, records: list[dict[str, Any]]) -> None:
    """Per freeze-publish fault: the requests the frozen leader had in hand (the dispatches of its last batch, whose
    transitions are the newest of its epoch: fenced, it writes nothing after) and how many of those attempts its
    stale copy executed (the ledger row, the attempt's claim, carries the epoch of the copy that won it)."""
    like = like_prefix(prefix)
    for rec in records:
        epoch = rec.get("epoch")
        if rec["fault"] != "freeze-publish" or not rec.get("resumed_at") or epoch is None:
            continue
        keys = query(cfg, "SELECT experiment_id, task, attempt FROM transitions WHERE epoch = %s AND to_state IN "
                     "(%s, %s) AND experiment_id LIKE %s AND at = (SELECT MAX(at) FROM transitions WHERE epoch = %s)",
                     (epoch, TaskStatus.DISPATCHED, REDISPATCHED, like, epoch))
        rec["stale_requests"] = len(keys)
        rec["stale_executions"] = 0
        if keys:
            won = query(cfg, "SELECT COUNT(*) FROM ledger WHERE epoch = %s AND (experiment_id, task, attempt) IN ("
                        + ",".join(["(%s,%s,%s)"] * len(keys)) + ")", (epoch, *[v for key in keys for v in key]))
            rec["stale_executions"] = int(won[0][0])


def _adversarial_outcome(cfg: Config, workload: Workload, records: list[dict[str, Any]],
                         pids_before: dict[str, int | None], pids_after: dict[str, int | None]) -> dict[str, Any]:
    """Markers, poison in haorch.dead, stale executions and unexpected exits of an adversarial run."""
    _stale_executions(cfg, workload.prefix, records)
    victims = {rec.get("victim") for rec in records}
    exits = sorted(name for name, pid in pids_before.items() if pids_after.get(name) != pid and name not in victims)
    poison = workload.poison_outcome(POISON_WAIT_S) if workload.poison_sent else None
    return {"mix": workload.mix, "types": list(workload.types), "bursts": workload.bursts,
            "burst_experiments": len(workload.extra_ids), "exactly_once": workload.exactly_once(),
            "poison": poison, "unexpected_exits": exits, "pids_before": pids_before, "pids_after": pids_after,
            "stale_requests": sum(r.get("stale_requests", 0) for r in records),
            "stale_executions": sum(r.get("stale_executions", 0) for r in records)}


def _adversarial_ok(adv: dict[str, Any]) -> bool:
    once, poison = adv["exactly_once"], adv["poison"]
    return (once["attempts_executed_twice"] == 0 and once["succeeded_without_marker"] == 0
            and not adv["unexpected_exits"]
            and (poison is None or (poison["missing_count"] == 0 and poison["without_reason"] == 0)))


def run(cfg: Config, scenario: str, kills: int = 3, experiments: int = 200, seed: int = 1,
        rate: float | None = None, interval_s: float = 2.0, nodes: int = 3, workers: int = 2,
        session_timeout_s: float | None = None, quiesce_s: float = 300.0, fresh_cluster: bool = True,
        keep_cluster: bool = False, progress: Progress = lambda _m: None,
        on_injected: Callable[[fault_mod.Fault], None] | None = None) -> dict[str, Any]:
    """Run one scenario and return its result dict (see the module docstring). Raises only on a setup error
    or when ``on_injected`` raises; faults are undone in every case."""
    if experiments < 1 or kills < 0:
        raise UsageError("--experiments must be at least 1 and --kills at least 0")
    specs = plan(scenario, kills, seed, workers)
    adversity = ADVERSITY.get(scenario)
    if (adversity is not None or scenario in hpc.SCENARIOS) and cfg.runtime != "process":
        raise UsageError(f"scenario {scenario} needs the process runtime (its marker files, journals and failpoints "
                         "are paths of this machine's state dir)")
    run_cfg = with_overrides(cfg, zk_session_timeout_s=session_timeout_s) if session_timeout_s else cfg
    scratch = Scratch(run_cfg, f"chaos-{scenario}")
    run_id, prefix = scratch.run_id, scratch.prefix
    workload = Workload(run_cfg, prefix, adversity.mix, workers) if adversity is not None else None
    hpc_load = HpcWorkload(run_cfg, prefix, workers) if scenario in hpc.SCENARIOS else None
    if rate is None:
        planned_s = 4.0 + kills * (interval_s + 2 * run_cfg.zk_session_timeout_s + 3.0)
        if set(SCENARIOS[scenario]) <= set(host_faults.HOST_KINDS):  # a host fault lasts 5-20 s, its undo more
            planned_s += kills * 30.0
        rate = min(50.0, max(2.0, experiments / planned_s))
        if workload is not None:
            rate = min(rate, workload.max_rate(run_cfg.worker_concurrency))
        if hpc_load is not None:  # SLURM's capacity bounds the rate: the load outlasts the faults
            rate = min(rate, hpc_load.max_rate())
    started = time.time()
    progress(f"scenario {scenario}: {kills} fault(s), {experiments} experiments at {rate:.2f}/s, seed {seed}")

    fault_mod.cleanup(run_cfg)
    _stack_up(run_cfg, progress)
    if fresh_cluster:
        cluster.down(run_cfg)
    cluster.up(run_cfg, nodes=nodes, workers=workers, progress=lambda m: progress(f"cluster: {m}"))
    load_bound_s = experiments / rate + kills * 120.0 + 60.0
    if workload is not None:
        workload.install()
    if hpc_load is not None:
        hpc_load.install(progress)
    typed = workload or hpc_load
    load = SteadyLoad(run_cfg, prefix, per_tick=4 if rate >= 8 else 1, rate=rate, limit=experiments,
                      max_s=load_bound_s, types=typed.types if typed else BUILTIN_TYPES,
                      params=typed.params if typed else None)
    if hpc_load is not None:
        hpc_load.watch(load.ids)
    sampler = LeaderSampler(run_cfg, max_s=load_bound_s + quiesce_s + 600.0).start()
    pids_before = _pids(run_cfg, nodes, workers)
    try:
        records, errors = _inject_all(run_cfg, specs, load, nodes, workers, interval_s, load_bound_s, progress,
                                      on_injected, typed, adversity.burst if adversity else 0.0)
        fault_mod.wait_recovered(run_cfg, nodes, workers)
        ids = load.ids + (workload.extra_ids if workload is not None else [])
        progress(f"{len(ids)} experiments submitted; waiting for all to finish")
        exp = _wait_terminal(run_cfg, ids, quiesce_s)
        sampler.stop()
        ended = time.time()
        report = check(run_cfg, Scope(experiment_ids=ids))
        _leader_changes(run_cfg, records, ended)
        host_faults.stalls(run_cfg, prefix, records)
        result: dict[str, Any] = {
            "scenario": scenario, "seed": seed, "kills": kills, "run_id": run_id, "prefix": prefix,
            "experiments_requested": experiments, "rate": rate, "interval_s": interval_s,
            "session_timeout_s": run_cfg.zk_session_timeout_s, "nodes": nodes, "workers": workers,
            "started_at": started, "ended_at": ended, "duration_s": round(ended - started, 3),
            "plan": specs, "faults": records, "errors": errors,
            "leader_timeline": sampler.samples, "leader_samples": sampler.count, "failover": _failover_summary(records),
            "stalls": _stall_summary(records),
            "throughput": _throughput(run_cfg, prefix, started, ended),
            "experiments": exp, "load_errors": load.errors,
            "check": report.to_dict(), "violations": len(report.violations),
            "duplicate_executions": report.duplicate_executions,
            "duplicate_rows": report.duplicate_rows, "replays": report.replays,
            "frozen_left": fault_mod.stopped_pids(run_cfg), "rules_left": len(fault_mod.chaos_rules(run_cfg)),
            "check_markdown": report.to_markdown(),
        }
        result["ok"] = (report.ok and exp["not_terminal"] == 0 and exp["missing"] == 0
                        and not result["frozen_left"] and not result["rules_left"])
        if workload is not None:
            adv = _adversarial_outcome(run_cfg, workload, records, pids_before, _pids(run_cfg, nodes, workers))
            result["adversarial"] = adv
            result["ok"] = result["ok"] and _adversarial_ok(adv)
            poison = adv["poison"] or {"dead_lettered": 0, "sent": 0}
            progress(f"scenario {scenario}: {adv['exactly_once']['attempts_executed_twice']} attempt(s) executed "
                     f"twice, {adv['exactly_once']['succeeded_without_marker']} success(es) without a marker, "
                     f"poison {poison['dead_lettered']}/{poison['sent']} dead-lettered, unexpected exits "
                     f"{adv['unexpected_exits'] or 'none'}")
        if hpc_load is not None:
            progress("checking SLURM's jobs and the staging journals")
            outcome = hpc_load.outcome(ids, started)
            outcome["faults"] = hpc.fault_summary(records)
            result["hpc"] = outcome
            result["ok"] = result["ok"] and outcome["ok"]
            progress(f"scenario {scenario}: {outcome['jobs']} job(s) for {outcome['tasks']} submit task(s) (per task: "
                     f"{outcome['jobs_per_task']}), {outcome['adopted']} adopted by a later attempt, "
                     f"{outcome['placements']} placements journaled, {len(outcome['violations'])} HPC violation(s)")
        progress(f"scenario {scenario}: {'OK' if result['ok'] else 'FAILED'}: {len(report.violations)} "
                 f"violation(s), {exp['completed']}/{exp['submitted']} completed, "
                 f"{report.duplicate_executions} attempt(s) executed more than once, "
                 f"failover p50 {result['failover']['p50_s']}")
        return result
    finally:
        sampler.stop()
        if not keep_cluster:
            cluster.down(run_cfg)
        scratch.purge()
        if workload is not None:
            workload.remove()
        if hpc_load is not None:
            hpc_load.remove()
