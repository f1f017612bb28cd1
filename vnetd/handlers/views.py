"""How links appear in replies: the resulting state, as plain JSON data."""

from __future__ import annotations

from typing import Any

from vnetd.net.backend import NetBackend
from vnetd.net.model import Link


def link_view(link: Link, master_name: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": link.name,
        "index": link.index,
        "kind": link.kind,
        "mtu": link.mtu,
        "mac": link.mac,
        "state": "up" if link.up else "down",
        "oper_state": link.oper_state,
        "carrier": link.carrier,
        "master": master_name,
        "owned": link.owned,
    }
    if link.bridge is not None:
        view["bridge"] = {
            "stp": link.bridge.stp,
            "forward_delay": link.bridge.forward_delay,
            "ageing_time": link.bridge.ageing_time,
            "vlan_filtering": link.bridge.vlan_filtering,
        }
    if link.tun is not None:
        view["tap"] = {
            "owner_uid": link.tun.owner_uid,
            "group_gid": link.tun.group_gid,
            "multi_queue": link.tun.multi_queue,
            "vnet_hdr": link.tun.vnet_hdr,
            "persistent": link.tun.persistent,
        }
    return view


async def view_of(net: NetBackend, link: Link,
                  known: dict[int, str] | None = None) -> dict[str, Any]:
    """The view of one link, resolving its master's name (one lookup at most)."""
    master = None
    if link.master is not None:
        master = (known or {}).get(link.master)
        if master is None:
            found = await net.get_link_by_index(link.master)
            master = found.name if found else None
    return link_view(link, master)


def views_of(links: list[Link]) -> list[dict[str, Any]]:
    names = {link.index: link.name for link in links}
    return [link_view(link, names.get(link.master) if link.master else None) for link in links]


def bridge_table(links: list[Link]) -> list[dict[str, Any]]:
    """Every bridge with its ports: what `brctl show` shows, as data."""
    names = {link.index: link.name for link in links}
    ports: dict[int, list[str]] = {}
    for link in links:
        if link.master is not None:
            ports.setdefault(link.master, []).append(link.name)
    return [
        {**link_view(link, names.get(link.master) if link.master else None),
         "ports": sorted(ports.get(link.index, []))}
        for link in links if link.kind == "bridge"
    ]
