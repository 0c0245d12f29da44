"""Where a program of the state dir runs when the state dir is a multi-host lab (``haorch lab``, node/lab/).

The lab records its hosts in ``<home>/lab.json``: for each host a network namespace and a cgroup. A program
whose name ends in ``-N`` (``zookeeper-2``, ``rabbitmq-epmd-2``, ``mariadb-2``, ``node-2``, ``worker-5``) runs on
member host N (numbers beyond the member hosts wrap around, as ``Config.member_host`` does); ``neo4j`` and
``prometheus`` run on the lab's last host; anything else (a one-off client) on the machine itself. Without
``lab.json`` every program runs on the machine itself::

    place = placement(cfg, "node-2")    # Placement(netns="haorch17100-h2", cgroup=Path(...)) or None
    place.argv(["java", ...])           # ["ip", "netns", "exec", "haorch17100-h2", "java", ...]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from node.config import Config

SINGLE_HOST_SERVICES = ("neo4j", "prometheus")
NSENTER = "/usr/bin/nsenter"  # Neo4j Community cannot cluster: they live on a host of their own


@dataclass(frozen=True)
class Placement:
    """A lab host: the network namespace a program runs in and the cgroup that holds its processes."""

    host: str
    netns: str
    cgroup: Path
    # enter the network namespace alone (nsenter) instead of `ip netns exec`, which also gives the program a /sys of
    # the namespace's own, without /sys/fs/cgroup (slurmd cannot start without it)
    keep_mounts: bool = False

    def argv(self, argv: list[str], in_cgroup: bool = True) -> list[str]:
        """``argv`` run inside the host's network namespace and (``in_cgroup``) cgroup: a shell moves itself into
        the cgroup before it execs ``ip netns exec``, which execs the program, so the PID stays the one started
        and everything the program forks belongs to the host too."""
        netns = ([NSENTER, f"--net=/run/netns/{self.netns}", "--", *argv] if self.keep_mounts
                 else ["ip", "netns", "exec", self.netns, *argv])
        if not in_cgroup:
            return netns
        return ["sh", "-c", 'echo 0 > "$1" && shift && exec "$@"', "sh", str(self.cgroup / "cgroup.procs"), *netns]


def lab_file(cfg: Config) -> Path:
    return cfg.home / "lab.json"


def lab_hosts(cfg: Config) -> list[dict[str, str]]:
    """The lab's hosts as recorded by ``haorch lab up`` (empty when the state dir is no lab)."""
    try:
        return list(json.loads(lab_file(cfg).read_text())["hosts"])
    except (OSError, ValueError, KeyError):
        return []


def host_number(name: str, members: int) -> int | None:
    """The lab host (1-based) of the program ``name`` on a lab of ``members`` member hosts plus one more for the
    single-instance services; None for a program of the machine itself."""
    if name in SINGLE_HOST_SERVICES:
        return members + 1
    match = re.search(r"-(\d+)$", name)
    return (int(match.group(1)) - 1) % members + 1 if match else None


def placement(cfg: Config, name: str) -> Placement | None:
    """Where program ``name`` runs: a lab host, or None (the machine itself)."""
    hosts = lab_hosts(cfg)
    if not hosts:
        return None
    number = host_number(name, len(hosts) - 1)
    if number is None:
        return None
    host = hosts[number - 1]
    return Placement(host["host"], host["netns"], Path(host["cgroup"]))

