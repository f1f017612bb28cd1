"""How VXLAN devices appear in replies: their settings and how many remotes they flood to."""

from __future__ import annotations

from typing import Any

from vnetd.net.backend import NetBackend
from vnetd.net.model import Link


async def vxlan_view(net: NetBackend, link: Link) -> dict[str, Any] | None:
    overlay = net.overlay()
    info = await overlay.vxlan_info(link.index)
    if info is None:
        return None
    rows = await overlay.fdb_entries(link.index)
    return {
        "vni": info.vni,
        "local": info.local,
        "dev_index": info.link,
        "dstport": info.port,
        "learning": info.learning,
        "proxy": info.proxy,
        "ttl": info.ttl,
        "tos": info.tos,
        "remotes": sum(1 for r in rows if r.flood and r.owned),
        "fdb_entries": sum(1 for r in rows if not r.flood and r.owned),
    }


async def add_vxlan_views(net: NetBackend, views: list[dict[str, Any]]) -> None:
    """Give every VXLAN link's view its `vxlan` settings (a few requests per VXLAN)."""
    for view in views:
        if view.get("kind") == "vxlan" and "vxlan" not in view:
            link = await net.get_link_by_index(int(view["index"]))
            if link is not None:
                view["vxlan"] = await vxlan_view(net, link)


async def add_bridge_vxlans(net: NetBackend, bridges: list[dict[str, Any]],
                            links: list[Link]) -> None:
    """Give each bridge of `bridge.list` the segments it carries: its VXLAN ports."""
    by_master: dict[int, list[Link]] = {}
    for link in links:
        if link.kind == "vxlan" and link.master is not None:
            by_master.setdefault(link.master, []).append(link)
    for bridge in bridges:
        ports = by_master.get(int(bridge["index"]), [])
        if ports:
            bridge["vxlan"] = [{"name": p.name, **(await vxlan_view(net, p) or {})}
                               for p in ports]
