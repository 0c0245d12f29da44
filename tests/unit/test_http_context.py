"""The HTTP app's per-thread stores: each handler thread gets its own, and closing the context closes all of them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from node.config import load_config
from node.experiments import Experiments
from node.http.context import AppContext


def test_close_closes_the_stores_of_every_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[Experiments] = []
    monkeypatch.setattr(Experiments, "close", lambda self: closed.append(self))
    ctx = AppContext(load_config(tmp_path), lambda: (True, {}), lambda: (True, {}))
    opened: list[Experiments] = []

    def handler() -> None:
        first = ctx.experiments()
        assert ctx.experiments() is first  # one per thread, kept
        opened.append(first)

    threads = [threading.Thread(target=handler) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(e) for e in opened}) == 3

    ctx.close()
    assert sorted(map(id, closed)) == sorted(map(id, opened))
    ctx.close()  # a second close closes nothing twice
    assert len(closed) == 3
