"""The state of a kazoo session, as an enum and as callbacks that may take their time.

Usage::

    from election import SessionState, SessionWatcher

    watcher = SessionWatcher(client, name="node-1").start()
    unsubscribe = watcher.subscribe(lambda ev: print(ev.state, ev.generation))
    if watcher.state is SessionState.CONNECTED:
        ...
    watcher.wait_for(SessionState.CONNECTED, timeout=5.0)
    unsubscribe()
    watcher.stop()

kazoo calls its state listeners on its connection thread and requires them not to block. The listener here
only records the new state (``state``, ``generation``) and puts an event on a queue; a dispatcher thread
delivers the events to subscribers in order. So ``state`` is exact the moment kazoo changes it, and a slow
subscriber delays other subscribers, never kazoo. ``generation`` counts transitions: a term that began at
generation ``g`` is uninterrupted while the state is CONNECTED and the generation is still ``g``.

CONNECTED after SUSPENDED is the same session (its ephemeral znodes survived); CONNECTED after LOST is a new
session (the old one expired or was closed, and its ephemeral znodes are gone).
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState

log = logging.getLogger(__name__)


class SessionState(enum.Enum):
    CONNECTED = "connected"
    SUSPENDED = "suspended"
    LOST = "lost"


_FROM_KAZOO = {
    KazooState.CONNECTED: SessionState.CONNECTED,
    KazooState.SUSPENDED: SessionState.SUSPENDED,
    KazooState.LOST: SessionState.LOST,
}


@dataclass(frozen=True)
class SessionEvent:
    state: SessionState
    generation: int  # 0 for the state found at construction, +1 for each transition after
    session_id: int | None  # None unless CONNECTED
    at: float  # time.monotonic() when kazoo reported it


Subscriber = Callable[[SessionEvent], None]


class SessionWatcher:
    """Tracks one KazooClient's connection state; see the module docstring."""

    def __init__(self, client: KazooClient, name: str = "") -> None:
        self.client = client
        self.name = name
        self._lock = threading.Condition()
        self._state = _FROM_KAZOO[client.state]
        self._generation = 0
        self._subscribers: list[Subscriber] = []
        self._events: queue.SimpleQueue[SessionEvent | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def generation(self) -> int:
        return self._generation

    def start(self) -> SessionWatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._dispatch, name=f"session-{self.name}", daemon=True)
            self._thread.start()
            self.client.add_listener(self._on_kazoo_state)
            # report a change between __init__ and add_listener, if any
            self._on_kazoo_state(self.client.state)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self.client.remove_listener(self._on_kazoo_state)
        if self._thread is not None:
            self._events.put(None)
            if self._thread is not threading.current_thread():
                self._thread.join(timeout)
            self._thread = None

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` on the dispatcher thread for each later transition; returns an unsubscriber."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def wait_for(self, state: SessionState, timeout: float) -> bool:
        """Block until the state is ``state`` (True) or ``timeout`` seconds have passed (False)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._state is state, timeout)

    def _on_kazoo_state(self, kazoo_state: KazooState) -> None:
        # Runs on kazoo's connection thread: record and hand off, never block.
        state = _FROM_KAZOO[kazoo_state]
        with self._lock:
            if state is self._state:
                return
            self._state = state
            self._generation += 1
            client_id = self.client.client_id if state is SessionState.CONNECTED else None
            event = SessionEvent(state, self._generation, client_id[0] if client_id else None, time.monotonic())
            self._lock.notify_all()
        self._events.put(event)

    def _dispatch(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            session = f"0x{event.session_id:x}" if event.session_id is not None else "-"
            log.info(
                "session: state=%s generation=%d session=%s name=%s",
                event.state.name,
                event.generation,
                session,
                self.name,
            )
            with self._lock:
                subscribers = list(self._subscribers)
            for callback in subscribers:
                try:
                    callback(event)
                except Exception:
                    log.exception("session: subscriber failed name=%s callback=%r", self.name, callback)
