"""``haorch lab``: a multi-host HA deployment on one machine, each host a network namespace with an address of
its own on a private bridge and a cgroup of its own.

Hosts 1..N each run one ZooKeeper member, one RabbitMQ node, one Galera member, one orchestrator node and one
worker; host N+1 runs Neo4j and Prometheus (single instances: losing a member host must not take them along).
The lab is an ordinary state dir: ``up`` records its hosts in ``<home>/lab.json`` (read by
node/runtime/placement.py, which starts each program inside its host) and its addresses in ``<home>/haorch.toml``
(``topology = "ha"``, ``member_hosts``, ``host``, ``client_addresses``), so every command run with the same
``HAORCH_HOME`` drives the lab from this machine through the bridge::

    lab.up(cfg, hosts=3)          # network, cgroups, stack, cluster (idempotent)
    lab.crash(cfg, "host-2")      # SIGKILL every process of host 2 (its cgroup)
    lab.isolate(cfg, "host-2")    # drop all its traffic, both ways
    lab.heal(cfg)                 # lift every isolation
    lab.restart(cfg, "host-2")    # start its programs again
    lab.down(cfg)                 # stop everything, remove namespaces, bridge, rules and cgroups

A crash of ``up`` part way leaves a lab that the next ``up`` completes and ``down`` removes: every step skips what
exists.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from node import cluster
from node.config import Config, load_config
from node.errors import ServiceError, UsageError
from node.lab import cgroups, network
from node.lab.network import LabNet
from node.runtime.placement import host_number, lab_file, lab_hosts
from node.runtime.programs import names, recorded
from node.stack import manager

Progress = Callable[[str], None]
LAB_SETTINGS = ("topology", "member_hosts", "host", "client_addresses")


def _prefix(cfg: Config) -> str:
    return f"haorch{cfg.port_base}"


def _read(cfg: Config) -> dict[str, Any]:
    try:
        return dict(json.loads(lab_file(cfg).read_text()))
    except (OSError, ValueError):
        return {}


def _net(cfg: Config, record: dict[str, Any]) -> LabNet:
    return LabNet(_prefix(cfg), ipaddress.IPv4Network(record["subnet"]), int(record["hosts_count"]))


def _write(cfg: Config, record: dict[str, Any]) -> None:
    cfg.home.mkdir(parents=True, exist_ok=True)
    tmp = lab_file(cfg).with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(lab_file(cfg))


def _write_settings(cfg: Config, net: LabNet, members: int) -> None:
    """Put the lab's addresses into the state dir's haorch.toml, keeping the operator's other settings."""
    path = cfg.home / "haorch.toml"
    settings: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    settings.update({"topology": "ha", "member_hosts": ",".join(net.address(n) for n in range(1, members + 1)),
                     "host": net.address(members + 1), "client_addresses": net.gateway})
    lines = ["# written by `haorch lab up`: the lab's addresses (topology, member_hosts, host, client_addresses)"]
    for key, value in settings.items():
        lines.append(f"{key} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}")
    path.write_text("\n".join(lines) + "\n")


def _check_machine(cfg: Config) -> None:
    if os.geteuid() != 0:
        raise UsageError("haorch lab needs root (network namespaces, a bridge, cgroups)")
    if cfg.runtime != "process":
        raise UsageError("haorch lab runs programs as processes; set runtime = \"process\" for this state dir")


def lab_config(home: str | Path) -> Config:
    """The config of the lab in ``home`` with the port base it was made with (whatever ``HAORCH_PORT_BASE`` says:
    a command about another stack may run with it set)."""
    cfg = load_config(home)
    recorded = _read(cfg).get("port_base")
    return load_config(home, port_base=recorded) if recorded else cfg


def host_index(cfg: Config, host: str) -> int:
    """``host-2`` or ``2`` as 2; UsageError for a host the lab does not have."""
    hosts = lab_hosts(cfg)
    if not hosts:
        raise UsageError(f"{cfg.home} is not a running lab; start one with `haorch lab up`")
    text = host.removeprefix("host-")
    if not text.isdigit() or not 1 <= int(text) <= len(hosts):
        raise UsageError(f"no host {host!r} in the lab (hosts: {', '.join(h['host'] for h in hosts)})")
    return int(text)


def up(cfg: Config, hosts: int = 3, progress: Progress = lambda _m: None) -> list[dict[str, Any]]:
    """Create (or complete) the lab and start everything on it; returns ``status``."""
    _check_machine(cfg)
    if hosts != 3:
        raise UsageError("--hosts must be 3 (the ZooKeeper ensemble, RabbitMQ and Galera clusters have 3 members)")
    record = _read(cfg)
    if record.get("hosts") and int(record.get("hosts_count", 0)) != hosts + 1:
        raise UsageError(f"the lab of {cfg.home} has {int(record['hosts_count']) - 1} hosts; `haorch lab down` first")
    if not record.get("subnet"):
        record = {"subnet": str(network.pick_subnet()), "hosts_count": hosts + 1}
    record["port_base"] = cfg.port_base
    net = _net(cfg, record)
    if not record.get("hosts") and network.exists("link", net.bridge):
        raise ServiceError(f"lab: bridge {net.bridge} exists but {cfg.home} has no lab on it: another state dir with "
                           f"port base {cfg.port_base} runs one (use another HAORCH_PORT_BASE)")
    record["hosts"] = [{"host": f"host-{n}", "address": net.address(n), "netns": net.netns(n),
                        "cgroup": str(cgroups.group_path(_prefix(cfg), f"host-{n}"))} for n in range(1, hosts + 2)]
    _write(cfg, record)  # first: `down` finds what to remove even if the next steps crash
    network.create(net)
    for host in record["hosts"]:
        cgroups.create(Path(host["cgroup"]))
    progress(f"network {net.subnet}: bridge {net.bridge} ({net.gateway}), "
             + ", ".join(f"{h['host']} {h['address']}" for h in record["hosts"]))
    _write_settings(cfg, net, hosts)
    lab_cfg = load_config(cfg.home)
    manager.up(lab_cfg, progress=progress)
    cluster.up(lab_cfg, nodes=hosts, workers=hosts, progress=progress, wait_s=90.0)
    return status(lab_cfg)


def down(cfg: Config, purge: bool = False, progress: Progress = lambda _m: None) -> dict[str, Any]:
    """Stop every program, then remove the cgroups, namespaces, bridge and rules (idempotent)."""
    _check_machine(cfg)
    record = _read(cfg)
    stopped = manager.down(cfg, progress=progress) if record.get("hosts") else []
    removed: list[str] = []
    if record.get("subnet"):
        for host in record.get("hosts", []):
            killed = cgroups.kill(Path(host["cgroup"]))
            if killed:
                progress(f"{host['host']}: {killed} leftover process(es) killed")
            cgroups.remove(Path(host["cgroup"]))
        removed = network.destroy(_net(cfg, record))
        record["hosts"] = []
        _write(cfg, record)  # the subnet stays: data dirs name the members by address
    if purge:
        manager.down(cfg, purge=True, progress=progress)
    return {"stopped": stopped, "removed": removed, "purged": purge}


def status(cfg: Config) -> list[dict[str, Any]]:
    """One row per host: host, address, isolated, processes (``[{"name", "pid"}]``, the running ones)."""
    record = _read(cfg)
    hosts = record.get("hosts", [])
    if not hosts:
        return []
    net = _net(cfg, record)
    rows = [{"host": h["host"], "address": h["address"], "isolated": network.isolated(net, n), "processes": []}
            for n, h in enumerate(hosts, start=1)]
    for name in names(cfg):
        number = host_number(name, len(hosts) - 1)
        pid = recorded(cfg, name).pid()
        if number is not None and pid is not None:
            rows[number - 1]["processes"].append({"name": name, "pid": pid})
    return rows


def crash(cfg: Config, host: str) -> dict[str, Any]:
    """SIGKILL every process of ``host`` at once (its cgroup): a power cut."""
    n = host_index(cfg, host)
    at = time.time()
    killed = cgroups.kill(Path(lab_hosts(cfg)[n - 1]["cgroup"]))
    return {"host": f"host-{n}", "killed": killed, "at": at}


def isolate(cfg: Config, host: str, peers: list[str] | None = None) -> dict[str, Any]:
    """Drop all traffic of ``host`` both ways, or (``peers``: other hosts) only its traffic with those."""
    n = host_index(cfg, host)
    record = _read(cfg)
    net = _net(cfg, record)
    addresses = [record["hosts"][host_index(cfg, p) - 1]["address"] for p in peers] if peers else None
    at = time.time()
    network.isolate(net, n, addresses)
    return {"host": f"host-{n}", "from": peers or "all", "at": at}


def heal(cfg: Config, host: str | None = None) -> list[str]:
    """Lift the isolation of ``host`` (every host when None); returns the hosts healed."""
    record = _read(cfg)
    if not record.get("hosts"):
        raise UsageError(f"{cfg.home} is not a running lab; start one with `haorch lab up`")
    net = _net(cfg, record)
    numbers = [host_index(cfg, host)] if host else range(1, len(record["hosts"]) + 1)
    return [f"host-{n}" for n in numbers if network.heal(net, n)]


def restart(cfg: Config, host: str, progress: Progress = lambda _m: None) -> dict[str, Any]:
    """Start the programs of ``host`` that are not running (its services, then its node and worker) and wait
    until its services answer."""
    n = host_index(cfg, host)
    members = len(lab_hosts(cfg)) - 1
    services = [s for s in manager.services(cfg) if host_number(s.name, members) == n and not s.proc.alive()]
    at = time.time()
    for service in services:
        service.start()
    with ThreadPoolExecutor(max_workers=max(1, len(services))) as pool:
        for future in [pool.submit(manager.wait_ready, s, progress) for s in services]:
            future.result()
    started = [s.name for s in services]
    if n <= members:
        if cluster.start_node(cfg, n):
            started.append(f"node-{n}")
        if cluster.start_worker(cfg, n, cfg.worker_concurrency):
            started.append(f"worker-{n}")
    return {"host": f"host-{n}", "started": started, "at": at, "seconds": round(time.time() - at, 2)}

