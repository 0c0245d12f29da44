"""``haorch demo``: a 3-node cluster under a steady load loses its leader to SIGKILL three times and loses nothing.

    summary = run_demo(cfg, rate=40, duration_s=60, kills=3)   # live view on stderr while it runs
    summary["ok"]                                              # False when an invariant is violated

Steps: check the stack is up → register the built-in types → ``cluster.up`` (3 nodes, 2 workers) → submit the
four built-in types in turn at up to ``rate`` per second for ``duration_s`` (pausing while ``MAX_IN_FLIGHT``
experiments are unfinished, so that a slow machine gets fewer, not a backlog) → SIGKILL the leader ``kills`` times at
even intervals, each time waiting until the new leader has advanced (its first transition row: the failover
time is kill → that row) and restarting the killed node, so that 3 nodes remain → wait for every experiment to
end → check: all COMPLETED (none of the built-ins fails for good), none lost, and every invariant of
:mod:`node.verify` (each task advanced exactly once, order, fencing). The cluster stays up afterwards for a look
at the metrics.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from node import cluster
from node.config import Config
from node.errors import ServiceError
from node.experiments import Experiments
from node.load import Load
from node.model.states import TERMINAL_EXPERIMENT_STATES, ExperimentState
from node.runtime.process import wait_gone
from node.stack import manager
from node.stores.records import Records
from node.verify import EXACTLY_ONCE_KINDS, Scope, check

NODES = 3
WORKERS = 2
SUBMITTERS = 4
DRAIN_TIMEOUT_S = 90.0     # after the last submission, how long the experiments may take to finish
ADVANCE_TIMEOUT_S = 60.0   # after a kill, how long the new leader may take to advance
MAX_IN_FLIGHT = 400        # back-pressure: submissions pause while this many experiments are not finished


@dataclass
class Failover:
    killed: str
    old_epoch: int
    killed_at: float
    new_leader: str | None = None
    new_epoch: int | None = None
    elected_s: float | None = None      # kill -> a standby reports itself leader with a higher epoch
    first_advance_s: float | None = None  # kill -> the new leader's first transition row
    restarted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"killed": self.killed, "old_epoch": self.old_epoch, "new_leader": self.new_leader,
                "new_epoch": self.new_epoch, "elected_s": _round(self.elected_s),
                "failover_s": _round(self.first_advance_s), "restarted": self.restarted}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass
class DemoState:
    """What the live view shows; written by the demo's threads, read by the view."""

    phase: str = "starting"
    leader: str | None = None
    epoch: int | None = None
    states: Counter = field(default_factory=Counter)
    failovers: list[Failover] = field(default_factory=list)
    error: str | None = None


class Demo:
    def __init__(self, cfg: Config, rate: float, duration_s: float, kills: int, console: Console) -> None:
        self.cfg = cfg
        self.rate = rate
        self.duration_s = duration_s
        self.kills = kills
        self.console = console
        self.state = DemoState()
        self.load = Load(cfg, rate=rate, total=max(1, int(rate * duration_s)), threads=SUBMITTERS,
                         gate=lambda: len(self.load.ids) - self._terminal() < MAX_IN_FLIGHT)
        self.records = Records(cfg, retry_for_s=30.0)
        self._killer = threading.Thread(target=self._kill_loop, name="demo-killer", daemon=True)
        self._t0 = 0.0

    # --- the run -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        _require_stack(self.cfg)
        with Experiments(self.cfg) as exps:
            exps.install_builtins()
        self.console.print(f"[bold]haorch demo[/bold]: {NODES} nodes, {WORKERS} workers, {self.load.total} "
                           f"experiments at {self.rate:g}/s of {', '.join(self.load.types)}; SIGKILL the leader "
                           f"{self.kills} times")
        up = cluster.up(self.cfg, nodes=NODES, workers=WORKERS,
                        progress=lambda m: self.console.print(f"[dim]cluster[/dim] {m}"))
        self.state.leader, self.state.epoch = up["leader"], up["epoch"]
        self._t0 = time.time()
        self.load.start()
        self._killer.start()
        try:
            with Live(self._view(), console=self.console, refresh_per_second=4, transient=False) as live:
                self._watch(live)
            return self._summary()
        finally:
            self.load.stop()
            self.records.close()

    def _watch(self, live: Live) -> None:
        """Refresh the view until the load is in, the kills are done and every experiment has ended."""
        drain_deadline = None
        while True:
            self._poll()
            live.update(self._view())
            if time.time() > self._t0 + self.duration_s:
                self.load.stop()  # a steady stream for duration_s, fewer experiments if the cluster lags
            submitted_all = self.load.finished
            if submitted_all and not self._killer.is_alive():
                self.state.phase = "draining"
                drain_deadline = drain_deadline or time.monotonic() + DRAIN_TIMEOUT_S
                if self._terminal() >= len(self.load.ids) or time.monotonic() > drain_deadline:
                    self._poll()
                    live.update(self._view())
                    return
            time.sleep(0.5)

    def _poll(self) -> None:
        try:
            self.state.states = Counter(self.records.states(list(self.load.ids)).values())
            row = cluster.leader(self.cfg)
            if row:
                self.state.leader, self.state.epoch = row["node_id"], row["epoch"]
            else:
                self.state.leader = None
        except Exception as exc:  # noqa: BLE001 - the view must survive a store hiccup
            self.state.error = f"{type(exc).__name__}: {exc}"[:120]

    def _terminal(self) -> int:
        return sum(n for s, n in self.state.states.items() if s in TERMINAL_EXPERIMENT_STATES)

    # --- the faults --------------------------------------------------------------------------------------
    def _kill_loop(self) -> None:
        interval = self.duration_s / (self.kills + 1)
        for i in range(self.kills):
            due = self._t0 + interval * (i + 1)
            self.state.phase = f"load; kill {i + 1}/{self.kills} at t+{interval * (i + 1):.0f}s"
            while time.time() < due and not self.load.finished:
                time.sleep(0.1)
            try:
                self._kill_once()
            except Exception as exc:  # noqa: BLE001 - shown in the summary; the run still completes
                self.state.error = f"kill {i + 1}: {type(exc).__name__}: {exc}"[:200]
                return
        self.state.phase = "load; kills done"

    def _kill_once(self) -> None:
        killed = cluster.kill_leader(self.cfg, "KILL")
        failover = Failover(killed["node_id"], killed["epoch"], killed["at"])
        self.state.failovers.append(failover)
        self.state.phase = f"failover {len(self.state.failovers)}: {failover.killed} killed"
        new = cluster.wait_for_leader(self.cfg, ADVANCE_TIMEOUT_S, newer_than=killed["epoch"])
        failover.elected_s = time.time() - killed["at"]
        failover.new_leader, failover.new_epoch = new["node_id"], new["epoch"]
        deadline = time.monotonic() + ADVANCE_TIMEOUT_S
        while time.monotonic() < deadline:
            first = self.records.first_advance_after(killed["epoch"], killed["at"])
            if first:
                failover.first_advance_s = first[2] - killed["at"]
                break
            time.sleep(0.05)
        if wait_gone(killed["pid"], 10.0):
            cluster.start_node(self.cfg, int(killed["node_id"].split("-")[1]))
            failover.restarted = True

    # --- output ------------------------------------------------------------------------------------------
    def _view(self) -> Group:
        s = self.state
        elapsed = time.time() - self._t0 if self._t0 else 0.0
        submitted = len(self.load.ids)
        terminal = self._terminal()
        head = Table.grid(padding=(0, 2))
        head.add_row("leader", f"[bold green]{s.leader}[/]" if s.leader else "[bold red]none[/]",
                     "epoch", str(s.epoch or "-"), "t", f"{elapsed:5.1f} s", "phase", s.phase)
        head.add_row("submitted", f"{submitted}/{self.load.total}", "in flight", str(submitted - terminal),
                     "completed", str(s.states.get(ExperimentState.COMPLETED, 0)), "failed",
                     str(s.states.get(ExperimentState.FAILED, 0) + s.states.get(ExperimentState.CANCELLED, 0)))
        fails = Table(title="failovers (SIGKILL)", title_justify="left", expand=False)
        for col in ("#", "killed", "epoch", "new leader", "epoch ", "leader after", "first advance after"):
            fails.add_column(col)
        for i, f in enumerate(s.failovers, 1):
            fails.add_row(str(i), f.killed, str(f.old_epoch), f.new_leader or "…", str(f.new_epoch or "…"),
                          _ms(f.elected_s), _ms(f.first_advance_s))
        parts: list[Any] = [head, fails]
        if s.error:
            parts.append(Text(f"last error: {s.error}", style="yellow"))
        return Group(*parts)

    def _summary(self) -> dict[str, Any]:
        ids = list(self.load.ids)
        states = self.records.states(ids)
        report = check(self.cfg, Scope(experiment_ids=ids))
        double = [v.detail for v in report.of_kinds(EXACTLY_ONCE_KINDS)]
        lost = sorted(i for i in ids if states.get(i) not in TERMINAL_EXPERIMENT_STATES)
        not_completed = sorted(i for i in ids if states.get(i) in (ExperimentState.FAILED, ExperimentState.CANCELLED))
        elapsed = time.time() - self._t0
        times = [f.first_advance_s for f in self.state.failovers if f.first_advance_s is not None]
        violations = [v.line() for v in report.violations]
        ok = (not lost and not not_completed and not double and report.ok and len(times) == self.kills
              and self.state.error is None)
        return {
            "ok": ok,
            "experiments": len(ids),
            "states": dict(Counter(states.values())),
            "lost": len(lost),
            "lost_ids": lost[:20],
            "failed": len(not_completed),
            "double_advanced": len(double),
            "double_advanced_tasks": double[:20],
            "violations": violations[:50],
            "duplicate_executions": report.duplicate_executions,
            "failovers": [f.to_dict() for f in self.state.failovers],
            "failover_s": {"min": _round(min(times, default=None)), "max": _round(max(times, default=None)),
                           "mean": _round(sum(times) / len(times)) if times else None},
            "submit_rate_per_s": round(len(ids) / max(self.load.elapsed_s, 1e-9), 1),
            "submit_retries": self.load.errors,
            "elapsed_s": round(elapsed, 1),
            "error": self.state.error,
            "prometheus": self.cfg.prometheus_url,
            "node_metrics": [f"{self.cfg.node_url(n)}/metrics" for n in range(1, NODES + 1)],
            "console": [f"{self.cfg.node_url(n)}/" for n in range(1, NODES + 1)],
            "worker_metrics": [f"{self.cfg.worker_url(n)}/metrics" for n in range(1, WORKERS + 1)],
        }


def _ms(seconds: float | None) -> str:
    return "…" if seconds is None else f"{seconds * 1000:.0f} ms"


def _require_stack(cfg: Config) -> None:
    rows = manager.status(cfg)
    down = [str(r["service"]) for r in rows if not r.get("healthy")]
    if down:
        raise ServiceError(f"the stack is not up ({', '.join(down)} not healthy): run `haorch stack up` first")


def run_demo(cfg: Config, rate: float = 40.0, duration_s: float = 60.0, kills: int = 3,
             console: Console | None = None) -> dict[str, Any]:
    """Run the demo (live view on ``console``, default stderr); returns the summary (``ok`` False on a violation)."""
    return Demo(cfg, rate, duration_s, kills, console or Console(stderr=True)).run()


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """The human summary: invariants, failover times, where the metrics are, how to stop."""
    mark = "[bold green]OK[/]" if summary["ok"] else "[bold red]VIOLATED[/]"
    console.print(f"\n[bold]summary[/bold] {mark}  ({summary['elapsed_s']} s)")
    states = ", ".join(f"{n} {s}" for s, n in sorted(summary["states"].items()))
    console.print(f"  experiments      {summary['experiments']} submitted at "
                  f"{summary['submit_rate_per_s']}/s: {states}")
    console.print(f"  lost             {summary['lost']}" + (f"  {summary['lost_ids']}" if summary["lost"] else ""))
    console.print(f"  failed           {summary['failed']} (none of the built-in types fails for good)")
    console.print(f"  double-advanced  {summary['double_advanced']}"
                  + (f"  {summary['double_advanced_tasks']}" if summary["double_advanced"] else ""))
    console.print(f"  checker          {len(summary['violations'])} violation(s); "
                  f"{summary['duplicate_executions']} attempt(s) executed more than once (each a violation)")
    for line in summary["violations"][:10]:
        console.print(f"    {line}")
    for i, f in enumerate(summary["failovers"], 1):
        console.print(f"  failover {i}       {f['killed']} (epoch {f['old_epoch']}) -> {f['new_leader']} "
                      f"(epoch {f['new_epoch']}): leader after {_ms(f['elected_s'])}, first advance after "
                      f"{_ms(f['failover_s'])}")
    if summary["error"]:
        console.print(f"  [yellow]error[/]            {summary['error']}")
    console.print(f"\nmetrics:  Prometheus {summary['prometheus']}  (e.g. haorch_failover_duration_seconds, "
                  f"haorch_leader_epoch)")
    console.print(f"          nodes  {'  '.join(summary['node_metrics'])}")
    console.print(f"          workers {'  '.join(summary['worker_metrics'])}")
    console.print(f"console:  {summary['console'][0]}  (every node serves it; log in with a token: "
                  "haorch token create --role admin --name NAME)")
    console.print("stop:     haorch cluster down    # the 3 nodes and workers\n"
                  "          haorch stack down      # ZooKeeper, RabbitMQ, MariaDB, Neo4j, Prometheus")
