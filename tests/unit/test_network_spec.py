"""Validation of the network.* commands: every bad input is refused before any effect."""

from __future__ import annotations

from typing import Any

import pytest

from vnetd.contract.commands import OPS, parse_request
from vnetd.contract.errors import InvalidArgument
from vnetd.contract.network import NetworkDefine, NetworkUpdate

NAT = {"kind": "nat", "bridge": {"name": "virbr-nat1", "stp": True},
       "ipv4": {"address": "192.168.150.1", "prefix": 24,
                "dhcp": {"ranges": [{"start": "192.168.150.10", "end": "192.168.150.50"}],
                         "hosts": [{"mac": "52:54:00:00:00:01", "ip": "192.168.150.5"}]}},
       "mtu": 1450, "domain": "example.test"}


def parse(op: str, **args: Any) -> Any:
    return parse_request({"op": op, "args": args})


def bad(op: str, **args: Any) -> str:
    with pytest.raises(InvalidArgument) as info:
        parse(op, **args)
    return info.value.message


def test_all_ops_registered() -> None:
    for op in ("network.define", "network.create", "network.start", "network.destroy",
               "network.undefine", "network.autostart", "network.dumpxml", "network.list",
               "network.update"):
        assert op in OPS


def test_issue_example_parses() -> None:
    cmd = parse("network.define", name="nat1", spec=NAT, autostart=True, start=True)
    assert isinstance(cmd, NetworkDefine)
    assert cmd.spec is not None
    assert cmd.spec.kind == "nat"
    assert cmd.lock_keys() == ("network:nat1",)


@pytest.mark.parametrize("name", ["", "-x", ".x", "a/b", "a b", "x" * 65, "é", "a;b"])
def test_bad_network_names(name: str) -> None:
    assert "name" in bad("network.start", name=name)


def test_spec_or_xml_exactly_one() -> None:
    assert "exactly one of spec or xml" in bad("network.define", name="n")
    assert "exactly one of spec or xml" in bad(
        "network.define", name="n", spec=NAT, xml="<network><name>n</name></network>")


def test_xml_size_bound() -> None:
    assert "xml" in bad("network.create", name="n", xml="<a>" + "x" * 70_000 + "</a>")


@pytest.mark.parametrize(("spec", "problem"), [
    ({"kind": "bogus"}, "kind"),
    ({"kind": "nat", "ipv4": {"address": "192.168.1.300", "prefix": 24}}, "IPv4"),
    ({"kind": "nat", "ipv4": {"address": "192.168.1.1", "prefix": 31}}, "prefix"),
    ({"kind": "nat", "ipv4": {"address": "192.168.1.1", "prefix": "24"}}, "prefix"),
    ({"kind": "nat", "ipv4": {"address": "192.168.1.1", "prefix": 24,
                              "dhcp": {"ranges": [{"start": "10.0.0.1", "end": "10.0.0.9"}]}}},
     "outside"),
    ({"kind": "nat", "ipv4": {"address": "192.168.1.1", "prefix": 24,
                              "dhcp": {"ranges": [{"start": "192.168.1.9",
                                                   "end": "192.168.1.2"}]}}},
     "ends before"),
    ({"kind": "nat", "ipv4": {"address": "192.168.1.1", "prefix": 24,
                              "dhcp": {"hosts": [{"ip": "192.168.1.3"}]}}}, "mac or a name"),
    ({"kind": "nat", "ipv4": {"address": "192.168.1.1", "prefix": 24,
                              "dhcp": {"hosts": [{"mac": "01:00:5e:00:00:01",
                                                  "ip": "192.168.1.3"}]}}}, "unicast"),
    ({"kind": "nat", "ipv4": {"address": "192.168.1.1", "prefix": 24,
                              "dhcp": {"hosts": [
                                  {"mac": "52:54:00:00:00:01", "ip": "192.168.1.3"},
                                  {"mac": "52:54:00:00:00:01", "ip": "192.168.1.4"}]}}},
     "twice"),
    ({"kind": "nat", "ipv4": {"address": "192.168.1.1", "prefix": 24,
                              "dhcp": {"hosts": [{"name": "a b", "ip": "192.168.1.3"}]}}},
     "DNS name"),
    ({"kind": "nat", "mtu": 40}, "mtu"),
    ({"kind": "nat", "domain": "bad domain"}, "DNS name"),
    ({"kind": "nat", "bridge": {"name": "x" * 16}}, "bytes"),
    ({"kind": "nat", "bridge": {"name": "br0", "delay": 99}}, "delay"),
    ({"kind": "nat", "dev": "eth0; rm -rf"}, "interface name"),
    ({"kind": "nat", "ports": {"start": 0, "end": 10}}, "start"),
    ({"kind": "nat", "extra": 1}, "extra"),
    ({"kind": "route", "ipv6": {"address": "10.0.0.1", "prefix": 64}}, "IPv6"),
    ({"kind": "bridge"}, "bridge"),
    ({"kind": "bridge", "bridge": "br/0"}, "interface name"),
    ({"kind": "macvtap", "devices": []}, "devices"),
    ({"kind": "macvtap", "devices": ["eth1", "eth1"]}, "distinct"),
    ({"kind": "macvtap", "mode": "nat", "devices": ["eth1"]}, "mode"),
    ({"kind": "hostdev"}, "exactly one of pf"),
    ({"kind": "hostdev", "pf": "eth0", "vfs": ["0000:04:10.1"]}, "exactly one of pf"),
    ({"kind": "hostdev", "vfs": ["04:10.1"]}, "PCI address"),
    ({"kind": "hostdev", "vfs": ["0000:04:10.8"]}, "PCI address"),
    ({"kind": "ovs", "bridge": "ovsbr0", "vlan": {"tags": [4096]}}, "4095"),
    ({"kind": "ovs", "bridge": "ovsbr0", "vlan": {"tags": []}}, "tags"),
    ({"kind": "ovs", "bridge": "ovsbr0", "portgroups": [{"name": "a"}, {"name": "a"}]},
     "distinct"),
    ({"kind": "ovs", "bridge": "ovsbr0",
      "portgroups": [{"name": "a", "default": True}, {"name": "b", "default": True}]},
     "one portgroup"),
    ({"kind": "ovs", "bridge": "ovsbr0", "portgroups": [{"name": "a b"}]}, "pattern"),
])
def test_bad_specs(spec: dict[str, Any], problem: str) -> None:
    assert problem in bad("network.define", name="n", spec=spec)


@pytest.mark.parametrize("kind_spec", [
    {"kind": "isolated"},
    {"kind": "open", "ipv4": {"address": "10.0.0.1", "prefix": 24}},
    {"kind": "route", "ipv6": {"address": "fd00::1", "prefix": 64,
                               "dhcp": {"ranges": [{"start": "fd00::10", "end": "fd00::20"}]}}},
    {"kind": "bridge", "bridge": "br0"},
    {"kind": "macvtap", "mode": "passthrough", "devices": ["eth1"]},
    {"kind": "hostdev", "pf": "eth3"},
    {"kind": "hostdev", "vfs": ["0000:04:10.1"], "managed": False},
    {"kind": "ovs", "bridge": "ovsbr0", "portgroups": [{"name": "pg", "default": True}]},
])
def test_good_specs(kind_spec: dict[str, Any]) -> None:
    assert parse("network.define", name="n", spec=kind_spec).spec.kind == kind_spec["kind"]


def test_update_rules() -> None:
    host = {"mac": "52:54:00:00:00:09", "ip": "192.168.150.9"}
    cmd = parse("network.update", name="n", action="add", host=host)
    assert isinstance(cmd, NetworkUpdate)
    assert (cmd.live, cmd.config, cmd.family) == (True, True, "ipv4")
    assert "exactly one of host or range" in bad("network.update", name="n", action="add")
    assert "cannot be modified" in bad("network.update", name="n", action="modify",
                                       range={"start": "10.0.0.2", "end": "10.0.0.3"})
    assert "at least one of live or config" in bad(
        "network.update", name="n", action="add", host=host, live=False, config=False)
    assert "IPv6" in bad("network.update", name="n", action="add", host=host, family="ipv6")
    assert "action" in bad("network.update", name="n", action="replace", host=host)


def test_autostart_needs_enabled_bool() -> None:
    assert "enabled" in bad("network.autostart", name="n")
    assert "enabled" in bad("network.autostart", name="n", enabled="yes")
