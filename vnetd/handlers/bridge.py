"""bridge.ensure / bridge.delete / bridge.list: `brctl addbr`, `delbr`, `show`."""

from __future__ import annotations

import dataclasses
from typing import Any

from vnetd.contract.commands import BridgeDelete, BridgeEnsure, BridgeList
from vnetd.contract.errors import NotFound, Unsupported
from vnetd.handlers import bridge_ipv6, ovs
from vnetd.handlers.context import Context
from vnetd.handlers.overlay_mtu import check_overlay_mtu
from vnetd.handlers.overlay_views import add_bridge_vxlans
from vnetd.handlers.policy import require_kind
from vnetd.handlers.views import bridge_table, view_of
from vnetd.net.model import BridgeOptions, Link, LinkChange


def _same_timer(wanted: float, have: float) -> bool:
    """The kernel keeps bridge timers in centiseconds, through jiffies: equal within 1 cs."""
    return abs(round(wanted * 100) - round(have * 100)) <= 1


def _bridge_changes(cmd: BridgeEnsure, link: Link) -> BridgeOptions:
    have = link.bridge

    def timer(wanted: float | None, current: float | None) -> float | None:
        if wanted is None or (current is not None and _same_timer(wanted, current)):
            return None
        return wanted

    def flag(wanted: bool | None, current: bool | None) -> bool | None:
        return None if wanted is None or wanted == current else wanted

    return BridgeOptions(
        stp=flag(cmd.stp, have.stp if have else None),
        forward_delay=timer(cmd.forward_delay, have.forward_delay if have else None),
        ageing_time=timer(cmd.ageing_time, have.ageing_time if have else None),
        vlan_filtering=flag(cmd.vlan_filtering, have.vlan_filtering if have else None),
    )


async def ensure(cmd: BridgeEnsure, ctx: Context) -> dict[str, Any]:
    ctx.policy.check_protected(cmd.name, "create or change")
    link = await ctx.net.get_link(cmd.name)
    created = ipv6_changed = False
    if link is not None and link.half_created and link.kind == "bridge":
        bridge_ipv6.check(cmd, link)
        # vnetd's own creation that a kill cut short (net/model.py CREATING_GROUP):
        # this (redelivered) job finishes it, IPv6 included (the kill may have come
        # before the backend turned it off), before the bridge comes up.
        await ctx.net.finish_creation(link)
        link = await _gone_is_not_found(ctx, cmd.name)
        created = True
        ipv6_changed = await bridge_ipv6.converge(
            ctx, link, cmd.ipv6 is True, await bridge_ipv6.state_of(ctx, link))
    elif link is None:
        bridge_ipv6.check(cmd, None)
        # MTU is set after creation, not in RTM_NEWLINK: only a changed MTU counts as
        # "set by the user" for the kernel, which otherwise lowers it to the ports'.
        try:
            await ctx.net.add_bridge(cmd.name, None, cmd.mac, BridgeOptions(
                stp=cmd.stp, forward_delay=cmd.forward_delay, ageing_time=cmd.ageing_time,
                vlan_filtering=cmd.vlan_filtering), ipv6=cmd.ipv6 is True)
        except Unsupported as exc:
            raise _explain(exc, cmd) from exc
        # Created marked as vnetd's, IPv6 as asked (the backend does it before anything else).
        link = await _gone_is_not_found(ctx, cmd.name)
        created = True
    else:
        require_kind(link, "bridge")
        ctx.policy.require_owned(link, "change")
        bridge_ipv6.check(cmd, link)
        if cmd.mtu is not None and cmd.mtu != link.mtu:
            await check_overlay_mtu(ctx, link, cmd.mtu, f"bridge {cmd.name}")
        # None leaves a live bridge's IPv6 as it is (an upgrade changes no bridge).
        if cmd.ipv6 is not None and not bridge_ipv6.crosses_min_mtu(link, cmd.mtu):
            ipv6_changed = await bridge_ipv6.converge(
                ctx, link, cmd.ipv6, await bridge_ipv6.state_of(ctx, link))
    change = LinkChange(
        mtu=cmd.mtu if cmd.mtu is not None and cmd.mtu != link.mtu else None,
        mac=cmd.mac if cmd.mac is not None and cmd.mac != link.mac else None,
        up=cmd.up if cmd.up != link.up else None,
        bridge=_bridge_changes(cmd, link),
    )
    changed = not change.is_empty()
    if changed:
        try:
            ipv6_changed |= await _apply(ctx, cmd, link, change)
        except Unsupported as exc:
            raise _explain(exc, cmd) from exc
        link = await _gone_is_not_found(ctx, cmd.name)
    return {**await view_of(ctx.net, link),
            "ipv6": bridge_ipv6.view(await bridge_ipv6.state_of(ctx, link)),
            "created": created, "changed": changed or created or ipv6_changed}


async def _apply(ctx: Context, cmd: BridgeEnsure, link: Link, change: LinkChange) -> bool:
    """`change` in one request; True when IPv6 had to be converged on the way.

    An MTU raised from under 1280 gives the bridge IPv6 state anew, with the
    namespace's defaults (on): then the MTU goes first, IPv6 is set to `cmd.ipv6`
    (off when not given: vnetd's default, since what was there before was no IPv6 at
    all), and only then is the bridge brought up. A bridge that is up already may
    show a link-local address in between (the kernel makes it with the new state)."""
    if not bridge_ipv6.crosses_min_mtu(link, change.mtu):
        await ctx.net.set_link(link.index, change)
        return False
    await ctx.net.set_link(link.index, dataclasses.replace(change, up=None))
    link = await _gone_is_not_found(ctx, cmd.name)
    ipv6_changed = await bridge_ipv6.converge(
        ctx, link, cmd.ipv6 is True, await bridge_ipv6.state_of(ctx, link))
    if change.up is not None:
        await ctx.net.set_link(link.index, LinkChange(up=change.up))
    return ipv6_changed


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
    """Linux bridges (with their VXLAN ports), then Open vSwitch bridges (kind "ovs")."""
    links = await ctx.net.list_links()
    bridges = bridge_table(links)
    states = await ctx.net.ipv6_states([b["name"] for b in bridges])  # one hop for all
    for entry, state in zip(bridges, states, strict=True):
        entry["ipv6"] = bridge_ipv6.view(state)
    await add_bridge_vxlans(ctx.net, bridges, links)
    return {"bridges": bridges + await ovs.bridge_entries(ctx)}


def _explain(exc: Unsupported, cmd: BridgeEnsure) -> Unsupported:
    if cmd.vlan_filtering:
        return Unsupported(
            f"bridge {cmd.name}: this kernel has no bridge VLAN filtering "
            "(CONFIG_BRIDGE_VLAN_FILTERING); leave vlan_filtering unset or false",
            name=cmd.name, feature="vlan_filtering", **exc.details)
    return exc


async def _gone_is_not_found(ctx: Context, name: str) -> Link:
    """The bridge just created or changed; someone else may have deleted it meanwhile."""
    link = await ctx.net.get_link(name)
    if link is None:
        raise NotFound(f"bridge {name} disappeared while vnetd was setting it up", name=name)
    return link
