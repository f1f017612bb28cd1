"""`vnetctl show --format dot|svg`: a host's networks as a Graphviz picture.

Bridges with their ports and TAPs, VXLAN and Open vSwitch devices, libvirt
networks pointing at their bridges; the fill says whose a device is (vnetd's or
not), the border whether it is up. This module only writes DOT text from the
replies of link.list, network.list and ovs.bridge.list; cli/graphviz.py runs
`dot` on the client (the daemon never runs a program).

When the host reports its Open vSwitch bridges (`ovs`), each is drawn from
OVSDB with an edge to each of its ports labelled with the port's VLAN (tag or
trunks); the kernel's view of the same thing (the `ovs-system` datapath as
every port's master, each bridge's internal device) is then left out, so
nothing is drawn twice.
"""

from __future__ import annotations

import argparse
from typing import Any

from vnetd.cli.graphviz import GraphvizMissing, render_dot

FORMATS = ("tree", "dot", "svg")
OWNED_FILL, FOREIGN_FILL = "#cfe8d4", "#e4e4e4"
UP_PEN, DOWN_PEN = "#2e7d32", "#c62828"
SHAPES = {"bridge": "box", "tap": "ellipse", "vxlan": "hexagon", "openvswitch": "box3d",
          "veth": "cds"}
DRAWN_KINDS = frozenset({"bridge", "tap", "vxlan", "openvswitch"})
"""Drawn even when alone; any other device only as a port of one of these."""
LEGEND = ("green: vnetd's   grey: not vnetd's   solid border: up   dashed red border: down   "
          "note: libvirt network   3D box: Open vSwitch bridge (edge label: VLAN)")
OVS_DATAPATH = "ovs-system"
"""The kernel device of the OVS datapath: every OVS port's master in link.list."""

__all__ = ["GraphvizMissing", "add_arguments", "dot", "draw"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="tree",
                   help="tree (default, text), dot (Graphviz source) or svg (needs Graphviz's "
                        "`dot`: apt install graphviz)")


def _q(text: str) -> str:
    """A DOT string: quotes and backslashes escaped, line breaks as DOT escapes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**kw: str) -> str:
    return "[" + ", ".join(f"{k}={_q(v)}" for k, v in kw.items()) + "]"


def _style(owned: bool, up: bool, shape: str) -> dict[str, str]:
    style = "filled" + ("" if up else ",dashed") + (",rounded" if shape == "box" else "")
    return {"shape": shape, "style": style, "fillcolor": OWNED_FILL if owned else FOREIGN_FILL,
            "color": UP_PEN if up else DOWN_PEN, "penwidth": "1.5"}


def _link_label(link: dict[str, Any]) -> str:
    kind = str(link.get("kind") or "?")
    extra = []
    raw = link.get("vxlan")
    vxlan: dict[str, Any] = raw if isinstance(raw, dict) else {}
    vni = vxlan.get("vni", link.get("vni"))
    if vni is not None:
        extra.append(f"vni {vni}")
    if vxlan.get("remotes"):
        extra.append(f"{vxlan['remotes']} remotes")
    if link.get("mtu"):
        extra.append(f"mtu {link['mtu']}")
    return "\n".join([str(link["name"]), "  ".join([kind, *extra])])


def _drawn(links: list[dict[str, Any]], networks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = {str(link["name"]) for link in links}
    masters = {str(link["master"]) for link in links if link.get("master") in names}
    wanted = {str(n.get("bridge")) for n in networks if n.get("bridge")}
    chosen = {str(link["name"]) for link in links
              if link.get("kind") in DRAWN_KINDS or link["name"] in masters
              or link["name"] in wanted
              or (link.get("master") in names and link.get("kind") != "loopback")}
    return sorted((link for link in links if link["name"] in chosen), key=lambda x: x["name"])


def _node(node_id: str, **attrs: str) -> str:
    return f"    {_q(node_id)} {_attrs(**attrs)};"


def _edge(a: str, b: str, **attrs: str) -> str:
    return f"    {_q(a)} -> {_q(b)}" + (f" {_attrs(**attrs)};" if attrs else ";")


def _vlan(port: dict[str, Any]) -> str:
    if port.get("tag") is not None:
        vlan = f"tag {port['tag']}"
    elif port.get("trunks"):
        vlan = "trunks " + ",".join(map(str, port["trunks"]))
    else:
        vlan = ""
    mode = port.get("vlan_mode")
    return "  ".join(x for x in (vlan, str(mode) if mode else "") if x)


def _ovs_body(bridges: list[dict[str, Any]], links: dict[str, dict[str, Any]],
              ids: dict[str, str], prefix: str) -> list[str]:
    """OVS bridges (up: their kernel device is up) and an edge to each port; a port
    with no kernel device drawn (patch, internal of another kind) gets its own node."""
    out = []
    for br in sorted(bridges, key=lambda b: str(b.get("name"))):
        name = str(br.get("name"))
        dev = links.get(name)
        ids[name] = prefix + name
        label = f"{name}\novs bridge  {br.get('datapath_type') or 'system'}"
        out.append(_node(ids[name], label=label, **_style(
            bool(br.get("owned")), bool(dev and dev.get("state") == "up"), SHAPES["openvswitch"])))
        for port in sorted(br.get("ovs_ports") or [], key=lambda p: str(p.get("name"))):
            pname = str(port.get("name"))
            if pname not in ids:
                dev = links.get(pname)
                up = dev.get("state") == "up" if dev else port.get("link_state") == "up"
                owned = dev.get("owned") if dev else port.get("owned")
                ids[pname] = prefix + pname
                out.append(_node(ids[pname], label=f"{pname}\novs port  {port.get('type') or ''}"
                                 .rstrip(), **_style(bool(owned), up, "ellipse")))
            vlan = _vlan(port)
            out.append(_edge(ids[name], ids[pname], **({"label": vlan} if vlan else {})))
    return out


def _host_body(host: dict[str, Any], prefix: str) -> list[str]:
    links = list(host.get("links") or [])
    networks = list(host.get("networks") or [])
    ovs = host.get("ovs")
    # With OVSDB's view, the kernel's (datapath, bridges' internal devices) is redundant.
    hidden = ({OVS_DATAPATH} | {str(b.get("name")) for b in ovs}) if ovs is not None else set()
    drawn = [link for link in _drawn(links, networks) if link["name"] not in hidden]
    ids = {str(link["name"]): prefix + str(link["name"]) for link in drawn}
    out = []
    for link in drawn:
        shape = SHAPES.get(str(link.get("kind")), "ellipse")
        style = _style(bool(link.get("owned")), link.get("state") == "up", shape)
        out.append(_node(ids[link["name"]], label=_link_label(link), **style))
    for link in drawn:
        master = link.get("master")
        if master in ids:
            out.append(_edge(ids[master], ids[link["name"]]))
    if ovs:
        out += _ovs_body(list(ovs), {str(x["name"]): x for x in links}, ids, prefix)
    for net in sorted(networks, key=lambda n: str(n.get("name"))):
        nid = f"{prefix}network:{net.get('name')}"
        label = f"{net.get('name')}\nnetwork  {net.get('kind') or ''}".rstrip()
        style = _style(bool(net.get("owned")), bool(net.get("active")), "note")
        out.append(_node(nid, label=label, **style))
        bridge = net.get("bridge")
        if bridge:
            if bridge not in ids:  # e.g. the bridge of an inactive network
                ids[bridge] = prefix + str(bridge)
                out.append(_node(ids[bridge], label=f"{bridge}\nbridge (absent)",
                                 **_style(False, False, "box")))
            out.append(_edge(nid, ids[bridge], style="dashed", arrowhead="none"))
    if note := host.get("networks_error"):
        out.append(_node(prefix + "networks: n/a", label=f"networks: {note}",
                         shape="plaintext"))
    return out


def dot(hosts: list[dict[str, Any]]) -> str:
    """DOT text for hosts [{"host_id", "links", "networks", "networks_error", "ovs"}]
    ("ovs": ovs.bridge.list's bridges, or None where OVS is not managed). With one
    host, a node is named after its device (`br0`) or network (`network:default`);
    with several, each name is prefixed with `<host_id>/` and each host is a cluster."""
    graph = _attrs(rankdir="LR", fontname="Helvetica", fontsize="10", labelloc="b",
                   label=LEGEND)
    lines = ["digraph vnetd {", f"  graph {graph};",
             f"  node {_attrs(fontname='Helvetica', fontsize='10')};",
             f"  edge {_attrs(color='#555555')};"]
    many = len(hosts) > 1
    for i, host in enumerate(hosts):
        prefix = f"{host.get('host_id')}/" if many else ""
        cluster, label = _q(f"cluster_{i}"), _q(str(host.get("host_id")))
        lines.append(f"  subgraph {cluster} {{")
        lines.append(f'    label={label}; fontsize="12";')
        lines += _host_body(host, prefix)
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(hosts: list[dict[str, Any]], fmt: str) -> str:
    """The picture in `fmt` (dot or svg)."""
    text = dot(hosts)
    return text if fmt == "dot" else render_dot(text, fmt)
