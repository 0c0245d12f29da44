"""One orchestrator replica (``haorch node run``): a standby that stays warm and leads when elected.

Threads: the election thread (kazoo) only flips ``self._term`` in its callbacks; the main thread owns the
RabbitMQ connection (pika is not thread-safe) and runs a :class:`LeaderTerm` while the term it was started for
is still current; the HTTP server answers /metrics, /healthz, /readyz and /api from its own threads.

    replica = Replica(cfg, "node-1")
    replica.run(shutdown_event)      # returns after shutdown is set (SIGTERM): leadership handed over first
"""

from __future__ import annotations

import logging
import threading
import time

from election import LeaderElection, SessionState, make_client
from election.client import ZooKeeperUnavailableError
from node import metrics
from node.config import Config
from node.errors import FencedError, ServiceError
from node.leader.term import LeaderTerm, PhaseClock
from node.stack.neo4j import neo4j_driver
from node.stores.dags import DagStore
from node.stores.rabbit import CONNECTION_ERRORS, connect, ensure_topology
from node.stores.records import Records

log = logging.getLogger(__name__)

SESSION_GAUGE = {SessionState.CONNECTED: 1.0, SessionState.SUSPENDED: 0.5, SessionState.LOST: 0.0}


class Replica:
    """A node of the cluster; see the module docstring."""

    def __init__(self, cfg: Config, node_id: str) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self._term: int | None = None          # epoch of the current term, None while standby
        self._clock = PhaseClock()
        self._shutdown = threading.Event()
        self.election: LeaderElection | None = None
        self.started_at = time.time()
        self.last_error: str | None = None
        self.leader_term: LeaderTerm | None = None

    # --- election callbacks (election thread; must return fast) ------------------------------------------
    def _on_elected(self, epoch: int) -> None:
        self._clock = PhaseClock()
        self._clock.mark("elected")
        self._term = epoch
        log.info("node: elected id=%s epoch=%d", self.node_id, epoch)

    def _on_revoked(self, reason: str) -> None:
        self._term = None
        metrics.NODE_IS_LEADER.set(0)
        log.warning("node: leadership revoked id=%s reason=%s", self.node_id, reason)

    def _acting_for(self, epoch: int):  # type: ignore[no-untyped-def]
        return lambda: self._term == epoch and not self._shutdown.is_set()

    # --- status for HTTP ---------------------------------------------------------------------------------
    @property
    def role(self) -> str:
        return "leader" if self._term is not None else "standby"

    @property
    def epoch(self) -> int | None:
        return self._term

    def session_state(self) -> str:
        return self.election.session_state.name if self.election else "NONE"

    # --- main loop ---------------------------------------------------------------------------------------
    def run(self, shutdown: threading.Event) -> None:
        """Serve until ``shutdown`` is set, then hand leadership over and close everything."""
        self._shutdown = shutdown
        records = Records(self.cfg)
        driver = neo4j_driver(self.cfg)
        dags = DagStore(driver)
        try:
            zk = make_client(self.cfg.zk_hosts, self.cfg.zk_session_timeout_s, self.node_id, start_timeout_s=30)
        except ZooKeeperUnavailableError as exc:
            raise ServiceError(str(exc)) from None
        conn = connect(self.cfg, self.node_id)
        ensure_topology(self.cfg, conn)
        self.election = LeaderElection(zk, self.node_id, on_elected=self._on_elected, on_revoked=self._on_revoked)
        self.election.start()
        log.info("node: started id=%s zk_session_timeout_s=%s", self.node_id, self.cfg.zk_session_timeout_s)
        try:
            while not shutdown.is_set():
                metrics.ZK_SESSION_STATE.set(SESSION_GAUGE.get(self.election.session_state, 0.0))
                epoch = self._term
                if epoch is None:
                    conn.process_data_events(time_limit=0.05)  # standby: keep the connection warm
                    continue
                conn = self._lead(epoch, conn, dags, records)
        finally:
            self._term = None
            self.election.stop()
            zk.stop()
            zk.close()
            for close in (conn.close, records.close, driver.close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - shutting down
                    pass
            log.info("node: stopped id=%s", self.node_id)

    def _lead(self, epoch: int, conn, dags: DagStore, records: Records):  # type: ignore[no-untyped-def]
        """Run one term (or what is left of it after a reconnect); returns the connection to keep using."""
        acting = self._acting_for(epoch)
        metrics.NODE_IS_LEADER.set(1)
        metrics.LEADER_EPOCH.set(epoch)
        clock = self._clock
        try:
            term = LeaderTerm(self.cfg, self.node_id, epoch, dags, records, conn, acting, clock)
            self.leader_term = term
            self._mark_detected(dags, clock)
            term.take_over()
            term.run()
        except FencedError as exc:
            metrics.FENCE_REJECTIONS.inc()
            self.last_error = str(exc)
            log.error("node: fenced id=%s %s", self.node_id, exc)
            self._step_down("fenced")
        except CONNECTION_ERRORS as exc:
            self.last_error = f"rabbitmq: {type(exc).__name__}"
            log.warning("node: rabbitmq connection lost id=%s (%s); reconnecting", self.node_id, type(exc).__name__)
            conn = self._reconnect(conn)
        except ServiceError as exc:
            self.last_error = str(exc)
            log.error("node: dependency failure id=%s %s; retrying the term", self.node_id, exc)
            time.sleep(0.5)
        finally:
            self._observe_phases(epoch, clock, records)
            if self._term != epoch:
                metrics.NODE_IS_LEADER.set(0)
        return conn

    def _mark_detected(self, dags: DagStore, clock: PhaseClock) -> None:
        """The previous leader's last fenced write is its last sign of life: the failover starts there."""
        if "detected" in clock.marks:
            return
        records, _, _ = dags.driver.execute_query(
            "MATCH (f:Fence {name: 'leader'}) RETURN f.last_write_at AS at, f.holder AS holder")
        if records and records[0]["at"] and records[0]["holder"] != self.node_id:
            clock.mark("detected", min(records[0]["at"], clock.marks["elected"]))

    def _observe_phases(self, epoch: int, clock: PhaseClock, records: Records) -> None:
        if "first_advance" not in clock.marks or clock.marks.get("observed"):
            return
        clock.marks["observed"] = 1.0
        durations = clock.durations()
        for phase, seconds in durations.items():
            metrics.FAILOVER_DURATION.labels(phase).observe(seconds)
        metrics.FAILOVERS.inc()
        try:
            records.record_phases(epoch, durations)
        except ServiceError:
            pass
        log.info("node: takeover phases epoch=%d %s", epoch,
                 " ".join(f"{k}={v * 1000:.0f}ms" for k, v in durations.items()))

    def _step_down(self, reason: str) -> None:
        self._term = None
        if self.election is not None:
            threading.Thread(target=self.election.resign, name="resign", daemon=True).start()
        log.warning("node: stepping down id=%s reason=%s", self.node_id, reason)

    def _reconnect(self, conn):  # type: ignore[no-untyped-def]
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - already broken
            pass
        while not self._shutdown.is_set():
            try:
                new = connect(self.cfg, self.node_id, retry_for_s=5.0)
                ensure_topology(self.cfg, new)
                return new
            except ServiceError as exc:
                log.warning("node: still no rabbitmq id=%s (%s)", self.node_id, exc)
        raise ServiceError("shutting down while RabbitMQ was unreachable")
