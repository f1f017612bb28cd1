"""bridge.ensure / bridge.delete / bridge.list: `brctl addbr`, `delbr`, `show`."""

from __future__ import annotations

from typing import Any

from vnetd.contract.commands import BridgeDelete, BridgeEnsure, BridgeList
from vnetd.handlers.context import Context
from vnetd.handlers.policy import require_kind
from vnetd.handlers.views import bridge_table, view_of
from vnetd.net.model import OWNER_ALIAS, BridgeOptions, Link, LinkChange


def _bridge_changes(cmd: BridgeEnsure, link: Link) -> BridgeOptions:
    current = link.bridge
    def differs(wanted: Any, have: Any) -> Any:
        return wanted if wanted is not None and (current is None or wanted != have) else None
    return BridgeOptions(
        stp=differs(cmd.stp, current.stp if current else None),
        forward_delay=differs(cmd.forward_delay, current.forward_delay if current else None),
        ageing_time=differs(cmd.ageing_time, current.ageing_time if current else None),
        vlan_filtering=differs(cmd.vlan_filtering, current.vlan_filtering if current else None),
    )


async def ensure(cmd: BridgeEnsure, ctx: Context) -> dict[str, Any]:
    ctx.policy.check_protected(cmd.name, "create or change")
    link = await ctx.net.get_link(cmd.name)
    created = False
    if link is None:
        # MTU is set after creation, not in RTM_NEWLINK: only a changed MTU counts as
        # "set by the user" for the kernel, which otherwise lowers it to the ports'.
        await ctx.net.add_bridge(cmd.name, None, cmd.mac, BridgeOptions(
            stp=cmd.stp, forward_delay=cmd.forward_delay, ageing_time=cmd.ageing_time,
            vlan_filtering=cmd.vlan_filtering))
        link = await ctx.net.get_link(cmd.name)
        assert link is not None
        # Mark it ours before anything else; the kernel ignores an alias on creation.
        await ctx.net.set_link(link.index, LinkChange(alias=OWNER_ALIAS))
        created = True
    else:
        require_kind(link, "bridge")
        ctx.policy.require_owned(link, "change")
    change = LinkChange(
        mtu=cmd.mtu if cmd.mtu is not None and cmd.mtu != link.mtu else None,
        mac=cmd.mac if cmd.mac is not None and cmd.mac != link.mac else None,
        up=cmd.up if cmd.up != link.up else None,
        bridge=_bridge_changes(cmd, link),
    )
    changed = not change.is_empty()
    if changed:
        await ctx.net.set_link(link.index, change)
        link = await ctx.net.get_link(cmd.name)
        assert link is not None
    return {**await view_of(ctx.net, link), "created": created, "changed": changed or created}


async def delete(cmd: BridgeDelete, ctx: Context) -> dict[str, Any]:
    link = await ctx.net.get_link(cmd.name)
    if link is None:
        return {"name": cmd.name, "deleted": False}
    require_kind(link, "bridge")
    ctx.policy.require_owned(link, "delete")
    links = await ctx.net.list_links()
    ports = sorted(p.name for p in links if p.master == link.index)
    await ctx.net.delete_link(link.index)
    return {"name": cmd.name, "deleted": True, "detached_ports": ports}


async def list_(cmd: BridgeList, ctx: Context) -> dict[str, Any]:
    return {"bridges": bridge_table(await ctx.net.list_links())}

