"""The adversarial side of chaos runs: experiment types whose every task leaves a marker file, bursts of more
ready tasks than all workers prefetch, and poison messages, each with the check that goes with it.

    wl = Workload(cfg, "chaos-backlog-ab12cd-", mix="chain", workers=2)
    wl.install()                   # registers the chaos types (idempotent) and creates the run's mark dir
    SteadyLoad(cfg, wl.prefix, types=wl.types, params=wl.params, ...).start()
    wl.burst(1.5)                  # 1.5 × workers × worker_prefetch ready tasks at once, ids in wl.extra_ids
    wl.publish_poison("r1")        # hostile bodies on haorch.responses, haorch.submissions, haorch.requests
    ...
    wl.exactly_once()              # marker files: attempts executed twice, successes without an execution
    wl.poison_outcome(60.0)        # every poison body found in haorch.dead, with its reason
    wl.remove()                    # the mark dir

**Markers** (``mark`` executor, ``node/worker/executors.py``): every task of the chaos types sleeps, then creates
``<mark dir>/<experiment>.<task>.<attempt>`` with ``O_EXCL``, or a ``.twice.*`` file when that attempt ran
before. The files are evidence of their own, beside the ledger: a ``.twice`` file is an attempt executed twice,
and a SUCCEEDED transition without its attempt's marker is a success nobody executed. The mark dir is
``<home>/chaos/marks/<prefix>`` (the executor refuses paths outside the haorch home), so these runs need the
process runtime: a container's home is another path.

**Poison**: each body embeds a tag unique to the run and the round, so ``haorch.dead`` is matched exactly on
(source queue, body). Every body is malformed for its queue's decoder, except a well-formed response about an
experiment that does not exist (the leader dead-letters it as an unknown task); none is a request a worker would
run. Reading ``haorch.dead`` takes only this workload's bodies (acknowledged); the other dead letters go back
to the queue when the reading channel closes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika

from bench.probes import query
from node.config import Config
from node.errors import DependencyError, HaorchError
from node.experiments import Experiments
from node.model.executors import KNOWN_EXECUTORS
from node.model.states import TaskStatus
from node.model.template import parse_template
from node.stores.connect import amqp_parameters
from node.stores.failures import rabbitmq_boundary
from node.stores.queues import DEAD, REQUESTS, RESPONSES, SUBMISSIONS

WIDE_ROOTS = 20
BURST_CHUNK = 50            # experiments per submit_many of a burst (one MariaDB and one Neo4j transaction each)
BURST_ATTEMPTS = 5          # a burst submit is retried (same ids: idempotent) this often, 1 s apart
DEAD_SCAN_MAX = 50_000      # dead letters looked at per pass
UTILISATION = 0.5           # share of the workers' slots a load of real-duration tasks may fill
# Task timeouts well above the tasks' durations, and below the default 60 s: an attempt whose worker was killed
# is re-sent after timeout + grace (its claim then found expired and the attempt retried), so this bounds recovery.
SLOW_TIMEOUT_S = 30
SHORT_TIMEOUT_S = 20

#: the chaos experiment types; every task runs the ``mark`` executor, the experiment sets ``mark_dir``
TEMPLATES: dict[str, dict[str, Any]] = {
    "chaos-slow": {
        "type": "chaos-slow",
        "description": "Real-duration tasks (2-6 s each, longer than a failover); each execution leaves a marker.",
        "params": {"mark_dir": None},
        "tasks": [
            {"name": "stage", "kind": "data_staging", "executor": "mark", "params": {"seconds": 2},
             "timeout_s": SLOW_TIMEOUT_S},
            {"name": "compute_a", "kind": "job_submission", "executor": "mark", "params": {"seconds": 6},
             "timeout_s": SLOW_TIMEOUT_S, "depends_on": ["stage"]},
            {"name": "compute_b", "kind": "job_submission", "executor": "mark", "params": {"seconds": 4},
             "timeout_s": SLOW_TIMEOUT_S, "depends_on": ["stage"]},
            {"name": "collect", "kind": "output_staging", "executor": "mark", "params": {"seconds": 3},
             "timeout_s": SLOW_TIMEOUT_S, "depends_on": ["compute_a", "compute_b"]},
        ],
    },
    "chaos-chain": {
        "type": "chaos-chain",
        "description": "A chain of 4 short tasks (20 ms); each execution leaves a marker.",
        "params": {"mark_dir": None, "seconds": 0.02},
        "tasks": [
            {"name": "stage_in", "kind": "data_staging", "executor": "mark", "timeout_s": SHORT_TIMEOUT_S},
            {"name": "submit_job", "kind": "job_submission", "executor": "mark", "timeout_s": SHORT_TIMEOUT_S,
             "depends_on": ["stage_in"]},
            {"name": "monitor", "kind": "monitoring", "executor": "mark", "timeout_s": SHORT_TIMEOUT_S,
             "depends_on": ["submit_job"]},
            {"name": "stage_out", "kind": "output_staging", "executor": "mark", "timeout_s": SHORT_TIMEOUT_S,
             "depends_on": ["monitor"]},
        ],
    },
    "chaos-wide": {
        "type": "chaos-wide",
        "description": f"{WIDE_ROOTS} roots ready at once (100 ms each) and a join; for bursts larger than the "
                       "workers' prefetch.",
        "params": {"mark_dir": None, "seconds": 0.1},
        "tasks": [*({"name": f"part_{i:02d}", "kind": "job_submission", "executor": "mark",
                     "timeout_s": SHORT_TIMEOUT_S} for i in range(1, WIDE_ROOTS + 1)),
                  {"name": "join", "kind": "output_staging", "executor": "mark", "timeout_s": SHORT_TIMEOUT_S,
                   "depends_on": [f"part_{i:02d}" for i in range(1, WIDE_ROOTS + 1)]}],
    },
}
#: task-seconds of work per experiment of each type (for the load's rate)
WORK_S = {"chaos-slow": 15.0, "chaos-chain": 0.08, "chaos-wide": WIDE_ROOTS * 0.1 + 0.1}
#: the steady load of each mix
MIXES: dict[str, tuple[str, ...]] = {"slow": ("chaos-slow",), "chain": ("chaos-chain",),
                                     "mixed": ("chaos-slow", "chaos-chain")}

# --- poison ---------------------------------------------------------------------------------------------------
_RESPONSE = {"v": 1, "experiment_id": "", "task": "a", "attempt": 1, "outcome": "success", "result": {},
             "error": None, "worker": "worker-1", "started_at": 1.0, "ended_at": 2.0}
_REQUEST = {"v": 1, "experiment_id": "", "task": "a", "kind": "job_submission", "executor": "noop", "params": {},
            "timeout_s": 9.5, "attempt": 1, "epoch": 7, "dispatched_at": 1.5}


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()  # ensure_ascii: a lone surrogate travels as "\ud800", as a client could send it


def poison_bodies(tag: str) -> list[tuple[str, bytes]]:
    """(queue, body) of every poison message of one round; ``tag`` (an id: 1-64 printable characters) makes
    each body unique. All are dead-lettered: malformed, or a response about no experiment."""
    raw = tag.encode()
    return [
        (RESPONSES, _json({**_RESPONSE, "experiment_id": "\ud800", "worker": tag})),  # issue 12's message
        (RESPONSES, b"\xff\xfe\x00" + raw),
        (RESPONSES, _json({**_RESPONSE, "experiment_id": tag, "attempt": 2**40})),
        (RESPONSES, _json({**_RESPONSE, "experiment_id": tag}).replace(b'"ended_at": 2.0', b'"ended_at": 1e999')),
        (RESPONSES, b'{"v": 1, "worker": "' + raw + b'", "result": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        (RESPONSES, _json({**_RESPONSE, "experiment_id": tag})),  # well-formed: an unknown task
        (SUBMISSIONS, _json({"v": 1, "experiment_id": "\ud800" + tag})),
        (SUBMISSIONS, b"\x00\xff" + raw),
        (SUBMISSIONS, _json({"v": 1, "experiment_id": tag, "extra": True})),
        (SUBMISSIONS, _json({"v": 2, "experiment_id": tag})),
        (REQUESTS, _json({**_REQUEST, "experiment_id": "\ud800", "params": {"tag": tag}})),
        (REQUESTS, _json({**_REQUEST, "experiment_id": tag, "epoch": -1})),
        (REQUESTS, b"\xff" + raw),
        (REQUESTS, _json({**_REQUEST, "experiment_id": tag, "params": {"file": "caf\udce9"}})),
    ]


def like_prefix(prefix: str) -> str:
    """A SQL ``LIKE`` pattern for the ids that start with ``prefix``."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass
class Workload:
    """One chaos run's adversarial workload (see the module docstring). ``mix``: ``slow``, ``chain`` or
    ``mixed`` (the steady load's types, :data:`MIXES`)."""

    cfg: Config
    prefix: str
    mix: str = "chain"
    workers: int = 2
    extra_ids: list[str] = field(default_factory=list)          # experiments of the bursts (all must complete)
    poison_sent: list[tuple[str, bytes]] = field(default_factory=list)
    bursts: int = 0

    @property
    def mark_dir(self) -> Path:
        return self.cfg.home / "chaos" / "marks" / self.prefix.rstrip("-")

    @property
    def types(self) -> tuple[str, ...]:
        return MIXES[self.mix]

    @property
    def params(self) -> dict[str, str]:
        return {"mark_dir": str(self.mark_dir)}

    def max_rate(self, concurrency: int) -> float:
        """Experiments per second that keep the workers' slots about half busy with the steady load."""
        work = sum(WORK_S[t] for t in self.types) / len(self.types)
        return UTILISATION * self.workers * concurrency / work

    def install(self) -> None:
        """Register the chaos types (an unchanged template keeps its version) and create the mark dir."""
        with Experiments(self.cfg) as exps:
            for data in TEMPLATES.values():
                exps.dags.register_template(parse_template(data, KNOWN_EXECUTORS))
        self.mark_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def remove(self) -> None:
        shutil.rmtree(self.mark_dir, ignore_errors=True)

    # --- bursts ------------------------------------------------------------------------------------------
    def burst(self, factor: float) -> dict[str, Any]:
        """Submit at once enough ``chaos-wide`` experiments for more than ``factor`` × workers ×
        ``worker_prefetch`` ready tasks; their ids join :attr:`extra_ids` before the submit (so a submit that
        fails halfway is still checked). Returns the burst's size."""
        ready = math.floor(factor * self.workers * self.cfg.worker_prefetch) + 1
        count = math.ceil(ready / WIDE_ROOTS)
        self.bursts += 1
        ids = [f"{self.prefix}b{self.bursts}-{i:04d}" for i in range(count)]
        self.extra_ids += ids
        started = time.monotonic()
        with Experiments(self.cfg) as exps:
            for at in range(0, count, BURST_CHUNK):
                chunk = ids[at:at + BURST_CHUNK]
                for attempt in range(BURST_ATTEMPTS):
                    try:
                        exps.submit_many("chaos-wide", chunk, params=self.params)
                        break
                    except HaorchError:
                        if attempt == BURST_ATTEMPTS - 1:
                            raise
                        time.sleep(1.0)
        return {"burst_experiments": count, "burst_ready_tasks": count * WIDE_ROOTS,
                "prefetch_total": self.workers * self.cfg.worker_prefetch,
                "burst_submit_s": round(time.monotonic() - started, 3)}

    def queue_depth(self, queue: str = REQUESTS) -> int:
        """Messages ready in ``queue`` (not counting those workers have prefetched)."""
        with rabbitmq_boundary(self.cfg):
            conn = pika.BlockingConnection(amqp_parameters(self.cfg, heartbeat_s=0, name="chaos-probe"))
            try:
                return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
            finally:
                conn.close()

    # --- poison ------------------------------------------------------------------------------------------
    def publish_poison(self, round_tag: str) -> int:
        """Publish one round of :func:`poison_bodies` (confirmed, persistent); returns how many."""
        bodies = poison_bodies(f"{self.prefix}p{round_tag}")
        with rabbitmq_boundary(self.cfg):
            conn = pika.BlockingConnection(amqp_parameters(self.cfg, heartbeat_s=0, name="chaos-poison"))
            try:
                channel = conn.channel()
                channel.confirm_delivery()
                persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
                for queue, body in bodies:
                    channel.basic_publish("", queue, body, persistent)
                    self.poison_sent.append((queue, body))
            finally:
                conn.close()
        return len(bodies)

    def poison_outcome(self, timeout_s: float) -> dict[str, Any]:
        """Wait (bounded) until every poison body sent is in ``haorch.dead``; what was found, with reasons."""
        want = set(self.poison_sent)
        reasons: dict[tuple[str, bytes], str] = {}
        deadline = time.monotonic() + timeout_s
        error = None
        while want - set(reasons):
            try:
                self._take_dead_letters(want, reasons)
            except DependencyError as exc:  # the broker restarting: look again until the deadline
                error = str(exc)
            if not want - set(reasons) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        missing = sorted(want - set(reasons))
        return {"sent": len(want), "dead_lettered": len(reasons), "last_error": error,
                "without_reason": sum(1 for r in reasons.values() if not r),
                "by_queue": dict(Counter(q for q, _ in reasons)),
                "reasons": dict(Counter(r.split(":")[0][:60] for r in reasons.values()).most_common(10)),
                "missing": [f"{q}: {b[:80]!r}" for q, b in missing[:10]], "missing_count": len(missing)}

    def _take_dead_letters(self, want: set[tuple[str, bytes]], reasons: dict[tuple[str, bytes], str]) -> None:
        """One pass over haorch.dead: acknowledge (take) the wanted bodies, leave the others to the queue."""
        with rabbitmq_boundary(self.cfg):
            conn = pika.BlockingConnection(amqp_parameters(self.cfg, heartbeat_s=0, name="chaos-dead"))
            try:
                channel = conn.channel()
                waiting = int(channel.queue_declare(DEAD, passive=True).method.message_count)
                for _ in range(min(waiting, DEAD_SCAN_MAX)):
                    method, props, body = channel.basic_get(DEAD, auto_ack=False)
                    if method is None:
                        break
                    headers = props.headers or {}
                    key = (str(headers.get("x-haorch-source-queue")), bytes(body))
                    if key in want:
                        reasons.setdefault(key, str(headers.get("x-haorch-reason") or ""))
                        channel.basic_ack(method.delivery_tag)
            finally:
                conn.close()  # the unacknowledged (other) dead letters return to the queue

    # --- exactly once ------------------------------------------------------------------------------------
    def exactly_once(self) -> dict[str, Any]:
        """Marker files against the SUCCEEDED transitions of the run's experiments."""
        try:
            names = os.listdir(self.mark_dir)
        except FileNotFoundError:
            names = []
        twice = sorted(n for n in names if ".twice." in n)
        markers = set(names) - set(twice)
        like = like_prefix(self.prefix)
        succeeded = query(self.cfg, "SELECT experiment_id, task, attempt FROM transitions WHERE experiment_id "
                          "LIKE %s AND task IS NOT NULL AND to_state = %s", (like, TaskStatus.SUCCEEDED))
        unmarked = sorted(f"{e}.{t}.{a}" for e, t, a in succeeded if f"{e}.{t}.{a}" not in markers)
        twice_attempts = sorted({n.split(".twice.")[0] for n in twice})
        return {"markers": len(markers), "twice_files": len(twice), "attempts_executed_twice": len(twice_attempts),
                "twice_examples": twice_attempts[:10], "succeeded_transitions": len(succeeded),
                "succeeded_without_marker": len(unmarked), "unmarked_examples": unmarked[:10]}
