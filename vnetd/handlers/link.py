"""link.set / link.list: `ip link set` and `ip link show` for vnetd's devices."""

from __future__ import annotations

from typing import Any

from vnetd.contract.commands import LinkList, LinkSet
from vnetd.handlers.context import Context
from vnetd.handlers.overlay_views import add_vxlan_views
from vnetd.handlers.policy import require_link
from vnetd.handlers.views import view_of, views_of
from vnetd.net.model import LinkChange


async def set_(cmd: LinkSet, ctx: Context) -> dict[str, Any]:
    link = require_link(await ctx.net.get_link(cmd.name), cmd.name)
    ctx.policy.require_owned(link, "change")
    change = LinkChange(
        up=cmd.up if cmd.up is not None and cmd.up != link.up else None,
        mtu=cmd.mtu if cmd.mtu is not None and cmd.mtu != link.mtu else None,
        mac=cmd.mac if cmd.mac is not None and cmd.mac != link.mac else None,
    )
    if not change.is_empty():
        await ctx.net.set_link(link.index, change)
        link = require_link(await ctx.net.get_link(cmd.name), cmd.name)
    return {**await view_of(ctx.net, link), "changed": not change.is_empty()}


async def list_(cmd: LinkList, ctx: Context) -> dict[str, Any]:
    links = await ctx.net.list_links()
    views = views_of(links)
    if cmd.kind is not None:
        views = [v for v in views if v["kind"] == cmd.kind]
    if cmd.owned_only:
        views = [v for v in views if v["owned"]]
    await add_vxlan_views(ctx.net, views)
    return {"links": views}
