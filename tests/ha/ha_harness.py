"""Helpers of the HA tests: polling, restoring the 3-node cluster, scraping a node, finding ZooKeeper links."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from polling import wait_until

from chaos_tests.faults import established_sockets
from node import cluster
from node.config import Config
from node.experiments import Experiments
from node.load import Load
from node.runtime.process import wait_gone
from node.runtime.stacks import DUMP_SIGNAL
from node.verify import EXACTLY_ONCE_KINDS, Scope, check

NODES = 3
T = TypeVar("T")


def number(node_id: str) -> int:
    return int(node_id.split("-")[1])


def restore_nodes(cfg: Config) -> None:
    """Restart every node that is not running (a killed one), so that 3 replicas remain."""
    for n in range(1, NODES + 1):
        pid = cluster.node_process(cfg, n).pid()
        if pid is None:
            cluster.start_node(cfg, n)


def restart_when_gone(cfg: Config, row: dict, timeout_s: float = 15.0) -> None:
    """Wait for the signalled node's process to exit, then start it again."""
    assert wait_gone(row["pid"], timeout_s), f"{row['node_id']} (pid {row['pid']}) still running"
    cluster.start_node(cfg, number(row["node_id"]))


def metric(cfg: Config, n: int, name: str) -> float:
    """Sum of the samples of ``name`` (no labels) on node-n's /metrics."""
    with urllib.request.urlopen(f"{cfg.node_url(n)}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def log_size(cfg: Config, n: int) -> int:
    path = cluster.node_process(cfg, n).log_file
    return path.stat().st_size if path.exists() else 0


def log_since(cfg: Config, n: int, offset: int) -> str:
    with open(cluster.node_process(cfg, n).log_file, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def explain(cfg: Config, lines: int = 150) -> str:
    """What every node is doing: each running one writes its threads' stacks to its log (SIGUSR1; a frozen one
    does when it is continued), then the last ``lines`` lines of each log."""
    for n in range(1, NODES + 1):
        cluster.node_process(cfg, n).signal(DUMP_SIGNAL)
    time.sleep(1.0)
    tails = []
    for n in range(1, NODES + 1):
        path = cluster.node_process(cfg, n).log_file
        text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
        tails.append(f"--- node-{n} ({path}), last {len(text)} lines:\n" + "\n".join(text))
    return "\n".join(tails)


def wait_explained(cfg: Config, predicate: Callable[[], T], timeout_s: float, what: str) -> T:
    """:func:`wait_until`, whose AssertionError also carries :func:`explain`: a CI log then says why."""
    try:
        return wait_until(predicate, timeout_s, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{explain(cfg)}") from None


def zk_member_of(cfg: Config, pid: int) -> set[int]:
    """ZooKeeper members (1..3) that process ``pid`` holds a TCP connection to."""
    ports = {cfg.zk_client_port(m): m for m in (1, 2, 3)}
    return {ports[remote] for _local, remote in established_sockets([pid], set(ports))}


def finish(cfg: Config, exps: Experiments, load: Load, timeout_s: float = 90.0) -> dict[str, str]:
    """Wait for the load to be submitted and every experiment to end; assert the invariants; return states."""
    assert load.join(timeout_s), f"load not submitted after {timeout_s:g} s ({load.done}/{load.total})"
    rows = exps.wait(load.ids, timeout_s)
    states = {r["experiment_id"]: r["state"] for r in rows}
    assert set(states.values()) == {"COMPLETED"}, Counter(states.values())
    report = check(cfg, Scope(experiment_ids=load.ids))
    assert report.of_kinds(EXACTLY_ONCE_KINDS) == []
    assert report.ok, report.to_markdown()
    return states
