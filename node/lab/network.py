"""The lab's network: a private bridge on this machine, one network namespace per host joined to it by a veth
pair, and per-host packet filters for isolation.

Every name carries the state dir's port base (``haorch17100-br``, ``haorch17100-h2``), so two labs on one machine
do not meet and ``down`` removes exactly what ``up`` made. The subnet is a private /24 that overlaps no route and
no address of this machine; the namespaces have no default route, so nothing they send can leave the bridge.
Isolation is a pair of DROP rules in the host's own namespace (both directions, silently, like a cut cable):
they vanish with the namespace.

A crash in the middle of ``create`` leaves some of these objects; the next ``create`` skips what exists and
``destroy`` removes whatever exists, so either recovers.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

from node.errors import ServiceError, SetupError

CANDIDATE_SUBNETS = [ipaddress.IPv4Network(f"10.{a}.{b}.0/24") for a in range(213, 223) for b in range(0, 250, 7)]
GATEWAY_HOST = 1  # this machine's address on the bridge: .1; host N: .10+N
BRIDGE_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip``/``iptables``; ServiceError with the tool's own message when ``check`` and it fails."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise SetupError(f"lab: {argv[0]} not found (the lab needs iproute2 and iptables: `make setup`)") from None
    if check and done.returncode != 0:
        raise ServiceError(f"lab: `{' '.join(argv)}` failed: {(done.stderr or done.stdout).strip()[:300]}")
    return done


@dataclass(frozen=True)
class LabNet:
    """The names and addresses of one lab's network."""

    prefix: str  # "haorch17100"
    subnet: ipaddress.IPv4Network
    hosts: int  # member hosts + the single-instance host

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    def netns(self, n: int) -> str:
        return f"{self.prefix}-h{n}"

    def veth(self, n: int) -> tuple[str, str]:
        """(this machine's end, the host's end) of host ``n``'s link; at most 15 characters each."""
        return f"{self.prefix[-5:]}h{n}", f"{self.prefix[-5:]}p{n}"

    def address(self, n: int) -> str:
        return str(self.subnet.network_address + 10 + n)

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + GATEWAY_HOST)


def pick_subnet() -> ipaddress.IPv4Network:
    """The first candidate /24 that overlaps no route (any table) and no address of this machine."""
    used = []
    routes = run("ip", "-4", "-o", "route", "show", "table", "all").stdout.splitlines()
    addresses = [line.split()[3] for line in run("ip", "-4", "-o", "addr", "show").stdout.splitlines()]
    for dest in [*(_route_destination(line) for line in routes), *addresses]:
        try:
            used.append(ipaddress.ip_network(dest, strict=False))
        except ValueError:
            continue
    for subnet in CANDIDATE_SUBNETS:
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise ServiceError("lab: every candidate private subnet (10.213-222.x.0/24) clashes with a route of this machine")


def _route_destination(line: str) -> str:
    """The destination of an ``ip -o route`` line (``default`` routes overlap everything: not a clash)."""
    words = line.split()
    if words[0] in ("local", "broadcast", "unicast", "unreachable", "prohibit", "blackhole", "multicast", "throw"):
        words = words[1:]
    return "" if words[0] == "default" else words[0]


def exists(kind: str, name: str) -> bool:
    if kind == "netns":
        return name in run("ip", "netns", "list").stdout.split()
    return run("ip", "link", "show", name, check=False).returncode == 0


def create(net: LabNet) -> None:
    """Make the bridge (with this machine's gateway address), the namespaces, their links and addresses
    (idempotent)."""
    if not exists("link", net.bridge):
        run("ip", "link", "add", net.bridge, "type", "bridge")
    if f"{net.gateway}/" not in run("ip", "-4", "-o", "addr", "show", "dev", net.bridge).stdout:
        run("ip", "addr", "add", f"{net.gateway}/{net.subnet.prefixlen}", "dev", net.bridge)
    run("ip", "link", "set", net.bridge, "up")
    for n in range(1, net.hosts + 1):
        ns, (outer, inner) = net.netns(n), net.veth(n)
        if not exists("netns", ns):
            run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        if not exists("link", outer):
            run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
        run("ip", "link", "set", outer, "master", net.bridge, "up")
        if f"{net.address(n)}/" not in run("ip", "-n", ns, "-4", "-o", "addr", "show", "dev", inner).stdout:
            run("ip", "-n", ns, "addr", "add", f"{net.address(n)}/{net.subnet.prefixlen}", "dev", inner)
        run("ip", "-n", ns, "link", "set", inner, "up")
    _allow_bridged(net)


def _allow_bridged(net: LabNet) -> None:
    """With br_netfilter loaded, bridged frames pass this machine's FORWARD chain, whose policy may be DROP
    (Docker sets it): let the lab's own bridge through (removed by ``destroy``)."""
    try:
        with open(BRIDGE_NF) as flag:
            if flag.read().strip() != "1":
                return
    except OSError:
        return
    rule = ["FORWARD", "-i", net.bridge, "-o", net.bridge, "-j", "ACCEPT"]
    if run("iptables", "-C", *rule, check=False).returncode != 0:
        run("iptables", "-I", *rule)


def destroy(net: LabNet) -> list[str]:
    """Remove the namespaces (their links go with them), the bridge and the FORWARD rule; returns what was
    removed."""
    removed = []
    for n in range(1, net.hosts + 1):
        outer, _ = net.veth(n)
        if exists("netns", net.netns(n)):
            run("ip", "netns", "del", net.netns(n))
            removed.append(net.netns(n))
        if exists("link", outer):
            run("ip", "link", "del", outer)
    if exists("link", net.bridge):
        run("ip", "link", "del", net.bridge)
        removed.append(net.bridge)
    rule = ["FORWARD", "-i", net.bridge, "-o", net.bridge, "-j", "ACCEPT"]
    while run("iptables", "-C", *rule, check=False).returncode == 0:
        run("iptables", "-D", *rule)
    return removed


def _drop_rules(net: LabNet, n: int, peers: list[str] | None) -> list[list[str]]:
    """The rules that cut host ``n`` off: from everyone, or only from the ``peers`` addresses."""
    _, inner = net.veth(n)
    if peers is None:
        return [["INPUT", "-i", inner, "-j", "DROP"], ["OUTPUT", "-o", inner, "-j", "DROP"]]
    rules = []
    for peer in peers:
        rules += [["INPUT", "-i", inner, "-s", peer, "-j", "DROP"], ["OUTPUT", "-o", inner, "-d", peer, "-j", "DROP"]]
    return rules


def isolate(net: LabNet, n: int, peers: list[str] | None = None) -> None:
    """Drop all of host ``n``'s traffic, both ways (or only its traffic with ``peers``): idempotent."""
    for rule in _drop_rules(net, n, peers):
        if run("ip", "netns", "exec", net.netns(n), "iptables", "-C", *rule, check=False).returncode != 0:
            run("ip", "netns", "exec", net.netns(n), "iptables", "-I", *rule)


def heal(net: LabNet, n: int) -> bool:
    """Remove every DROP rule of host ``n``; True when there was one."""
    if not exists("netns", net.netns(n)):
        return False
    healed = False
    for chain in ("INPUT", "OUTPUT"):
        listing = run("ip", "netns", "exec", net.netns(n), "iptables", "-S", chain).stdout.splitlines()
        for line in listing:
            if line.startswith(f"-A {chain} ") and line.endswith("-j DROP"):
                run("ip", "netns", "exec", net.netns(n), "iptables", "-D", *line.split()[1:])
                healed = True
    return healed


def isolated(net: LabNet, n: int) -> bool:
    if not exists("netns", net.netns(n)):
        return False
    out = run("ip", "netns", "exec", net.netns(n), "iptables", "-S").stdout
    return any(line.endswith("-j DROP") and line.startswith("-A ") for line in out.splitlines())
