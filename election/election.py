"""Leader election with a fresh epoch per term, that steps down the moment the session is in doubt.

Usage::

    from election import LeaderElection, make_client

    client = make_client("127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183", session_timeout_s=2.0,
                         identifier="node-1")
    election = LeaderElection(
        client, "node-1",
        on_elected=lambda epoch: worker.lead(epoch),      # return quickly: start the work elsewhere
        on_revoked=lambda reason: worker.stand_by(reason), # stop acting at once; return quickly too
    )
    election.start()
    election.is_leader, election.epoch, election.leader_id()
    election.resign()   # hand over now and stay a candidate
    election.stop()     # hand over now and leave; then stop the client (it stays yours)

It composes kazoo's ``Election`` (a ``Lock`` under ``path``) and adds what that recipe leaves out: once
elected, kazoo never interrupts the leadership function, so a leader whose session is SUSPENDED (connection
gone, and the server may expire it and elect someone else at any moment) would carry on. Here the contest runs
in a daemon thread, and each win is a *term*:

1. win the lock → check the lock znode still exists (and watch it) → take a NEW epoch from ``EpochCounter``
   → the term begins only if the session has not changed since the win → ``on_elected(epoch)``.
2. The term ends on ``resign()``, ``stop()``, a session transition to SUSPENDED or LOST, or the deletion of
   the lock znode. ``is_leader`` turns False the moment kazoo reports the transition; the thread wakes and calls
   ``on_revoked(reason)`` within milliseconds (always after ``on_elected`` has returned, once per term).
3. Then it releases the lock znode. After a SUSPENDED that reconnects with the SAME session the znode still
   exists: the release deletes it once the connection is back (it is kept and retried if it cannot), so the
   old term never resumes. It then rejoins at the back of the queue, and a new win means a new term and a new
   epoch. After LOST the znode died with the session and the release is a no-op.

Reasons given to ``on_revoked``: ``resigned``, ``stopped``, ``session_suspended``, ``session_lost``,
``lock_node_deleted``, ``on_elected_failed``. Exceptions raised by the callbacks are logged, never fatal; an
``on_elected`` that raises ends its term, and the node rejoins after a back-off. The callbacks run on the
election thread: the lock is released only after ``on_revoked`` returns, so keep both short.

Fail-over bounds (kazoo at session timeout T): a crashed leader is replaced after ~T (the server expires its
session); a partitioned leader notices after at most kazoo's read timeout, 2/3 T, and steps down before the
server can expire it. Epochs are still what makes a late write harmless: fence every write with them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.protocol.states import EventType, WatchedEvent
from kazoo.recipe.election import Election
from kazoo.recipe.lock import Lock
from tenacity import RetryCallState, Retrying, retry_if_result, wait_exponential

from election.epoch import EpochCounter
from election.session import SessionEvent, SessionState, SessionWatcher

log = logging.getLogger(__name__)

MAX_REJOIN_DELAY_S = 10.0


@dataclass
class _Term:
    number: int  # local count of terms, for resign() to wait on
    epoch: int
    generation: int  # session generation the term was won in
    node_path: str  # our lock znode
    end_reason: str | None = None


class LeaderElection:
    """One candidate in the election under ``path``; see the module docstring."""

    def __init__(
        self,
        client: KazooClient,
        identifier: str,
        path: str = "/haorch/election",
        epoch_path: str = "/haorch/epoch",
        *,
        on_elected: Callable[[int], None],
        on_revoked: Callable[[str], None],
        session: SessionWatcher | None = None,
        retry_delay_s: float = 0.5,
    ) -> None:
        self.client = client
        self.identifier = identifier
        self.path = path
        self.on_elected = on_elected
        self.on_revoked = on_revoked
        self.retry_delay_s = retry_delay_s
        self._epochs = EpochCounter(client, epoch_path)
        self._session = session or SessionWatcher(client, name=identifier)
        self._owns_session = session is None
        self._cond = threading.Condition()
        self._term: _Term | None = None
        self._terms_begun = 0
        self._terms_done = 0
        self._stopping = False
        self._contest: Election | None = None
        self._stale_lock: Lock | None = None  # a won lock whose release failed; deleted before rejoining
        self._deleted_node: str | None = None  # last lock znode seen deleted by its watch
        self._failed = False  # the current round failed: back off before rejoining
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.won_at: float | None = None  # wall clock when the lock was last won (before the epoch was taken)

    # -- public API --------------------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._live_term() is not None

    @property
    def epoch(self) -> int | None:
        term = self._live_term()
        return term.epoch if term else None

    @property
    def session_state(self) -> SessionState:
        return self._session.state

    @property
    def lock_node(self) -> str | None:
        """Path of the lock znode that makes this node leader (None when not leading)."""
        term = self._live_term()
        return term.node_path if term else None

    def start(self) -> LeaderElection:
        with self._cond:
            if self._thread is not None or self._stopping:
                raise RuntimeError(f"election {self.identifier} already started (a stopped one cannot restart)")
            self._session.start()  # idempotent; a shared watcher is stopped by its owner, not here
            self._unsubscribe = self._session.subscribe(self._on_session)
            self._thread = threading.Thread(target=self._run, name=f"election-{self.identifier}", daemon=True)
            self._thread.start()
        log.info("election: started id=%s path=%s", self.identifier, self.path)
        return self

    def resign(self, timeout: float = 5.0) -> bool:
        """End the current term and release the lock; the node stays a candidate.

        Returns True once ``on_revoked`` has run and the lock is released (at once if called from a callback),
        False if this node was not leader or the release did not finish within ``timeout``.
        """
        with self._cond:
            term = self._term
            if term is None or term.end_reason is not None:
                return False
            log.info("election: resigning epoch=%d id=%s", term.epoch, self.identifier)
            self._end_term(term, "resigned")
            if threading.current_thread() is self._thread:
                return True
            released = self._cond.wait_for(lambda: self._terms_done >= term.number, timeout)
        if not released:
            log.warning("election: resign not finished id=%s timeout_s=%g", self.identifier, timeout)
        return released

    def stop(self, timeout: float = 5.0) -> None:
        """End the term if leading, leave the contest and join the election thread (bounded by ``timeout``)."""
        with self._cond:
            self._stopping = True
            if self._term is not None:
                self._end_term(self._term, "stopped")
            contest = self._contest
            thread = self._thread
        if contest is not None:
            contest.cancel()  # wakes a waiting candidate; a leader leaves through its term's end
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("election: thread still running after stop id=%s timeout_s=%g", self.identifier, timeout)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._owns_session:
            self._session.stop()
        log.info("election: stopped id=%s", self.identifier)

    def leader_id(self) -> str | None:
        """Identifier of the first contender (the lock holder), or None if there is none or ZooKeeper is unreachable."""
        try:
            contenders = Election(self.client, self.path).contenders()
        except KazooException as exc:
            log.debug("election: contenders unavailable id=%s error=%r", self.identifier, exc)
            return None
        return contenders[0] if contenders else None

    # -- the election thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        # A failed round is contested again after a back-off that doubles from retry_delay_s up to
        # MAX_REJOIN_DELAY_S; a round that did not fail starts the next with no back-off and a fresh count.
        rounds = Retrying(stop=lambda _state: self._stopping, retry=retry_if_result(bool),
                          wait=wait_exponential(multiplier=self.retry_delay_s, max=MAX_REJOIN_DELAY_S),
                          before_sleep=self._log_back_off, sleep=self._back_off,
                          retry_error_callback=lambda _state: None)
        while not self._stopping:
            rounds(self._round)
        if self._session.state is SessionState.CONNECTED:
            try:
                self._release_stale_lock()
            except KazooException:
                log.warning("election: stale lock node not released id=%s", self.identifier)

    def _round(self) -> bool:
        """Contend once (when connected); True if the round failed and should be retried after a back-off."""
        with self._cond:
            self._cond.wait_for(self._ready_to_contend, timeout=1.0)
            if self._stopping or self._session.state is not SessionState.CONNECTED:
                return False
        contest: Election | None = None
        self._failed = False
        try:
            self._release_stale_lock()
            with self._cond:
                if self._stopping:
                    return False
                contest = self._contest = Election(self.client, self.path, self.identifier)
            log.info("election: candidate id=%s path=%s", self.identifier, self.path)
            contest.run(self._lead, contest)
        except Exception:
            log.exception("election: contest failed id=%s", self.identifier)
            self._failed = True
        finally:
            if contest is not None and contest.lock.is_acquired:
                self._stale_lock = contest.lock
            with self._cond:
                self._contest = None
                self._terms_done = self._terms_begun
                self._cond.notify_all()
        return self._failed

    def _log_back_off(self, state: RetryCallState) -> None:
        log.info("election: rejoining after back-off id=%s delay_s=%.2f", self.identifier, state.upcoming_sleep)

    def _back_off(self, delay: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._stopping, timeout=delay)

    def _lead(self, contest: Election) -> None:
        """The leadership function given to kazoo's Election: one term, from win to revocation."""
        generation = self._session.generation
        if self._session.state is not SessionState.CONNECTED:
            return
        self.won_at = time.time()
        lock = contest.lock
        node_path = f"{lock.path}/{lock.node}"
        if self.client.exists(node_path, watch=self._on_node_event) is None:
            log.warning("election: lock node vanished before the term id=%s node=%s", self.identifier, node_path)
            self._failed = True
            return
        if self._stopping:
            return
        epoch = self._epochs.next()
        with self._cond:
            if self._deleted_node == node_path:
                log.warning("election: lock node deleted before the term id=%s node=%s", self.identifier, node_path)
                self._failed = True
                return
            if self._stopping:
                return
            if self._session.generation != generation or not self._connected():
                log.info("election: won but session changed; rejoining id=%s epoch=%d", self.identifier, epoch)
                return
            self._terms_begun += 1
            term = self._term = _Term(self._terms_begun, epoch, generation, node_path)
        log.info("election: elected epoch=%d id=%s", epoch, self.identifier)
        if not self._call("on_elected", self.on_elected, epoch):
            self._failed = True
            with self._cond:
                self._end_term(term, "on_elected_failed")
        with self._cond:
            while term.end_reason is None:
                # Woken by _on_session/_on_node_event/resign/stop; the timeout is only a safety net.
                self._cond.wait(timeout=1.0)
                if term.end_reason is None and self._live_term() is None:
                    self._end_term(term, f"session_{self._session.state.value}")
            self._term = None
        log.info("election: revoked epoch=%d id=%s reason=%s", epoch, self.identifier, term.end_reason)
        self._call("on_revoked", self.on_revoked, term.end_reason)

    def _release_stale_lock(self) -> None:
        lock = self._stale_lock
        if lock is not None:
            lock.release()  # deletes the znode if this session still has it; raises if unreachable
            self._stale_lock = None
            log.info("election: released stale lock node id=%s", self.identifier)

    # -- helpers and callbacks from other threads ----------------------------------------------------------------

    def _live_term(self) -> _Term | None:
        term = self._term
        if term is None or term.end_reason is not None:
            return None
        if not self._connected() or self._session.generation != term.generation:
            return None
        return term

    def _connected(self) -> bool:
        return self._session.state is SessionState.CONNECTED

    def _ready_to_contend(self) -> bool:
        return self._stopping or self._connected()

    def _end_term(self, term: _Term, reason: str) -> None:
        """Caller holds self._cond."""
        if term.end_reason is None:
            term.end_reason = reason
            self._cond.notify_all()

    def _on_session(self, event: SessionEvent) -> None:
        # Runs on the session watcher's dispatcher thread.
        with self._cond:
            term = self._term
            if term is not None and event.state is not SessionState.CONNECTED and event.generation > term.generation:
                if term.end_reason is None:
                    log.warning(
                        "election: stepping down epoch=%d id=%s session=%s",
                        term.epoch,
                        self.identifier,
                        event.state.name,
                    )
                self._end_term(term, f"session_{event.state.value}")
            self._cond.notify_all()

    def _on_node_event(self, event: WatchedEvent) -> None:
        # Runs on kazoo's event thread: flag and return.
        if event.type != EventType.DELETED:
            return
        with self._cond:
            self._deleted_node = event.path
            term = self._term
            if term is not None and term.node_path == event.path:
                self._end_term(term, "lock_node_deleted")

    def _call(self, name: str, callback: Callable[..., None], arg: object) -> bool:
        try:
            callback(arg)
            return True
        except Exception:
            log.exception("election: %s failed id=%s arg=%s", name, self.identifier, arg)
            return False
