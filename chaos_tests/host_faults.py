"""Host-level faults for a lab (``haorch lab``, node/lab/) or, for the cluster-member ones, any ``ha`` topology.

    host-crash       SIGKILL every process of a member host at once (its cgroup); undo: restart the host
    host-isolate     drop all traffic of a member host both ways for ``down_s``; undo: heal
    partition        cut a member host off from the other two member hosts only (a 2|1 partition; it still reaches
                     the Neo4j host and this machine); undo: heal
    rabbit-leader    SIGKILL the RabbitMQ node that leads ``haorch.responses``; undo: start it again
    galera-wipe      SIGKILL a Galera member and delete its data directory; undo: start it (it rejoins by SST)
    rolling-restart  ``haorch cluster restart --rolling`` under load (inject does it all; undo nothing)

Each is bounded (``hold_s``) and undone idempotently, like the faults of :mod:`chaos_tests.faults`. What a
campaign measures per fault: the longest pause between task successes while the fault lasts (``stall_s``) and
after its undo (``repair_stall_s``); see :func:`stalls`.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.probes import query
from chaos_tests.faults import Fault
from chaos_tests.workloads import like_prefix
from node import cluster
from node.config import HA_MEMBERS, RABBIT_VHOST, Config
from node.errors import ServiceError, UsageError
from node.lab import lab
from node.model.states import TaskStatus
from node.runtime.placement import lab_hosts, placement
from node.runtime.process import wait_gone
from node.stack import manager
from node.stack.rabbitmq import RabbitMQ
from node.stores.queues import RESPONSES

HOST_KINDS = ("host-crash", "host-isolate", "partition", "rabbit-leader", "galera-wipe", "rolling-restart")
LAB_ONLY = ("host-crash", "host-isolate", "partition")
STALL_WINDOW_S = 60.0


def _require_lab(cfg: Config) -> None:
    if not lab_hosts(cfg):
        raise UsageError("host faults need a lab (`haorch lab up`)")


def _require_ha(cfg: Config) -> None:
    if cfg.topology != "ha":
        raise UsageError("this fault needs the ha topology (`haorch stack up --topology ha` or a lab)")


@dataclass
class HostFault(Fault):
    """A host-level fault: its undo returns once the clusters are whole again (:func:`wait_settled`, recorded as
    ``settle_s``), so that the next fault of a campaign is a single fault. ``undone_at`` stays the moment of the
    undo itself: the stall after the undo covers the settling."""

    def undo(self) -> None:
        super().undo()
        if self.injected_at is not None and "settle_s" not in self.detail:
            self.detail["settle_s"] = wait_settled(self.cfg)


@dataclass
class HostCrash(HostFault):
    """Every process of member host ``host`` killed at once; undone by starting them again."""

    name: str = "host-crash"
    host: int = 1
    down_s: float = 8.0

    def _inject(self) -> None:
        _require_lab(self.cfg)
        self.detail.update({"victim": f"host-{self.host}", "leader_on_victim": _leader_on(self.cfg, self.host)})
        self.detail["killed"] = lab.crash(self.cfg, f"host-{self.host}")["killed"]

    def _undo(self) -> None:
        if "victim" in self.detail:
            self.detail["restart_s"] = lab.restart(self.cfg, f"host-{self.host}")["seconds"]


#: after a host fault's undo, how long the clusters may take to be whole again, and for how long they must stay so
SETTLE_TIMEOUT_S = 120.0
SETTLE_HOLD_S = 3.0


def wait_settled(cfg: Config, timeout_s: float = SETTLE_TIMEOUT_S) -> float | None:
    """Bounded: every stack service answers its probe (each ZooKeeper member serves as leader or follower, each
    RabbitMQ node takes an AMQP connection, each Galera member is Primary and ready) and no RabbitMQ node reports a
    partition — twice in a row, SETTLE_HOLD_S apart (autoheal restarts the losing side a moment after a partition
    ends, and a ZooKeeper member takes a moment to sync). Seconds it took; None if not within ``timeout_s``.

    A campaign waits for this before its next fault: a fault that lands while the previous one still heals is a
    double fault (the lab showed it: a host cut off while another's ZooKeeper member had not rejoined lost the
    ensemble's quorum for 11 s), not the single fault the goals are about."""
    began = time.monotonic()
    streak = 0
    while time.monotonic() - began < timeout_s:
        if all(s.healthy() for s in manager.services(cfg)) and not _rabbit_partitions(cfg):
            streak += 1
            if streak == 2:
                return round(time.monotonic() - began, 2)
            time.sleep(SETTLE_HOLD_S)
        else:
            streak = 0
            time.sleep(0.5)
    return None


def _rabbit_partitions(cfg: Config) -> bool:
    """Whether a RabbitMQ cluster node reports a partition (or does not answer the question)."""
    for service in manager.services(cfg):
        if isinstance(service, RabbitMQ) and service.member:
            try:
                out = service.cli("rabbitmqctl", "eval", "rabbit_node_monitor:partitions().", timeout_s=15)
            except subprocess.TimeoutExpired:
                return True
            if out.returncode != 0 or out.stdout.strip() != "[]":
                return True
    return False


@dataclass
class HostIsolate(HostFault):
    """Member host ``host`` cut off (from everyone, or with ``peers`` from those hosts only) for ``down_s``."""

    name: str = "host-isolate"
    host: int = 1
    peers: tuple[int, ...] = ()
    down_s: float = 20.0

    def _inject(self) -> None:
        _require_lab(self.cfg)
        self.detail.update({"victim": f"host-{self.host}", "leader_on_victim": _leader_on(self.cfg, self.host),
                            "from": [f"host-{p}" for p in self.peers] or "all"})
        lab.isolate(self.cfg, f"host-{self.host}", [f"host-{p}" for p in self.peers] or None)

    def hold(self) -> None:
        """Hold for ``down_s``; when the victim led, watch it from inside its host (which still reaches itself) and
        record when it stopped acting as leader (``stepped_down_s``)."""
        deadline = time.monotonic() + self.down_s
        if self.detail.get("leader_on_victim"):
            start = time.time()
            while time.monotonic() < deadline:
                if _role_inside(self.cfg, self.host) not in ("leader", None):
                    self.detail["stepped_down_s"] = round(time.time() - start, 3)
                    break
                time.sleep(0.2)
        time.sleep(max(0.0, deadline - time.monotonic()))

    def _undo(self) -> None:
        if "victim" in self.detail:
            lab.heal(self.cfg, f"host-{self.host}")


@dataclass
class KillService(HostFault):
    """SIGKILL one stack service process (``wipe``: and delete its data directory); undo starts it again and waits
    until it answers."""

    name: str = "kill-service"
    service: str = ""
    wipe: bool = False
    down_s: float = 5.0

    def _inject(self) -> None:
        _require_ha(self.cfg)
        if not self.service:  # the responses queue's leader, found now
            self.service = f"rabbitmq-{responses_leader(self.cfg)}"
        service = manager.find_service(self.cfg, self.service)
        if service is None:
            raise ServiceError(f"no service {self.service!r} in this stack")
        self.detail.update({"victim": self.service, "pid": service.proc.pid()})
        service.proc.kill()
        if self.detail["pid"]:
            wait_gone(self.detail["pid"], 10.0)
        if self.wipe:
            shutil.rmtree(self.cfg.data_dir(self.service), ignore_errors=True)
            self.detail["wiped"] = True

    def _undo(self) -> None:
        if "victim" not in self.detail:
            return
        service = manager.find_service(self.cfg, self.service)
        if service is not None and not service.proc.alive():
            t0 = time.monotonic()
            service.start()
            manager.wait_ready(service, lambda _m: None)
            self.detail["restart_s"] = round(time.monotonic() - t0, 2)


def rabbit_leader(cfg: Config) -> KillService:
    """The RabbitMQ node that leads the responses queue, found when the fault is injected."""
    return KillService(cfg, name="rabbit-leader")


#: the queue's leader from the local copy of the queue's record (its pid is ``{RaName, LeaderNode}``): no call to
#: other nodes, unlike ``list_queues ... leader``, which was seen to hang for minutes on a healthy cluster
LEADER_OF = ('{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"{vhost}">>, queue, <<"{queue}">>)), '
             'amqqueue:get_pid(Q).')


def responses_leader(cfg: Config, settle_s: float = 60.0) -> int:
    """The member number of the RabbitMQ node leading ``haorch.responses``, asked of a running member once every
    member answers its probe (bounded by ``settle_s``)."""
    brokers = [s for s in manager.services(cfg) if isinstance(s, RabbitMQ)]
    _wait(lambda: all(s.healthy() for s in brokers), settle_s)
    for service in brokers:
        if not service.proc.alive():
            continue
        try:
            answer = service.cli("rabbitmqctl", "eval", LEADER_OF.format(vhost=RABBIT_VHOST, queue=RESPONSES),
                                 timeout_s=15).stdout
        except subprocess.TimeoutExpired:  # a member that does not answer: ask the next
            continue
        node = answer.strip().rstrip("}").split(",")[-1].strip().strip("'")
        if "@" in node:
            return _member_of(cfg, node)
    raise ServiceError(f"no RabbitMQ member answered who leads {RESPONSES}")


def _member_of(cfg: Config, node_name: str) -> int:
    for m in range(1, HA_MEMBERS + 1):
        if node_name.startswith(f"haorch{cfg.port_base}-{m}@"):
            return m
    raise ServiceError(f"unknown RabbitMQ node {node_name!r}")


@dataclass
class RollingRestart(HostFault):
    """``cluster restart --rolling`` under load: inject restarts every node, one at a time."""

    name: str = "rolling-restart"
    down_s: float = 0.0

    def _inject(self) -> None:
        self.detail.update({"victim": "nodes", "started_at": time.time()})
        self.detail["nodes"] = cluster.restart(self.cfg, rolling=True)

    def _undo(self) -> None:
        """Nothing to revert: the nodes run again when inject returns."""


def host_spec(kind: str, rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind}
    if kind in ("host-crash", "host-isolate", "partition", "galera-wipe"):
        out["host"] = rng.randint(1, HA_MEMBERS)
    return out


def make_host_fault(cfg: Config, spec: dict[str, Any]) -> Fault:
    kind, host = spec["kind"], int(spec.get("host", 1))
    if kind == "host-crash":
        return HostCrash(cfg, host=host)
    if kind == "host-isolate":
        return HostIsolate(cfg, host=host)
    if kind == "partition":
        return HostIsolate(cfg, name="partition", host=host,
                           peers=tuple(p for p in range(1, HA_MEMBERS + 1) if p != host))
    if kind == "rabbit-leader":
        return rabbit_leader(cfg)
    if kind == "galera-wipe":
        return KillService(cfg, name="galera-wipe", service=f"mariadb-{host}", wipe=True, down_s=3.0)
    if kind == "rolling-restart":
        return RollingRestart(cfg)
    raise ValueError(f"unknown host fault {kind!r}")


def _role_inside(cfg: Config, host: int) -> str | None:
    """The role node ``host`` reports on /readyz, asked from inside its own host (None: no answer)."""
    place = placement(cfg, f"node-{host}")
    if place is None:
        return None
    try:
        out = subprocess.run(place.argv(["curl", "-s", "--max-time", "1", f"{cfg.node_url(host)}/readyz"],
                                        in_cgroup=False), capture_output=True, text=True, timeout=5)
        return str(json.loads(out.stdout).get("role"))
    except (subprocess.SubprocessError, ValueError, AttributeError):
        return None


def _leader_on(cfg: Config, host: int) -> bool:
    row = cluster.leader(cfg)
    return row is not None and int(row["node_id"].split("-")[1]) == host


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def _longest_gap(start: float, end: float, times: list[float]) -> float:
    """The longest interval in [start, end] without a time of ``times`` (``end`` bounds the last gap)."""
    points = [start, *sorted(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(points))


def stalls(cfg: Config, prefix: str, records: list[dict[str, Any]]) -> None:
    """Per fault record: ``stall_s``, the longest pause between task successes of the run from the injection
    until the undo (or ``STALL_WINDOW_S``), and ``repair_stall_s``, the same from the undo for 30 s or until the
    next fault — "advancing
    again within N s" is ``stall_s`` ≤ N. The successes come from MariaDB's transitions. A window after which the
    run made no more progress (its load was over) measures nothing: left None."""
    rows = query(cfg, "SELECT MAX(at) FROM transitions WHERE to_state = %s AND experiment_id LIKE %s",
                 (TaskStatus.SUCCEEDED, like_prefix(prefix)))
    last = float(rows[0][0]) if rows and rows[0][0] is not None else 0.0
    starts = sorted(r.get("started_at", r.get("injected_at")) or 0.0 for r in records)
    for rec in records:
        start, undone = rec.get("started_at", rec.get("injected_at")), rec.get("undone_at")
        if start is None:
            continue
        end = min(undone or start + STALL_WINDOW_S, start + STALL_WINDOW_S)
        # the repair window ends where the next fault begins
        until = min([(undone or end) + 30.0, *(s for s in starts if s > (undone or end))])
        rows = query(cfg, "SELECT at FROM transitions WHERE to_state = %s AND at BETWEEN %s AND %s "
                     "AND experiment_id LIKE %s", (TaskStatus.SUCCEEDED, start, until, like_prefix(prefix)))
        times = [float(r[0]) for r in rows]
        rec["stall_s"] = round(_longest_gap(start, max(end, start + 0.001), times), 3) if last > end else None
        if undone:
            rec["repair_stall_s"] = round(_longest_gap(undone, until, times), 3) if last > until else None
