"""Every Prometheus metric haorch exports, declared once (names are a contract: see ARCHITECTURE.md).

Code elsewhere only calls ``.inc()``, ``.set()``, ``.observe()`` on these objects. Nodes and workers serve them
on ``/metrics`` of their HTTP port.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FAILOVER_PHASES = ("detect", "elect", "fence", "rescan", "redispatch", "first_advance", "total")
# 10 ms .. 30 s, dense around the sub-second to few-second range where failovers land
FAILOVER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0,
                    15.0, 20.0, 30.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

# --- leadership (nodes) ----------------------------------------------------------------------------
NODE_IS_LEADER = Gauge("haorch_node_is_leader", "1 while this node is the acting leader, else 0")
LEADER_EPOCH = Gauge("haorch_leader_epoch", "Epoch of the current term of this node (0 when it never led)")
FAILOVER_DURATION = Histogram("haorch_failover_duration_seconds",
                              "Time spent in each phase of a takeover (total: detect start to first advance)",
                              ["phase"], buckets=FAILOVER_BUCKETS)
for _phase in FAILOVER_PHASES:  # export every phase at 0 from the start: rate()/increase() then see the first
    FAILOVER_DURATION.labels(_phase)  # takeover of a node instead of losing it as the series' first sample
FAILOVERS = Counter("haorch_failovers_total", "Takeovers completed by this node")
FENCE_REJECTIONS = Counter("haorch_fence_rejections_total", "Writes rejected because a newer epoch holds the fence")
RESCAN_TASKS = Counter("haorch_rescan_tasks_total", "Ready, unflagged tasks found by takeover rescans")
ZK_SESSION_STATE = Gauge("haorch_zk_session_state", "ZooKeeper session: 1 connected, 0.5 suspended, 0 lost")

# --- work ------------------------------------------------------------------------------------------
TASKS = Counter("haorch_tasks_total", "Task outcomes (leader: advanced; worker: executed)", ["kind", "outcome"])
TASK_LATENCY = Histogram("haorch_task_latency_seconds",
                         "Dispatch to flagged (leader) or execution time (worker)", buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("haorch_batch_size", "Messages handled per batch", buckets=BATCH_BUCKETS)
EXPERIMENTS = Gauge("haorch_experiments", "Experiments by state (as seen by the leader)", ["state"])
QUEUE_DEPTH = Gauge("haorch_queue_depth", "Messages ready in each haorch queue", ["queue"])
DEPENDENCY_UP = Gauge("haorch_dependency_up", "1 when the dependency answers, else 0", ["service"])
DUPLICATE_RESPONSES = Counter("haorch_duplicate_responses_total",
                              "Responses ignored because the task was already flagged or the attempt is stale")
DEAD_LETTERS = Counter("haorch_dead_letters_total", "Malformed messages parked on haorch.dead")
