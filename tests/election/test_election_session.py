"""SessionWatcher and make_client against a real ensemble, with the client's network cut by a proxy."""

import time

import pytest
from election_harness import Link, TcpProxy, wait_until

from election import SessionState, SessionWatcher, ZooKeeperUnavailableError, make_client


@pytest.fixture
def proxied_client(zk):
    made = []

    def make(session_timeout_s: float):
        link = Link([TcpProxy(member) for member in zk.members])
        client = make_client(link.hosts, session_timeout_s, "session-test")
        made.append((client, link))
        return client, link

    yield make
    for client, link in made:
        client.stop()
        client.close()
        for proxy in link.proxies:
            proxy.close()


def test_make_client_fails_fast_with_a_clear_error():
    started = time.monotonic()
    with pytest.raises(ZooKeeperUnavailableError, match=r"not reachable within 0\.5s"):
        make_client("127.0.0.1:1", 1.0, "nowhere", start_timeout_s=0.5)
    assert time.monotonic() - started < 3.0


def test_suspended_then_same_session(proxied_client):
    client, link = proxied_client(2.0)
    watcher = SessionWatcher(client, "w").start()
    seen = []
    watcher.subscribe(lambda ev: 1 / 0)  # a failing subscriber must not starve the others
    watcher.subscribe(seen.append)
    assert watcher.state is SessionState.CONNECTED
    session_id = client.client_id[0]

    cut_at = time.monotonic()
    link.cut()
    wait_until(lambda: watcher.state is SessionState.SUSPENDED, 1.0, "SUSPENDED")
    wait_until(lambda: seen, 1.0, "the SUSPENDED event")
    delay = seen[0].at - cut_at
    print(f"\nSUSPENDED {delay * 1000:.1f} ms after the connection was cut")
    assert seen[0].state is SessionState.SUSPENDED and delay < 0.25

    link.heal()
    assert watcher.wait_for(SessionState.CONNECTED, 3.0)
    wait_until(lambda: len(seen) >= 2, 1.0, "the CONNECTED event")
    assert [ev.state for ev in seen] == [SessionState.SUSPENDED, SessionState.CONNECTED]
    assert seen[1].session_id == session_id == client.client_id[0], "expected the same session back"
    assert seen[1].generation == seen[0].generation + 1
    watcher.stop()


def test_lost_then_new_session(proxied_client):
    client, link = proxied_client(0.5)
    watcher = SessionWatcher(client, "w").start()
    seen = []
    watcher.subscribe(seen.append)
    session_id = client.client_id[0]

    link.cut()
    time.sleep(1.2)  # well past the 0.5 s session timeout: the server expires the session
    link.heal()
    wait_until(lambda: any(ev.state is SessionState.CONNECTED for ev in seen), 5.0, "a new session")
    states = [ev.state for ev in seen]
    assert states[0] is SessionState.SUSPENDED
    assert SessionState.LOST in states and states.index(SessionState.LOST) < states.index(SessionState.CONNECTED)
    assert seen[-1].session_id not in (None, session_id)
    watcher.stop()
