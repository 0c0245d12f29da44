"""Every Prometheus metric haorch exports, declared once (names are a contract: see docs/ARCHITECTURE.md).

Each name has one meaning: a node serves :data:`NODE_REGISTRY` and a worker :data:`WORKER_REGISTRY` on
``/metrics`` of its HTTP port, so a worker never exports the leader's series (not even at 0) and vice versa; only
``haorch_dependency_up`` and ``haorch_dead_letters_total`` are in both (each process's own probes and parked
messages). Code elsewhere only calls ``.inc()``, ``.set()``, ``.observe()`` on these objects, plus
:func:`expose_node_series` / :func:`expose_worker_series` once at process start.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import get_args

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from node.model.messages import Outcome

NODE_REGISTRY = CollectorRegistry(auto_describe=True)
WORKER_REGISTRY = CollectorRegistry(auto_describe=True)
for _registry in (NODE_REGISTRY, WORKER_REGISTRY):  # the python_* and process_* series of the default registry
    for _collector in (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR):
        _registry.register(_collector)

FAILOVER_PHASES = ("detect", "elect", "fence", "rescan", "redispatch", "first_advance", "total")
# 10 ms .. 30 s, dense around the sub-second to few-second range where failovers land
FAILOVER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0,
                    15.0, 20.0, 30.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

# --- leadership (nodes) ----------------------------------------------------------------------------
NODE_IS_LEADER = Gauge("haorch_node_is_leader", "1 while this node is the acting leader, else 0",
                       registry=NODE_REGISTRY)
LEADER_EPOCH = Gauge("haorch_leader_epoch", "Epoch of the current term of this node (0 when it never led)",
                     registry=NODE_REGISTRY)
FAILOVER_DURATION = Histogram("haorch_failover_duration_seconds",
                              "Time spent in each phase of a takeover (total: detect start to first advance)",
                              ["phase"], buckets=FAILOVER_BUCKETS, registry=NODE_REGISTRY)
for _phase in FAILOVER_PHASES:  # export every phase at 0 from the start: rate()/increase() then see the first
    FAILOVER_DURATION.labels(_phase)  # takeover of a node instead of losing it as the series' first sample
FAILOVERS = Counter("haorch_failovers_total", "Takeovers completed by this node", registry=NODE_REGISTRY)
FENCE_REJECTIONS = Counter("haorch_fence_rejections_total", "Writes rejected because a newer epoch holds the fence",
                           registry=NODE_REGISTRY)
RESCAN_TASKS = Counter("haorch_rescan_tasks_total", "Ready, unflagged tasks found by takeover rescans",
                       registry=NODE_REGISTRY)
ZK_SESSION_STATE = Gauge("haorch_zk_session_state", "ZooKeeper session: 1 connected, 0.5 suspended, 0 lost",
                         registry=NODE_REGISTRY)

# --- work the leader advances (nodes) ----------------------------------------------------------------------
LEADER_OUTCOMES = ("succeeded", "failed", "retried")
TASKS = Counter("haorch_tasks_total", "Tasks the leader advanced, by kind and outcome (succeeded, failed, retried)",
                ["kind", "outcome"], registry=NODE_REGISTRY)
TASK_LATENCY = Histogram("haorch_task_latency_seconds", "Leader: a task's dispatch to its flagging as succeeded",
                         buckets=LATENCY_BUCKETS, registry=NODE_REGISTRY)
BATCH_SIZE = Histogram("haorch_batch_size", "Leader: responses and submissions advanced per batch",
                       buckets=BATCH_BUCKETS, registry=NODE_REGISTRY)
EXPERIMENTS = Gauge("haorch_experiments", "Experiments by state (exported by the acting leader only)", ["state"],
                    registry=NODE_REGISTRY)
QUEUE_DEPTH = Gauge("haorch_queue_depth", "Messages ready in each haorch queue", ["queue"], registry=NODE_REGISTRY)
DUPLICATE_RESPONSES = Counter("haorch_duplicate_responses_total",
                              "Responses ignored because the task was already flagged or the attempt is stale",
                              registry=NODE_REGISTRY)

# --- work the workers execute ------------------------------------------------------------------------------
WORKER_OUTCOMES: tuple[str, ...] = get_args(Outcome)
WORKER_EXECUTIONS = Counter("haorch_worker_executions_total", "Worker: task executions by kind and outcome",
                            ["kind", "outcome"], registry=WORKER_REGISTRY)
WORKER_EXECUTION_SECONDS = Histogram("haorch_worker_execution_seconds", "Worker: time one execution took",
                                     buckets=LATENCY_BUCKETS, registry=WORKER_REGISTRY)
WORKER_IN_PROGRESS = Gauge("haorch_worker_executions_in_progress",
                           "Worker: executions running now (one abandoned at its timeout until its thread ends)",
                           registry=WORKER_REGISTRY)
WORKER_BATCH_SIZE = Histogram("haorch_worker_batch_size", "Worker: requests handled per batch",
                              buckets=BATCH_BUCKETS, registry=WORKER_REGISTRY)
CLAIM_RESULTS: tuple[str, ...] = ("held", "abandoned", "released")
WORKER_CLAIMS = Counter("haorch_worker_claims_total",
                        "Worker: requests not run here because another worker held the attempt (held), attempts "
                        "ended as lost because their holder let the claim's lease run out (abandoned), and "
                        "claims given back unstarted after a lost channel (released)",
                        ["result"], registry=WORKER_REGISTRY)

# --- retention and pools (leader) -------------------------------------------------------------------
GC_DELETED = Counter("haorch_gc_experiments_deleted_total",
                     "Finished experiments deleted by retention (their Neo4j subgraph and MariaDB rows)",
                     registry=NODE_REGISTRY)
GC_STEP_SECONDS = Histogram("haorch_gc_step_seconds", "Retention: one step (a batch of experiments, both stores)",
                            buckets=LATENCY_BUCKETS, registry=NODE_REGISTRY)
GC_LAG_SECONDS = Gauge("haorch_gc_lag_seconds",
                       "Retention: how long ago the oldest experiment past its retention passed it, at the last gc "
                       "step (0: none waits; growing: experiments finish faster than gc deletes them)",
                       registry=NODE_REGISTRY)
POOL_SLOTS = Gauge("haorch_pool_slots", "Concurrency pools: slots configured", ["pool"], registry=NODE_REGISTRY)
POOL_IN_USE = Gauge("haorch_pool_in_use", "Concurrency pools: tasks dispatched and not yet answered", ["pool"],
                    registry=NODE_REGISTRY)
POOL_WAITING = Gauge("haorch_pool_waiting", "Concurrency pools: ready tasks held for a free slot", ["pool"],
                     registry=NODE_REGISTRY)

DEPENDENCY_UP = Gauge("haorch_dependency_up", "1 when the dependency answers this process, else 0", ["service"],
                      registry=None)
DEAD_LETTERS = Counter("haorch_dead_letters_total", "Messages this process parked on haorch.dead (malformed, or "
                       "failing alone)",
                       registry=None)
for _registry in (NODE_REGISTRY, WORKER_REGISTRY):
    _registry.register(DEPENDENCY_UP)
    _registry.register(DEAD_LETTERS)


def expose_node_series(kinds: Iterable[str], queues: Iterable[str], services: Iterable[str]) -> None:
    """Create a node's labelled series at 0 before anything happens, so a fresh leader exposes them and rate() or
    increase() counts its first event instead of losing it as the series' first sample."""
    for kind in kinds:
        for outcome in LEADER_OUTCOMES:
            TASKS.labels(kind, outcome)
    for queue in queues:
        QUEUE_DEPTH.labels(queue)
    for service in services:
        DEPENDENCY_UP.labels(service)


def expose_worker_series(kinds: Iterable[str], services: Iterable[str]) -> None:
    """The worker's counterpart of :func:`expose_node_series`."""
    for kind in kinds:
        for outcome in WORKER_OUTCOMES:
            WORKER_EXECUTIONS.labels(kind, outcome)
    for result in CLAIM_RESULTS:
        WORKER_CLAIMS.labels(result)
    for service in services:
        DEPENDENCY_UP.labels(service)
