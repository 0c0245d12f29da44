"""Fixtures for the election tests.

``HAORCH_TEST_ZK_HOSTS`` set: reuse that ensemble (tests that kill members are skipped). Otherwise start our own
3-member ensemble on 127.0.0.1:19101-19103 (peer 19111-19113, election 19121-19123) and stop exactly those PIDs
at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from election_harness import Candidate, Ensemble, Link, TcpProxy, start_own_ensemble  # first: puts the repo on sys.path

from election import LeaderElection, make_client


@pytest.fixture(scope="session")
def zk() -> Iterator[Ensemble]:
    hosts = os.environ.get("HAORCH_TEST_ZK_HOSTS")
    if hosts:
        yield Ensemble(hosts)
        return
    started = time.monotonic()
    ensemble = start_own_ensemble()
    print(f"\nelection tests: own ZooKeeper ensemble ready in {time.monotonic() - started:.1f}s")
    try:
        yield ensemble
    finally:
        ensemble.stop()
        if ensemble.workdir is not None:
            shutil.rmtree(ensemble.workdir, ignore_errors=True)


@pytest.fixture
def paths() -> tuple[str, str]:
    """A unique election path and epoch path for one test."""
    base = f"/election-tests/{uuid.uuid4().hex[:12]}"
    return f"{base}/election", f"{base}/epoch"


@pytest.fixture
def make_candidate(zk: Ensemble, paths: tuple[str, str]) -> Iterator[Callable[..., Candidate]]:
    made: list[Candidate] = []
    links: list[Link] = []

    def make(
        name: str,
        session_timeout_s: float = 1.0,
        proxied: bool = False,
        hosts: str | None = None,
        on_elected: Callable[[int], None] | None = None,
        on_revoked: Callable[[str], None] | None = None,
        **client_kwargs,
    ) -> Candidate:
        link = None
        hosts = hosts or zk.hosts
        if proxied:
            link = Link([TcpProxy(member) for member in zk.members])
            links.append(link)
            hosts = link.hosts
        client = make_client(hosts, session_timeout_s, name, **client_kwargs)
        cand = Candidate(name, link)

        def elected(epoch: int) -> None:
            cand.elected(epoch)
            if on_elected:
                on_elected(epoch)

        def revoked(reason: str) -> None:
            cand.revoked(reason)
            if on_revoked:
                on_revoked(reason)

        cand.election = LeaderElection(
            client, name, paths[0], paths[1], on_elected=elected, on_revoked=revoked, retry_delay_s=0.1
        )
        made.append(cand)
        cand.election.start()
        return cand

    yield make
    for cand in made:
        cand.election.stop(timeout=2.0)
    for cand in made:
        cand.client.stop()
        cand.client.close()
    for link in links:
        for proxy in link.proxies:
            proxy.close()
