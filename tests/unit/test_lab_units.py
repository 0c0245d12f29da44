"""Pure parts of the multi-host lab: where a program runs, the addresses a config derives, the hosts plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos_tests.host_faults import HOST_KINDS, _longest_gap
from chaos_tests.scenarios import plan
from node.config import load_config
from node.errors import UsageError
from node.lab.network import LabNet, _route_destination
from node.runtime.placement import Placement, host_number, placement


def test_programs_run_on_the_host_their_number_names() -> None:
    assert host_number("zookeeper-2", 3) == 2
    assert host_number("rabbitmq-epmd-3", 3) == 3
    assert host_number("node-5", 3) == 2  # wraps as Config.member_host does
    assert host_number("neo4j", 3) == 4 and host_number("prometheus", 3) == 4
    assert host_number("haorch-probe", 3) is None


def test_placement_reads_the_lab_file(tmp_path: Path) -> None:
    cfg = load_config(tmp_path)
    assert placement(cfg, "node-1") is None  # no lab: this machine
    hosts = [{"host": f"host-{n}", "address": f"10.9.9.{10 + n}", "netns": f"ns{n}", "cgroup": f"/cg/host-{n}"}
             for n in range(1, 5)]
    (tmp_path / "lab.json").write_text(json.dumps({"subnet": "10.9.9.0/24", "hosts_count": 4, "hosts": hosts}))
    place = placement(cfg, "mariadb-2")
    assert place == Placement("host-2", "ns2", Path("/cg/host-2"))
    argv = place.argv(["mariadbd", "--x"])
    assert argv[:2] == ["sh", "-c"] and argv[-6:] == ["ip", "netns", "exec", "ns2", "mariadbd", "--x"]
    assert "/cg/host-2/cgroup.procs" in argv
    assert place.argv(["mariadb"], in_cgroup=False) == ["ip", "netns", "exec", "ns2", "mariadb"]
    assert placement(cfg, "neo4j").host == "host-4"


def test_member_hosts_spread_endpoints(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, topology="ha", member_hosts="10.9.9.11,10.9.9.12,10.9.9.13", host="10.9.9.14",
                      port_base=20000)
    assert cfg.zk_hosts == "10.9.9.11:20001,10.9.9.12:20002,10.9.9.13:20003"
    assert cfg.rabbit_endpoints == [("10.9.9.11", 20250), ("10.9.9.12", 20260), ("10.9.9.13", 20270)]
    assert cfg.mysql_endpoints == [("10.9.9.11", 20230), ("10.9.9.12", 20234), ("10.9.9.13", 20238)]
    assert cfg.node_url(2) == "http://10.9.9.12:20072" and cfg.worker_url(4) == "http://10.9.9.11:20104"
    assert cfg.neo4j_uri == "bolt://10.9.9.14:20050"
    assert cfg.bind_host(1) == "10.9.9.11"
    assert load_config(tmp_path, bind_address="0.0.0.0").bind_host(1) == "0.0.0.0"


def test_single_topology_is_unchanged(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, port_base=20000)
    assert cfg.rabbit_endpoints == [("127.0.0.1", 20030)] and cfg.mysql_endpoints == [("127.0.0.1", 20040)]
    assert cfg.sql_client_hosts == ["127.0.0.1", "localhost"]


@pytest.mark.parametrize("setting", [{"topology": "triple"}, {"member_hosts": "10.0.0.1,db-host"},
                                     {"bind_address": "everywhere"}])
def test_bad_settings_are_one_line_errors(tmp_path: Path, setting: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        load_config(tmp_path, **setting)


def test_lab_names_fit_interfaces() -> None:
    import ipaddress

    net = LabNet("haorch17100", ipaddress.IPv4Network("10.213.0.0/24"), 4)
    assert all(len(name) <= 15 for n in range(1, 5) for name in (*net.veth(n), net.netns(n), net.bridge))
    assert net.gateway == "10.213.0.1" and net.address(4) == "10.213.0.14"


def test_route_destinations() -> None:
    assert _route_destination("default via 192.0.2.1 dev eth0") == ""
    assert _route_destination("local 127.0.0.0/8 dev lo table local proto kernel") == "127.0.0.0/8"
    assert _route_destination("192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2") == "192.0.2.0/24"


def test_stall_is_the_longest_pause() -> None:
    assert _longest_gap(0.0, 10.0, [1.0, 2.0, 6.0]) == 4.0
    assert _longest_gap(0.0, 10.0, []) == 10.0
    assert _longest_gap(5.0, 10.0, [1.0, 9.0]) == 4.0  # times outside the window do not count


def test_hosts_plan_gives_each_kind_in_turn() -> None:
    specs = plan("hosts", 12, seed=1)
    assert [s["kind"] for s in specs] == list(HOST_KINDS) * 2
    assert all(1 <= s.get("host", 1) <= 3 for s in specs)
