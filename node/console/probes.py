"""The cluster page's view of the nodes: each node's ``/readyz`` and ``/healthz`` over HTTP, all at once.

Every probe has PROBE_TIMEOUT_S (as ``node/cluster.py`` probes readiness), and the nodes are asked in parallel,
so a page waits about that long with any number of nodes down. A node that does not answer is shown as
unreachable; a 503 still carries the node's JSON (a standby that is not ready says why).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from node.cluster import numbered, tls_context
from node.config import Config

PROBE_TIMEOUT_S = 0.5


@dataclass
class NodeView:
    """One node as its probes found it; ``readyz``/``healthz`` are None when it did not answer."""

    number: int
    node_id: str
    url: str
    serving: bool
    readyz: dict[str, Any] | None = None
    healthz: dict[str, Any] | None = None
    dependencies: dict[str, bool] = field(default_factory=dict)

    @property
    def reachable(self) -> bool:
        return self.readyz is not None or self.healthz is not None

    @property
    def role(self) -> str:
        return str(self.readyz.get("role", "unknown")) if self.readyz else "unreachable"


def fetch_json(url: str, timeout_s: float = PROBE_TIMEOUT_S,
               context: ssl.SSLContext | None = None) -> dict[str, Any] | None:
    """The JSON object at ``url`` (also from a 503), or None when nothing usable answered in time; ``context``:
    whom to trust for an https URL."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            data = json.loads(exc.read())
        except (OSError, ValueError):
            return None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def node_numbers(cfg: Config, serving_id: str, known: Iterable[str] = ()) -> list[int]:
    """The nodes of this cluster: those recorded in the state dir, one per member host, the serving node and the
    ``known`` node ids (those that led a recent term: a node that died is shown down, not left out)."""
    numbers = set(numbered(cfg, "node"))
    numbers.update(range(1, len([h for h in cfg.member_hosts.split(",") if h.strip()]) + 1))
    for node_id in (serving_id, *known):
        kind, _, number = node_id.partition("-")
        if kind == "node" and number.isdigit():
            numbers.add(int(number))
    return sorted(numbers)


def probe_nodes(cfg: Config, numbers: list[int], serving_id: str,
                timeout_s: float = PROBE_TIMEOUT_S) -> list[NodeView]:
    """Every node's /readyz and /healthz, fetched in parallel."""
    views = [NodeView(n, f"node-{n}", cfg.node_url(n), f"node-{n}" == serving_id) for n in numbers]
    if not views:
        return views
    urls = [f"{v.url}/{path}" for v in views for path in ("readyz", "healthz")]
    trusted = tls_context(cfg)  # https nodes: their certificate, or $HAORCH_CA_FILE, as the cluster commands
    with ThreadPoolExecutor(max_workers=min(16, len(urls)), thread_name_prefix="console-probe") as pool:
        answers = list(pool.map(lambda u: fetch_json(u, timeout_s, trusted), urls))
    for i, view in enumerate(views):
        view.readyz, view.healthz = answers[2 * i], answers[2 * i + 1]
        deps = (view.healthz or {}).get("dependencies")
        view.dependencies = {str(k): bool(v) for k, v in deps.items()} if isinstance(deps, dict) else {}
    return views


def leader_of(views: list[NodeView]) -> NodeView | None:
    """The node that says it leads, with the highest epoch (a deposed one may not know it yet)."""
    leaders = [v for v in views if v.role == "leader"]
    return max(leaders, key=lambda v: (v.readyz or {}).get("epoch") or 0) if leaders else None
