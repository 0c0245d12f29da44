"""One orchestrator replica (``haorch node run``): a standby that stays warm and leads when elected.

Threads: the election thread (kazoo) only flips ``self._term`` in its callbacks; the main thread owns the
RabbitMQ connection (pika is not thread-safe) and runs a :class:`LeaderTerm` while the term it was started for
is still current; the HTTP server answers /metrics, /healthz, /readyz and /api from its own threads; while it
leads, retention's gc loop (``node/retention/collector.py``) runs on a thread of its own, fenced by the term's epoch.

    replica = Replica(cfg, "node-1")
    replica.run(shutdown_event)      # returns after shutdown is set (SIGTERM): leadership handed over first
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from election import LeaderBeacon, LeaderElection, SessionState
from node import metrics
from node.config import Config
from node.errors import DependencyError, FencedError
from node.leader.fence_guard import FenceGuard
from node.leader.generation import expected_generation
from node.leader.submits import SubmitRepair
from node.leader.term import MIN_PREFETCH, LeaderTerm, PhaseClock, TermProgress
from node.retention.collector import Background
from node.retry import RECONNECT, RESUME, call
from node.stores.connect import neo4j_driver, zookeeper_client
from node.stores.dags import DagStore, GraphNotReady
from node.stores.ledger import Ledger
from node.stores.pools import Pools
from node.stores.rabbit import BatchConsumer, BatchPublisher, connect, pump
from node.stores.records import Records

log = logging.getLogger(__name__)

SESSION_GAUGE = {SessionState.CONNECTED: 1.0, SessionState.SUSPENDED: 0.5, SessionState.LOST: 0.0}
# A previous leader silent for longer than this before the election is a cold start (cluster restarted), not a
# failover: its term is not timed as a takeover.
COLD_START_S = 60.0


def _resumable(exc: BaseException) -> bool:
    """A term that failed for any reason but a fence rejection is run again while it is current: a dependency
    that went away, or an unexpected error (logged with its traceback) must not end the node."""
    return isinstance(exc, Exception) and not isinstance(exc, FencedError)


class Replica:
    """A node of the cluster; see the module docstring."""

    def __init__(self, cfg: Config, node_id: str, beacon_port: int | None = None, number: int = 1) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.number = number  # which host it runs on (Config.member_host)
        self.beacon_port = beacon_port
        self.beacon: LeaderBeacon | None = None
        self.ledger: Ledger | None = None
        self._term: int | None = None          # epoch of the current term, None while standby
        self._clock = PhaseClock()
        self._shutdown = threading.Event()
        self.election: LeaderElection | None = None
        self.started_at = time.time()
        self.last_error: str | None = None
        self.leader_term: LeaderTerm | None = None
        self._failure: tuple[str, int] = ("", 0)  # the last unexpected term failure and how often it repeated

    # --- election callbacks (election thread; must return fast) ------------------------------------------
    def _on_elected(self, epoch: int) -> None:
        self._clock = PhaseClock()
        won_at = self.election.won_at if self.election is not None else None
        if won_at is not None:
            self._clock.mark("won", won_at)
        self._clock.mark("elected")
        self._term = epoch
        if self.beacon is not None and self.election is not None:
            self.beacon.publish(self.election.lock_node)
        log.info("node: elected id=%s epoch=%d", self.node_id, epoch)

    def _on_revoked(self, reason: str) -> None:
        self._term = None
        if self.beacon is not None:
            self.beacon.withdraw()
        metrics.NODE_IS_LEADER.set(0)
        log.warning("node: leadership revoked id=%s reason=%s", self.node_id, reason)

    def _acting_for(self, epoch: int):
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
        self.ledger = Ledger(self.cfg)
        driver = neo4j_driver(self.cfg)
        dags = DagStore(driver, tx_timeout_s=self.cfg.neo4j_tx_timeout_s)
        zk = zookeeper_client(self.cfg, self.node_id, start_timeout_s=30)
        conn = connect(self.cfg, self.node_id)
        if self.cfg.leader_beacon and self.beacon_port:
            self.beacon = LeaderBeacon(zk, self.node_id, (self.cfg.member_host(self.number), self.beacon_port),
                                       bind_host=self.cfg.bind_host(self.number)).start()
        self.election = LeaderElection(zk, self.node_id, on_elected=self._on_elected, on_revoked=self._on_revoked)
        election = self.election  # read on every scrape: a term holds the main loop for its whole length
        metrics.ZK_SESSION_STATE.set_function(lambda: SESSION_GAUGE.get(election.session_state, 0.0))
        self.election.start()
        threading.Thread(target=self._hand_over_on_shutdown, name="handover", daemon=True).start()
        log.info("node: started id=%s zk_session_timeout_s=%s", self.node_id, self.cfg.zk_session_timeout_s)
        try:
            while not shutdown.is_set():
                epoch = self._term
                if epoch is None:
                    conn = self._stand_by(conn)
                    continue
                conn = self._lead(epoch, conn, dags, records)
        finally:
            self._term = None
            self.election.stop()
            if self.beacon is not None:
                self.beacon.stop()
            zk.stop()
            zk.close()
            for close in (conn.close, records.close, self.ledger.close, driver.close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - shutting down
                    pass
            log.info("node: stopped id=%s", self.node_id)

    def _lead(self, epoch: int, conn, dags: DagStore, records: Records):
        """Run one term; after a dependency failure run it again (:data:`~node.retry.RESUME`, reconnecting first
        if RabbitMQ failed) for as long as it is current. Returns the connection to keep using."""
        acting = self._acting_for(epoch)
        metrics.NODE_IS_LEADER.set(1)
        metrics.LEADER_EPOCH.set(epoch)
        clock = self._clock
        # the takeover is over at the first advance: observe its phases then, not when the term ends
        clock.on_first_advance = lambda: self._observe_phases(epoch, clock, records)
        link = [conn]  # the connection, replaced when RabbitMQ is reconnected
        progress = TermProgress()  # a retried term resumes its takeover and finishes a half-done step
        repair = SubmitRepair(self.cfg, dags, records, self.node_id)

        def serve() -> None:
            conn = link[0]
            publisher = BatchPublisher(conn)
            term = LeaderTerm(
                self.cfg, self.node_id, epoch, dags=dags, records=records, publisher=publisher,
                open_consumer=lambda: BatchConsumer(conn, list(LeaderTerm.QUEUES), prefetch=MIN_PREFETCH),
                fence_guard=lambda e: FenceGuard(dags.driver, e), acting=acting, clock=clock,
                ledger_progress=self.ledger.in_progress if self.ledger else None, progress=progress,
                repair_submits=repair, pump=lambda: pump(conn), waiting=publisher.waiting, pools=Pools(records))
            self.leader_term = term
            self._mark_last_seen(dags, clock)
            dags.generation = expected_generation(dags, records)  # read again each retry: a rebuild changes it
            term.take_over()
            term.run()

        def failed(exc: BaseException) -> None:
            self.last_error = str(exc)
            if isinstance(exc, DependencyError) and exc.service == "rabbitmq":
                log.warning("node: rabbitmq connection lost id=%s (%s); reconnecting", self.node_id, exc.cause)
                link[0] = self._reconnect(link[0])
            elif isinstance(exc, GraphNotReady):  # Neo4j emptied or being rebuilt: repeats until the rebuild ends
                self._log_term_failure(exc, trace=False)
            elif isinstance(exc, DependencyError):
                log.error("node: dependency failure id=%s %s; retrying the term", self.node_id, exc)
            else:
                self._log_term_failure(exc)

        # retention's gc steps run beside the batch loop, once this term's fences are raised (fenced like it)
        gc = Background(self.cfg, self.node_id, epoch, dags.driver, acting, ready=lambda: "fence" in clock.marks)
        try:
            with gc:
                call(RESUME, serve, what=None, retry_on=_resumable, stop=lambda: not acting(),
                     idle=self._shutdown.wait, on_failure=failed)
        except FencedError as exc:
            metrics.FENCE_REJECTIONS.inc()
            self.last_error = str(exc)
            log.error("node: fenced id=%s %s", self.node_id, exc)
            self._step_down("fenced")
        except Exception:  # noqa: BLE001 - logged by failed(); the next term (or standby) starts afresh
            pass  # the term ended (not current any more, or shutting down) while it was failing
        finally:
            self._observe_phases(epoch, clock, records)
            if self._term != epoch:
                metrics.NODE_IS_LEADER.set(0)
        return link[0]

    def _log_term_failure(self, exc: BaseException, trace: bool = True) -> None:
        """A term retried every 0.5 s on the same failure logs it once (with its traceback if ``trace``), then one
        line on the 2nd, 4th, 8th, ... repetition: a failure that repeats for days stays a few dozen lines."""
        text = f"{type(exc).__name__}: {exc}"
        last, repeats = self._failure
        if text != last:
            self._failure = (text, 1)
            log.error("node: term failed id=%s (%s); retrying the term", self.node_id,
                      text if not trace else type(exc).__name__, exc_info=exc if trace else None)
            return
        self._failure = (text, repeats + 1)
        if repeats & (repeats + 1) == 0:  # repeats + 1 is a power of two
            log.error("node: term failed again id=%s (%s, %d times); retrying the term", self.node_id,
                      text.splitlines()[0][:200], repeats + 1)

    def _mark_last_seen(self, dags: DagStore, clock: PhaseClock) -> None:
        """The previous leader's last fenced write (or its fence raise, if it never wrote after it) is its last
        sign of life: the failover starts there."""
        if "last_seen" in clock.marks:
            return
        fence = dags.fence_marks()
        if fence is None or fence["holder"] in (None, self.node_id):
            return
        seen = [t for t in (fence["at"], fence["raised"]) if t]
        start = clock.marks.get("won", clock.marks["elected"])
        if seen and start - max(seen) < COLD_START_S:
            clock.mark("last_seen", min(max(seen), start))

    def _observe_phases(self, epoch: int, clock: PhaseClock, records: Records) -> None:
        if "first_advance" not in clock.marks or clock.marks.get("observed"):
            return
        if "last_seen" not in clock.marks:  # the first leader (or a cold start): no takeover to time
            clock.marks["observed"] = 1.0
            return
        clock.marks["observed"] = 1.0
        durations = clock.durations()
        for phase, seconds in durations.items():
            metrics.FAILOVER_DURATION.labels(phase).observe(seconds)
        metrics.FAILOVERS.inc()
        with contextlib.suppress(DependencyError):
            records.record_phases(epoch, durations)
        log.info("node: takeover phases epoch=%d %s", epoch,
                 " ".join(f"{k}={v * 1000:.0f}ms" for k, v in durations.items()))

    def _step_down(self, reason: str) -> None:
        self._term = None
        if self.election is not None:
            threading.Thread(target=self.election.resign, name="resign", daemon=True).start()
        log.warning("node: stepping down id=%s reason=%s", self.node_id, reason)

    def _stand_by(self, conn):
        """Standby: keep the RabbitMQ connection warm; a connection that died (e.g. missed heartbeats while this
        process was frozen) is replaced instead of ending the process."""
        try:
            pump(conn, 0.05)
            return conn
        except DependencyError as exc:
            log.warning("node: standby rabbitmq connection lost id=%s (%s); reconnecting", self.node_id, exc.cause)
            return self._reconnect(conn)

    def _hand_over_on_shutdown(self) -> None:
        """On SIGTERM leave the election at once, not after the batch in progress: a standby leads within
        milliseconds, and whatever the batch still writes is fenced by the successor's epoch. Leave, not resign:
        a node that is stopping must not win the election again (it would if it were the only candidate)."""
        self._shutdown.wait()
        self._term = None
        if self.election is not None:
            self.election.stop(timeout=2.0)

    def _reconnect(self, conn):
        """A new connection for a lost one, retried until shutdown (then DependencyError)."""
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - already broken
            pass
        return connect(self.cfg, self.node_id, RECONNECT, stop=self._shutdown)
