"""MTU safety for bridges and TAPs that carry a VXLAN segment.

A frame larger than the VXLAN device's underlay can carry (its MTU minus 50
bytes over IPv4, 70 over IPv6) is dropped silently on the way out, so a bridge
or TAP MTU above that is refused (`invalid_argument`, naming the numbers)
rather than accepted and lost later.
"""

from __future__ import annotations

from vnetd.handlers.context import Context
from vnetd.handlers.vxlan import check_mtu, underlay_of
from vnetd.net.model import Link


async def check_overlay_mtu(ctx: Context, bridge: Link, mtu: int, what: str) -> None:
    """Refuse `mtu` for `bridge` (or a port of it) when a VXLAN port's underlay cannot
    carry it. One link dump; a couple of requests per VXLAN port."""
    overlay = ctx.net.overlay()
    for link in await ctx.net.list_links():
        if link.kind != "vxlan" or link.master != bridge.index:
            continue
        info = await overlay.vxlan_info(link.index)
        if info is None or info.local is None:
            continue
        dev = None
        if info.link is not None:
            found = await ctx.net.get_link_by_index(info.link)
            dev = found.name if found is not None else None
        underlay = await underlay_of(ctx, info.local, dev)
        check_mtu(f"{what} (bridge {bridge.name} carries VXLAN {link.name})", mtu, underlay,
                  info.local)
