"""Faults for chaos runs: each a small object with ``inject()``, ``hold()`` and an idempotent ``undo()``.

    fault = KillLeader(cfg)
    try:
        fault.inject()      # SIGKILL the acting leader (records victim, pid, epoch, time)
        fault.hold()        # bounded: here until a newer epoch leads (or a timeout)
    finally:
        fault.undo()        # restart the victim; safe to call twice, and after a failed inject

Every fault is bounded in time (``hold()`` never waits longer than its ``max_hold_s``) and touches only the
programs of its own state dir and, for the partition, loopback traffic to its own ZooKeeper client ports. It acts
through the programs' handles (``node/runtime/``), so the same fault drives processes (signals by PID) or, with
``runtime = "docker"``, containers through the docker SDK (``docker kill``, ``pause``/``unpause``, stop and
start). ``random_mix(seed, count)`` gives a reproducible list of fault *specs* (name + fixed parameters);
``make_fault(cfg, spec)`` turns one into a fault.

The adversarial faults (``random_mix(seed, count, ADVERSARIAL_KINDS)``) act with a run's
:class:`~chaos_tests.workloads.Workload` (``make_fault(cfg, spec, workload)``): ``backlog-kill-leader`` submits a
burst of more ready tasks than all workers prefetch and kills the leader while the backlog waits in
``haorch.requests``; ``poison-kill-leader`` publishes poison on the three queues just before and just after it
kills the leader; ``freeze-publish`` arms the failpoint ``leader.before_publish`` (``node/failpoints.py``) of the
acting leader, which stops itself between its fenced Neo4j transaction and the publish of the requests it
dispatched, lets a standby take over and advance a DAG, and then continues the old leader, which publishes
its stale requests (the queue is not fenced).

The partition (``PartitionLeader``) cuts the leader's ZooKeeper traffic and nothing else:

- the leader node's process group is moved into a cgroup v2 group of its own,
  ``<cgroup2 mount>/haorch-chaos-<port_base>``, and one iptables rule on ``OUTPUT -o lo`` drops every new packet
  that a socket of that cgroup sends to a ZooKeeper client port of this stack (``-m cgroup --path``);
- a socket keeps the cgroup it was *created* in, so the leader's already established ZooKeeper connection is cut
  by two more rules per connection, matching its exact loopback port pair in both directions (found from
  ``/proc/<pid>/fd`` and ``/proc/net/tcp``);
- every rule carries ``-m comment --comment haorch-chaos-<port_base>``; ``undo()`` deletes exactly the rules it
  added and then every rule still carrying that comment (``cleanup()``), moves the processes back to the root
  cgroup and removes the group. ``cleanup(cfg)`` alone does the same after a crash.
"""

from __future__ import annotations

import logging
import os
import random
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node import cluster, failpoints
from node.config import ZK_MEMBERS, Config
from node.errors import ServiceError, UsageError
from node.runtime.handle import Handle
from node.runtime.process import wait_gone
from node.runtime.programs import names, recorded
from node.stack import manager

if TYPE_CHECKING:
    from chaos_tests.workloads import Workload

log = logging.getLogger(__name__)

COMMENT_PREFIX = "haorch-chaos"
LEADER_FAULT_WAIT_S = 30.0      # bound on waiting for a new leader after a leader fault
BACKLOG_WAIT_S = 20.0           # bound on waiting for a burst's requests to queue up beyond the prefetch
FAILPOINT_WAIT_S = 30.0         # bound on waiting for the leader to reach the failpoint (it needs dispatches)
FAILPOINT = "leader.before_publish"
RECOVERY_WAIT_S = 90.0          # bound on waiting for a leader after any undo


def _now() -> float:
    return time.time()


# --- base ---------------------------------------------------------------------------------------------------
@dataclass
class Fault:
    """One fault. Subclasses set ``name`` and implement ``_inject``/``_undo``; the base keeps the record."""

    cfg: Config
    name: str = "fault"
    injected_at: float | None = None
    undone_at: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    epoch_before: int | None = None
    leader_fault: bool = False
    down_s: float = 1.0  # how long ``hold`` lets the fault last, unless a subclass holds otherwise

    def inject(self) -> dict[str, Any]:
        """Apply the fault once (a second call does nothing); returns its record."""
        if self.injected_at is not None:
            return self.record()
        row = cluster.leader(self.cfg)
        self.epoch_before = row["epoch"] if row else None
        self._inject()
        self.injected_at = _now()
        log.info("chaos: injected %s %s", self.name, self.detail)
        return self.record()

    def hold(self) -> None:
        """Let the fault last (bounded). Default: a fixed pause."""
        time.sleep(self.hold_s())

    def hold_s(self) -> float:
        return self.down_s

    def undo(self) -> None:
        """Revert the fault; idempotent, and safe after a failed or missing inject."""
        self._undo()
        if self.undone_at is None and self.injected_at is not None:
            self.undone_at = _now()

    def record(self) -> dict[str, Any]:
        return {"fault": self.name, "injected_at": self.injected_at, "undone_at": self.undone_at,
                "epoch_before": self.epoch_before, **self.detail}

    def _inject(self) -> None:
        raise NotImplementedError

    def _undo(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Fault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


def _node_number(node_id: str) -> int:
    return int(node_id.split("-")[1])


def _session_s(cfg: Config) -> float:
    return float(cfg.zk_session_timeout_s)


# --- leader faults --------------------------------------------------------------------------------------------
@dataclass
class _LeaderFault(Fault):
    """Base of faults against the acting leader: finds it, remembers node number, pid and epoch."""

    leader_fault: bool = True
    victim: int | None = None
    victim_pid: int | None = None

    def _victim(self) -> Handle:
        """Find the acting leader and remember it; its process."""
        row = cluster.wait_for_leader(self.cfg, LEADER_FAULT_WAIT_S)
        self.victim = _node_number(row["node_id"])
        proc = cluster.node_process(self.cfg, self.victim)
        self.victim_pid = proc.pid()
        self.epoch_before = row["epoch"]
        self.detail.update({"victim": row["node_id"], "pid": self.victim_pid, "epoch": row["epoch"]})
        return proc

    def wait_new_leader(self, timeout_s: float) -> dict[str, Any] | None:
        try:
            row = cluster.wait_for_leader(self.cfg, timeout_s, newer_than=self.epoch_before or 0)
        except ServiceError:
            return None
        self.detail["new_leader"] = row["node_id"]
        self.detail["new_epoch"] = row["epoch"]
        return row

    def _restart_victim(self) -> None:
        if self.victim is None:
            return
        proc = cluster.node_process(self.cfg, self.victim)
        pid = proc.pid()
        # SIGTERM is still being handled (or SIGKILL not yet reaped): bounded wait, then make sure
        if pid is not None and pid == self.victim_pid and not wait_gone(pid, 15.0):
            proc.thaw()
            proc.kill()
            wait_gone(pid, 5.0)
        cluster.start_node(self.cfg, self.victim)


@dataclass
class KillLeader(_LeaderFault):
    """SIGKILL (or another signal) to the leader; held until a newer epoch leads; undo restarts the node."""

    name: str = "kill-leader"
    sig: str = "KILL"

    def _inject(self) -> None:
        proc = self._victim()
        self.detail["signal"] = self.sig
        proc.signal(cluster.SIGNALS[self.sig])

    def hold(self) -> None:
        self.wait_new_leader(_session_s(self.cfg) + LEADER_FAULT_WAIT_S)

    def _undo(self) -> None:
        self._restart_victim()


@dataclass
class StopLeader(KillLeader):
    """SIGTERM: the leader hands over gracefully; undo restarts it once it has exited."""

    name: str = "stop-leader"
    sig: str = "TERM"


@dataclass
class _TimedLeaderFault(_LeaderFault):
    """A leader fault that lasts ``extra_s`` longer than the ZooKeeper session timeout (so the session expires)."""

    extra_s: float = 1.5

    def hold_s(self) -> float:
        return _session_s(self.cfg) + self.extra_s

    def hold(self) -> None:
        started = time.monotonic()
        self.wait_new_leader(self.hold_s() + LEADER_FAULT_WAIT_S)
        time.sleep(max(0.0, self.hold_s() - (time.monotonic() - started)))


@dataclass
class FreezeLeader(_TimedLeaderFault):
    """SIGSTOP the leader's process group for longer than the session timeout, then SIGCONT."""

    name: str = "freeze-leader"

    def _inject(self) -> None:
        proc = self._victim()
        self.detail["frozen_s"] = self.hold_s()
        proc.freeze()

    def _undo(self) -> None:
        if self.victim is None:
            return
        proc = cluster.node_process(self.cfg, self.victim)
        if proc.pid() is not None and proc.pid() == self.victim_pid:
            proc.thaw()
        else:
            cluster.start_node(self.cfg, self.victim)


@dataclass
class _WorkloadKillLeader(KillLeader):
    """A leader kill that acts on the run's workload (``chaos_tests/workloads.py``) around it."""

    workload: Workload | None = None

    def _workload(self) -> Workload:
        if self.workload is None:
            raise UsageError(f"{self.name} needs a run's workload")
        return self.workload


@dataclass
class BacklogKillLeader(_WorkloadKillLeader):
    """Submit a burst of more ready tasks than ``factor`` × all workers' prefetch, wait (bounded) until half of
    the excess waits in ``haorch.requests`` (the workers hold the prefetched rest), then SIGKILL the leader: its
    successor's takeover finds the backlog dispatched and not executed."""

    name: str = "backlog-kill-leader"
    factor: float = 1.5

    def _inject(self) -> None:
        workload = self._workload()
        burst = workload.burst(self.factor)
        self.detail.update(burst)
        target = max(1, (burst["burst_ready_tasks"] - burst["prefetch_total"]) // 2)
        deadline = time.monotonic() + BACKLOG_WAIT_S
        depth = 0
        while time.monotonic() < deadline:
            depth = workload.queue_depth()
            if depth >= target:
                break
            time.sleep(0.05)
        self.detail["queued_at_kill"] = depth
        super()._inject()


@dataclass
class PoisonKillLeader(_WorkloadKillLeader):
    """SIGKILL the leader between two rounds of poison messages on the three queues (one just before the kill,
    one just after it, while no leader acts yet); the rounds are the workload's to check afterwards."""

    name: str = "poison-kill-leader"
    n: int = 0

    def _inject(self) -> None:
        self.detail["poison"] = self._workload().publish_poison(f"{self.n}a")
        super()._inject()

    def hold(self) -> None:
        if self.workload is not None:
            self.detail["poison"] += self.workload.publish_poison(f"{self.n}b")
        super().hold()


@dataclass
class FreezeBeforePublish(_LeaderFault):
    """The acting leader stops itself at the failpoint ``leader.before_publish`` (after its batch's fenced Neo4j
    transaction, before publishing the requests it dispatched and writing MariaDB); held until a newer epoch leads (the
    scenario then waits for that epoch's first advance); undo continues the old leader (SIGCONT), which publishes
    its stale requests."""

    name: str = "freeze-publish"

    def _inject(self) -> None:
        proc = self._victim()
        node_id, pid = self.detail["victim"], self.victim_pid
        if pid is None:
            raise ServiceError(f"{self.name}: the leader has no pid")
        failpoints.arm(self.cfg, node_id, FAILPOINT)
        deadline = time.monotonic() + FAILPOINT_WAIT_S
        while not process_stopped(pid):
            if time.monotonic() > deadline or not proc.alive():
                failpoints.disarm(self.cfg, node_id, FAILPOINT)
                raise ServiceError(f"{self.name}: {node_id} did not reach {FAILPOINT} within {FAILPOINT_WAIT_S:g} s")
            time.sleep(0.01)
        self.detail["stopped_at"] = _now()

    def hold(self) -> None:
        self.wait_new_leader(_session_s(self.cfg) + LEADER_FAULT_WAIT_S)

    def _undo(self) -> None:
        if self.victim is None:
            return
        failpoints.disarm(self.cfg, f"node-{self.victim}", FAILPOINT)
        proc = cluster.node_process(self.cfg, self.victim)
        pid = proc.pid()
        if pid is None or pid != self.victim_pid:
            cluster.start_node(self.cfg, self.victim)
        elif process_stopped(pid):
            proc.thaw()
            self.detail.setdefault("resumed_at", _now())


def process_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped by a signal (state T in /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].startswith(("T", "t"))


# --- the partition ------------------------------------------------------------------------------------------
def _cgroup2_root() -> Path:
    """Mount point of the cgroup v2 hierarchy (pure v2 at /sys/fs/cgroup, or hybrid at .../unified)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    raise ServiceError("no cgroup v2 hierarchy mounted (needed for the partition fault)")


def comment(cfg: Config) -> str:
    return f"{COMMENT_PREFIX}-{cfg.port_base}"


def cgroup_name(cfg: Config) -> str:
    return f"{COMMENT_PREFIX}-{cfg.port_base}"


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise ServiceError(f"iptables {' '.join(args)}: {result.stderr.strip()}")
    return result


def chaos_rules(cfg: Config | None = None) -> list[str]:
    """``iptables -S OUTPUT`` lines carrying our comment (of ``cfg``'s stack, or of any haorch stack)."""
    out = _iptables("-S", "OUTPUT", check=False).stdout.splitlines()
    found = []
    for line in out:
        words = shlex.split(line)
        if words[:2] != ["-A", "OUTPUT"] or "--comment" not in words:
            continue
        tag = words[words.index("--comment") + 1]
        if tag == comment(cfg) if cfg is not None else tag.startswith(COMMENT_PREFIX):
            found.append(line)
    return found


def established_sockets(pids: list[int], zk_ports: set[int]) -> list[tuple[int, int]]:
    """(local port, remote port) of the TCP connections that ``pids`` hold to ``zk_ports`` (from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        local, remote, inode = cols[1], cols[2], cols[9]
        if inode in inodes and int(remote.split(":")[1], 16) in zk_ports:
            found.append((int(local.split(":")[1], 16), int(remote.split(":")[1], 16)))
    return found


def cleanup(cfg: Config) -> int:
    """Delete every iptables rule with this stack's chaos comment, empty and remove its cgroup, disarm every
    failpoint of the state dir; returns the number of rules deleted. Safe to call any time (also when nothing was
    injected)."""
    failpoints.disarm_all(cfg)
    deleted = 0
    for _ in range(200):  # bounded: one rule per pass
        rules = chaos_rules(cfg)
        if not rules:
            break
        result = subprocess.run(["iptables", "-w", "5", "-D", *shlex.split(rules[0])[1:]], capture_output=True,
                                text=True, timeout=30)
        if result.returncode != 0:
            log.warning("chaos cleanup: could not delete %s: %s", rules[0], result.stderr.strip())
            break
        deleted += 1
    try:
        group = _cgroup2_root() / cgroup_name(cfg)
    except ServiceError:
        return deleted
    _release_cgroup(group)
    return deleted


def _release_cgroup(group: Path) -> None:
    if not group.is_dir():
        return
    root_procs = group.parent / "cgroup.procs"
    for _ in range(20):  # bounded: processes may fork while we move them
        try:
            pids = [p for p in (group / "cgroup.procs").read_text().split() if p]
        except OSError:
            break
        if not pids:
            break
        for pid in pids:
            try:
                root_procs.write_text(pid)
            except OSError:
                pass  # gone already
    try:
        group.rmdir()
    except OSError as exc:
        log.warning("chaos cleanup: could not remove cgroup %s: %s", group, exc)


@dataclass
class PartitionLeader(_TimedLeaderFault):
    """Cut the leader from ZooKeeper (iptables on loopback, by its cgroup and its connections) for longer than the
    session timeout; its other traffic (RabbitMQ, MariaDB, Neo4j, HTTP) still flows."""

    name: str = "partition-leader"
    extra_s: float = 2.0
    rules: list[list[str]] = field(default_factory=list)

    def _inject(self) -> None:
        proc = self._victim()
        if self.victim_pid is None:
            raise ServiceError("partition: the leader has no pid")
        zk_ports = {self.cfg.zk_client_port(m) for m in range(1, ZK_MEMBERS + 1)}
        group = _cgroup2_root() / cgroup_name(self.cfg)
        group.mkdir(exist_ok=True)
        members = proc.pids() or [self.victim_pid]
        for pid in members:
            (group / "cgroup.procs").write_text(str(pid))
        tag = ["-m", "comment", "--comment", comment(self.cfg)]
        base = ["OUTPUT", "-o", "lo", "-s", self.cfg.host, "-d", self.cfg.host, "-p", "tcp"]
        ports = ",".join(str(p) for p in sorted(zk_ports))
        # new connections (kazoo reconnecting to any member) from the leader's cgroup
        leader_cgroup = ["-m", "cgroup", "--path", cgroup_name(self.cfg)]
        self._add([*base, "-m", "multiport", "--dports", ports, *leader_cgroup, *tag, "-j", "DROP"])
        # the connections that already exist (their sockets stay in the cgroup they were created in)
        sockets = established_sockets(members, zk_ports)
        for local, zk in sockets:
            self._add([*base, "--sport", str(local), "--dport", str(zk), *tag, "-j", "DROP"])
            self._add([*base, "--sport", str(zk), "--dport", str(local), *tag, "-j", "DROP"])
        self.detail.update({"cgroup": str(group), "connections": [f"{lp}->{zp}" for lp, zp in sockets],
                            "rules": len(self.rules)})

    def _add(self, spec: list[str]) -> None:
        _iptables("-I", *spec)
        self.rules.append(spec)

    def _undo(self) -> None:
        for spec in reversed(self.rules):
            _iptables("-D", *spec, check=False)
        self.rules.clear()
        cleanup(self.cfg)


# --- workers --------------------------------------------------------------------------------------------------
@dataclass
class KillWorker(Fault):
    """SIGKILL one worker (its process group); undo starts it again."""

    name: str = "kill-worker"
    worker: int = 1

    def _inject(self) -> None:
        proc = cluster.worker_process(self.cfg, self.worker)
        self.detail.update({"victim": f"worker-{self.worker}", "pid": proc.pid()})
        proc.kill()
        if self.detail["pid"]:
            wait_gone(self.detail["pid"], 5.0)

    def _undo(self) -> None:
        if "victim" in self.detail:  # set before the kill, so a kill that raised midway is undone too
            cluster.start_worker(self.cfg, self.worker, self.cfg.worker_concurrency)


# --- stack services -------------------------------------------------------------------------------------------
@dataclass
class StopServices(Fault):
    """Stop stack services (``service.stop()``) for ``down_s``; undo is ``manager.up(cfg)`` (restarts what is down)."""

    name: str = "stop-services"
    services: tuple[str, ...] = ()

    def _inject(self) -> None:
        self.detail["services"] = list(self.services)
        for name in self.services:
            service = manager.find_service(self.cfg, name)
            if service is None:
                raise ServiceError(f"unknown service {name!r}")
            service.stop()

    def _undo(self) -> None:
        if self.injected_at is None and not self.detail.get("services"):
            return
        if all(s.proc.alive() for s in manager.services(self.cfg)):
            return
        manager.up(self.cfg)


def zk_member(cfg: Config, member: int) -> StopServices:
    return StopServices(cfg, name="zk-member", services=(f"zookeeper-{member}",), down_s=2.0)


def zk_quorum(cfg: Config, members: tuple[int, int]) -> StopServices:
    return StopServices(cfg, name="zk-quorum", services=tuple(f"zookeeper-{m}" for m in members),
                        down_s=_session_s(cfg) + 2.0)


def restart_service(cfg: Config, service: str) -> StopServices:
    return StopServices(cfg, name=f"restart-{service}", services=(service,), down_s=0.5)


# --- specs and the random mix ---------------------------------------------------------------------------------
KINDS = ("kill-leader", "stop-leader", "freeze-leader", "partition-leader", "kill-worker", "zk-member",
         "zk-quorum", "restart-rabbitmq", "restart-mariadb", "restart-neo4j")
#: faults only adversarial runs draw (backlog and poison need the run's workload; see the module docstring)
ADVERSARIAL_ONLY = ("backlog-kill-leader", "poison-kill-leader", "freeze-publish")
ADVERSARIAL_KINDS = ("kill-leader", "freeze-leader", "partition-leader", "kill-worker", *ADVERSARIAL_ONLY)
#: the faults against the acting leader (each makes a new epoch: its failover is measured)
LEADER_KINDS = ("kill-leader", "stop-leader", "freeze-leader", "partition-leader", *ADVERSARIAL_ONLY)
#: relative weights of the mix: mostly leader faults, the slow service restarts seldom
MIX_WEIGHTS = {"kill-leader": 6, "stop-leader": 3, "freeze-leader": 3, "partition-leader": 3, "kill-worker": 3,
               "zk-member": 2, "zk-quorum": 1, "restart-rabbitmq": 1, "restart-mariadb": 1, "restart-neo4j": 1,
               "backlog-kill-leader": 3, "poison-kill-leader": 3, "freeze-publish": 4}


def spec(kind: str, rng: random.Random, workers: int = 2) -> dict[str, Any]:
    """A fault spec: the kind plus the parameters chosen now (which worker, which ZooKeeper members)."""
    if kind not in KINDS + ADVERSARIAL_ONLY:
        raise ValueError(f"unknown fault {kind!r}; one of {', '.join(KINDS + ADVERSARIAL_ONLY)}")
    out: dict[str, Any] = {"kind": kind}
    if kind == "kill-worker":
        out["worker"] = rng.randint(1, workers)
    elif kind == "zk-member":
        out["member"] = rng.randint(1, ZK_MEMBERS)
    elif kind == "zk-quorum":
        out["members"] = sorted(rng.sample(range(1, ZK_MEMBERS + 1), 2))
    return out


def random_mix(seed: int, count: int, kinds: tuple[str, ...] = KINDS, workers: int = 2) -> list[dict[str, Any]]:
    """``count`` fault specs drawn from ``kinds`` (weighted by MIX_WEIGHTS), the same list for the same seed."""
    rng = random.Random(seed)
    weights = [MIX_WEIGHTS.get(k, 1) for k in kinds]
    return [spec(rng.choices(kinds, weights)[0], rng, workers) for _ in range(count)]


def make_fault(cfg: Config, fault_spec: dict[str, Any], workload: Workload | None = None, n: int = 0) -> Fault:
    """The fault of ``fault_spec``; ``workload`` is the run's (the adversarial kinds need it), ``n`` its number."""
    kind = fault_spec["kind"]
    if kind == "backlog-kill-leader":
        return BacklogKillLeader(cfg, workload=workload)
    if kind == "poison-kill-leader":
        return PoisonKillLeader(cfg, workload=workload, n=n)
    if kind == "freeze-publish":
        return FreezeBeforePublish(cfg)
    if kind == "kill-leader":
        return KillLeader(cfg)
    if kind == "stop-leader":
        return StopLeader(cfg)
    if kind == "freeze-leader":
        return FreezeLeader(cfg)
    if kind == "partition-leader":
        return PartitionLeader(cfg)
    if kind == "kill-worker":
        return KillWorker(cfg, worker=int(fault_spec.get("worker", 1)))
    if kind == "zk-member":
        return zk_member(cfg, int(fault_spec.get("member", 1)))
    if kind == "zk-quorum":
        return zk_quorum(cfg, tuple(fault_spec.get("members", (1, 2))))
    if kind.startswith("restart-"):
        return restart_service(cfg, kind.split("-", 1)[1])
    raise ValueError(f"unknown fault {kind!r}")


# --- checks used by the scenarios and the tests ---------------------------------------------------------------
def stopped_pids(cfg: Config) -> list[str]:
    """Names of this state dir's programs that are left frozen (a process stopped, a container paused)."""
    return [name for name in names(cfg) if recorded(cfg, name).frozen()]


def wait_recovered(cfg: Config, nodes: int, workers: int, timeout_s: float = RECOVERY_WAIT_S) -> dict[str, Any]:
    """Bounded: every node and worker process runs, every stack service runs, and a leader acts."""
    deadline = time.monotonic() + timeout_s
    problems: list[str] = []
    while time.monotonic() < deadline:
        problems = [f"node-{n}" for n in range(1, nodes + 1) if not cluster.node_process(cfg, n).alive()]
        problems += [f"worker-{n}" for n in range(1, workers + 1) if not cluster.worker_process(cfg, n).alive()]
        problems += [s.name for s in manager.services(cfg) if not s.proc.alive()]
        if not problems and cluster.leader(cfg) is not None:
            return {"recovered": True, "seconds": timeout_s - (deadline - time.monotonic())}
        time.sleep(0.25)
    return {"recovered": False, "missing": problems or ["leader"]}
