"""`vnetctl show --format dot`: the DOT text of a fixed host, node by node, edge by edge."""

from __future__ import annotations

import re
import shutil
from typing import Any

from vnetd.cli import picture


def link(name: str, kind: str, *, master: str | None = None, owned: bool = True,
         state: str = "up", **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "state": state, "mtu": 1500, "mac": None,
            "master": master, "owned": owned, **extra}


HOST = {
    "host_id": "hv1",
    "links": [
        link("lo", "loopback", owned=False),
        link("eth0", "veth", owned=False),                     # alone: not drawn
        link("br0", "bridge"),
        link("tap0", "tap", master="br0"),
        link("tap1", "tap", master="br0", state="down"),
        link("veth-a", "veth", master="br0", owned=False),     # a foreign port: drawn
        link("loose0", "tap"),
        link("vx100", "vxlan", master="br0", vxlan={"vni": 100, "remotes": 2}),
        link("ovs-system", "openvswitch", owned=False, state="down"),
        link("virbr0", "bridge", owned=False),
    ],
    "networks": [
        {"name": "default", "active": True, "bridge": "virbr0", "owned": False, "kind": "nat"},
        {"name": "vn-iso", "active": False, "bridge": "vbr-iso", "owned": True,
         "kind": "isolated"},
    ],
    "networks_error": None,
}


def nodes_and_edges(text: str) -> tuple[dict[str, str], set[tuple[str, str]]]:
    nodes = {m[1]: m[2] for m in re.finditer(r'^\s+"([^"]+)" \[(.*)\];$', text, re.M)}
    edges = {(m[1], m[2]) for m in re.finditer(r'^\s+"([^"]+)" -> "([^"]+)"', text, re.M)}
    return nodes, edges


def test_dot_of_a_known_host() -> None:
    nodes, edges = nodes_and_edges(picture.dot([HOST]))
    assert set(nodes) == {"br0", "tap0", "tap1", "veth-a", "loose0", "vx100", "ovs-system",
                          "virbr0", "network:default", "network:vn-iso", "vbr-iso"}
    assert edges == {("br0", "tap0"), ("br0", "tap1"), ("br0", "veth-a"), ("br0", "vx100"),
                     ("network:default", "virbr0"), ("network:vn-iso", "vbr-iso")}
    # fill: owned or not; border: up (solid green) or down (dashed red)
    assert f'fillcolor="{picture.OWNED_FILL}"' in nodes["tap0"]
    assert f'fillcolor="{picture.FOREIGN_FILL}"' in nodes["veth-a"]
    assert f'color="{picture.UP_PEN}"' in nodes["tap0"] and "dashed" not in nodes["tap0"]
    assert f'color="{picture.DOWN_PEN}"' in nodes["tap1"] and "dashed" in nodes["tap1"]
    assert 'shape="box"' in nodes["br0"] and 'shape="hexagon"' in nodes["vx100"]
    assert "vni 100  2 remotes" in nodes["vx100"] and 'shape="box3d"' in nodes["ovs-system"]
    assert 'shape="note"' in nodes["network:default"]
    assert "dashed" in nodes["network:vn-iso"]  # an inactive network
    assert "bridge (absent)" in nodes["vbr-iso"]


def test_several_hosts_are_clusters_with_prefixed_names() -> None:
    other = {"host_id": "hv2", "links": [link("br0", "bridge")], "networks": None,
             "networks_error": "unavailable: libvirt is disabled"}
    text = picture.dot([HOST, other])
    nodes, edges = nodes_and_edges(text)
    assert {"hv1/br0", "hv2/br0", "hv1/network:default"} <= set(nodes)
    assert ("hv1/br0", "hv1/tap0") in edges
    assert text.count('subgraph "cluster_') == 2
    assert "networks: unavailable: libvirt is disabled" in nodes["hv2/networks: n/a"]


def test_names_are_quoted_for_dot() -> None:
    assert picture._q('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


def test_svg_has_a_title_per_node_and_edge() -> None:
    assert shutil.which("dot"), "graphviz is a test package (scripts/setup.sh --test)"
    svg = picture.draw([HOST], "svg")
    titles = set(re.findall(r"<title>([^<]*)</title>", svg))
    assert {"br0", "tap0", "network:default", "br0&#45;&gt;tap0",
            "network:default&#45;&gt;virbr0"} <= titles


def ovs_port(name: str, *, tag: int | None = None, trunks: tuple[int, ...] = (),
             owned: bool = True, type: str = "", link_state: str | None = "up",
             vlan_mode: str | None = None) -> dict[str, Any]:
    return {"name": name, "owned": owned, "tag": tag, "trunks": list(trunks),
            "vlan_mode": vlan_mode, "type": type, "ofport": 1, "link_state": link_state}


OVS_HOST = {
    "host_id": "hv1",
    "links": [
        link("ovs-system", "openvswitch", owned=False, state="down"),
        link("br-int", "openvswitch", master="ovs-system", owned=False),
        link("br-ext", "openvswitch", master="ovs-system", owned=False, state="down"),
        link("tap-a", "tap", master="ovs-system"),
        link("tap-b", "tap", master="ovs-system", state="down"),
        link("eth1", "veth", master="ovs-system", owned=False),
        link("br0", "bridge"),
    ],
    "networks": [{"name": "ovsnet", "active": True, "bridge": "br-int", "owned": True,
                  "kind": "openvswitch"}],
    "networks_error": None,
    "ovs": [
        {"name": "br-int", "kind": "ovs", "owned": True, "datapath_type": "system",
         "ovs_ports": [ovs_port("tap-a", tag=10), ovs_port("tap-b", tag=20),
                       ovs_port("patch-ext", type="patch", owned=False, link_state=None)]},
        {"name": "br-ext", "kind": "ovs", "owned": False, "datapath_type": "system",
         "ovs_ports": [ovs_port("eth1", trunks=(10, 20), vlan_mode="trunk", owned=False)]},
    ],
}


def test_ovs_bridges_and_ports_with_vlans_replace_the_kernels_view() -> None:
    text = picture.dot([OVS_HOST])
    nodes, edges = nodes_and_edges(text)
    # ovs-system (every port's kernel master) is not drawn: OVSDB says which bridge.
    assert set(nodes) == {"br-int", "br-ext", "tap-a", "tap-b", "eth1", "patch-ext", "br0",
                          "network:ovsnet"}
    assert edges == {("br-int", "tap-a"), ("br-int", "tap-b"), ("br-int", "patch-ext"),
                     ("br-ext", "eth1"), ("network:ovsnet", "br-int")}
    assert re.search(r'"br-int" -> "tap-a" \[label="tag 10"\];', text)
    assert re.search(r'"br-int" -> "tap-b" \[label="tag 20"\];', text)
    assert re.search(r'"br-ext" -> "eth1" \[label="trunks 10,20  trunk"\];', text)
    assert re.search(r'"br-int" -> "patch-ext";', text)  # no VLAN: no label
    # Each node once (the OVS bridge is not also drawn as its kernel device).
    assert len(re.findall(r'^\s+"br-int" \[', text, re.M)) == 1
    # Bridge: owned from OVSDB, up from its kernel device; shape: 3D box.
    assert 'label="br-int\\novs bridge  system"' in nodes["br-int"]
    assert f'fillcolor="{picture.OWNED_FILL}"' in nodes["br-int"]
    assert f'color="{picture.UP_PEN}"' in nodes["br-int"] and 'shape="box3d"' in nodes["br-int"]
    assert f'fillcolor="{picture.FOREIGN_FILL}"' in nodes["br-ext"]
    assert f'color="{picture.DOWN_PEN}"' in nodes["br-ext"] and "dashed" in nodes["br-ext"]
    # Ports with a kernel device are that device; a patch port gets its own node.
    assert 'shape="ellipse"' in nodes["tap-a"] and "dashed" in nodes["tap-b"]
    assert "ovs port  patch" in nodes["patch-ext"]
    assert f'fillcolor="{picture.FOREIGN_FILL}"' in nodes["patch-ext"]
    assert "dashed" in nodes["patch-ext"]  # no link state: not shown as up
    assert "bridge (absent)" not in text  # the network's bridge is the OVS one


def test_without_ovs_data_the_kernels_devices_are_drawn_as_before() -> None:
    host = {**OVS_HOST, "ovs": None}
    nodes, edges = nodes_and_edges(picture.dot([host]))
    assert {"ovs-system", "br-int", "tap-a"} <= set(nodes)
    assert ("ovs-system", "tap-a") in edges
    assert not any("label=" in line and "tag" in line for line in picture.dot([host]).split("\n"))


def test_svg_draws_ovs_edges() -> None:
    assert shutil.which("dot"), "graphviz is a test package (scripts/setup.sh --test)"
    svg = picture.draw([OVS_HOST], "svg")
    titles = set(re.findall(r"<title>([^<]*)</title>", svg))
    assert {"br&#45;int", "br&#45;int&#45;&gt;tap&#45;a", "br&#45;ext&#45;&gt;eth1"} <= titles
    assert ">tag 10<" in svg
