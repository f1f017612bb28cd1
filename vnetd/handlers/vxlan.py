"""vxlan.ensure / vxlan.delete: `ip link add type vxlan ...` + `master BR`, `ip link del`."""

from __future__ import annotations

import ipaddress
from typing import Any

from vnetd.contract.errors import Conflict, InvalidArgument
from vnetd.contract.overlay import VxlanDelete, VxlanEnsure
from vnetd.handlers.context import Context
from vnetd.handlers.overlay_views import vxlan_view
from vnetd.handlers.policy import require_kind, require_link
from vnetd.handlers.port import owned_bridge
from vnetd.handlers.views import view_of
from vnetd.net.model import Link, LinkChange
from vnetd.net.overlay import VxlanInfo, VxlanSpec, overhead


async def _bridge(cmd: VxlanEnsure, ctx: Context) -> Link | None:
    return None if cmd.bridge is None else await owned_bridge(ctx, cmd.bridge)


async def underlay_of(ctx: Context, local: str, dev: str | None) -> Link:
    """The device whose MTU bounds the overlay: `dev`, else the one holding `local`."""
    addresses = await ctx.net.overlay().local_addresses()
    if local not in addresses:
        raise InvalidArgument(f"local address {local} is not configured on any link of this "
                              "host: VXLAN packets need it as their source", local=local)
    if dev is not None:
        return require_link(await ctx.net.get_link(dev), dev, "underlay device")
    return require_link(await ctx.net.get_link_by_index(addresses[local]), local, "underlay")


def mtu_limit(underlay: Link, local: str) -> tuple[int, int]:
    """(largest inner MTU the underlay carries, the overhead)."""
    cost = overhead(local)
    return underlay.mtu - cost, cost


def check_mtu(what: str, mtu: int, underlay: Link, local: str) -> None:
    limit, cost = mtu_limit(underlay, local)
    if mtu > limit:
        family = "IPv4" if ipaddress.ip_address(local).version == 4 else "IPv6"
        raise InvalidArgument(
            f"{what}: MTU {mtu} is more than the underlay can carry: {underlay.name} has MTU "
            f"{underlay.mtu}, VXLAN over {family} costs {cost} bytes, so at most {limit}",
            mtu=mtu, underlay=underlay.name, underlay_mtu=underlay.mtu, overhead=cost,
            limit=limit)


def _fixed_differences(cmd: VxlanEnsure, info: VxlanInfo, dev: Link | None) -> list[str]:
    wanted: dict[str, object] = {
        "vni": cmd.vni, "local": cmd.local, "dstport": cmd.dstport, "learning": cmd.learning,
        "proxy": cmd.proxy, "ttl": cmd.ttl or 0, "tos": cmd.tos or 0,
        "dev": dev.index if dev is not None else None}
    have: dict[str, object] = {
        "vni": info.vni, "local": info.local, "dstport": info.port, "learning": info.learning,
        "proxy": info.proxy, "ttl": info.ttl, "tos": info.tos, "dev": info.link}
    return [k for k in wanted if wanted[k] != have[k]]


async def ensure(cmd: VxlanEnsure, ctx: Context) -> dict[str, Any]:
    ctx.policy.check_protected(cmd.name, "create or change")
    overlay = ctx.net.overlay()
    # Everything is checked before any side effect: bridge, underlay, MTU, fixed settings.
    bridge = await _bridge(cmd, ctx)
    underlay = await underlay_of(ctx, cmd.local, cmd.dev)
    limit, _ = mtu_limit(underlay, cmd.local)
    if cmd.mtu is not None:
        check_mtu(f"vxlan {cmd.name}", cmd.mtu, underlay, cmd.local)
    link = await ctx.net.get_link(cmd.name)
    created = False
    if link is not None and link.half_created and link.kind == "vxlan":
        # vnetd's own creation that a kill cut short (net/model.py CREATING_GROUP):
        # this (redelivered) job finishes it, then checks it like any existing one.
        await ctx.net.finish_creation(link)
        link = require_link(await ctx.net.get_link(cmd.name), cmd.name, "vxlan")
        created = True
    if link is not None:
        require_kind(link, "vxlan")
        ctx.policy.require_owned(link, "change")
        info = await overlay.vxlan_info(link.index)
        if info is None:
            raise Conflict(f"{cmd.name} disappeared or is not a VXLAN", name=cmd.name)
        differ = _fixed_differences(cmd, info, underlay if cmd.dev else None)
        if differ:
            raise Conflict(f"vxlan {cmd.name} exists with other {', '.join(differ)}; the kernel "
                           "fixes them at creation: delete it to change them", name=cmd.name,
                           fields=differ)
    else:
        if limit < 68:
            check_mtu(f"vxlan {cmd.name}", 68, underlay, cmd.local)
        await overlay.add_vxlan(VxlanSpec(
            name=cmd.name, vni=cmd.vni, local=cmd.local,
            link=underlay.index if cmd.dev is not None else None, port=cmd.dstport,
            learning=cmd.learning, proxy=cmd.proxy, ttl=cmd.ttl or 0, tos=cmd.tos or 0,
            mtu=cmd.mtu if cmd.mtu is not None else limit))
        link = require_link(await ctx.net.get_link(cmd.name), cmd.name, "vxlan")
        # Born in CREATING_GROUP: marked now, then out of the group, so a retry after
        # any later failure (or a kill) converges.
        await ctx.net.finish_creation(link)
        created = True
    change = LinkChange(
        mtu=cmd.mtu if cmd.mtu is not None and cmd.mtu != link.mtu else None,
        master=bridge.index if bridge is not None and link.master != bridge.index else None,
        up=cmd.up if cmd.up != link.up else None,
    )
    if not change.is_empty():
        await ctx.net.set_link(link.index, change)
    changed = created or not change.is_empty()
    if changed:
        link = require_link(await ctx.net.get_link(cmd.name), cmd.name, "vxlan")
    known = {bridge.index: bridge.name} if bridge is not None else None
    view = await view_of(ctx.net, link, known)
    view["vxlan"] = await vxlan_view(ctx.net, link)
    view["vxlan"] = {**(view["vxlan"] or {}), "underlay": underlay.name, "mtu_limit": limit}
    return {**view, "created": created, "changed": changed}


async def delete(cmd: VxlanDelete, ctx: Context) -> dict[str, Any]:
    link = await ctx.net.get_link(cmd.name)
    if link is None:
        return {"name": cmd.name, "deleted": False}
    require_kind(link, "vxlan")
    ctx.policy.require_owned(link, "delete")
    # Its entries go with it: not drift, so the watcher must not report them.
    ctx.overlay.forget(link.index)
    await ctx.net.delete_link(link.index)
    return {"name": cmd.name, "deleted": True}
