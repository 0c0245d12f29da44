"""Timing probes over MariaDB for benchmarks, chaos runs and tests: measurements, not verification (that is
:mod:`node.verify`).

    at = first_success_at(cfg, epoch, timeout_s=20)   # the new epoch's first SUCCEEDED transition (failover end)
    mark = last_advance_id(cfg)                        # did any leader write since?
    epoch, holder, raised_at = fence(cfg)

One short connection per call; read only.
"""

from __future__ import annotations

import time

import pymysql

from node.config import Config
from node.model.states import TaskStatus
from node.stores.connect import mysql_connect_args


def query(cfg: Config, sql: str, args: tuple | list = ()) -> list[tuple]:
    """Rows of one statement on a connection of its own."""
    conn = pymysql.connect(**mysql_connect_args(cfg))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def first_success_at(cfg: Config, epoch: int, timeout_s: float = 0.0, poll_s: float = 0.05) -> float | None:
    """Time of the first SUCCEEDED transition written with ``epoch`` (its leader's first DAG advancement), polled
    for up to ``timeout_s``; None if there is none by then."""
    deadline = time.monotonic() + timeout_s
    while True:
        at = query(cfg, "SELECT MIN(at) FROM transitions WHERE epoch = %s AND to_state = %s",
                   (epoch, TaskStatus.SUCCEEDED))[0][0]
        if at is not None or time.monotonic() > deadline:
            return None if at is None else float(at)
        time.sleep(poll_s)


def last_advance_id(cfg: Config) -> int:
    """Id of the newest transition row a leader wrote (submissions and cancels write epoch 0)."""
    return int(query(cfg, "SELECT COALESCE(MAX(id), 0) FROM transitions WHERE epoch > 0")[0][0])


def fence(cfg: Config) -> tuple[int, str | None, float]:
    """(epoch, holder, raised_at) of the MariaDB fence row."""
    return query(cfg, "SELECT epoch, holder, raised_at FROM fence WHERE name = 'leader'")[0]
