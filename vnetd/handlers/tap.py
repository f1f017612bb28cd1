"""tap.ensure / tap.delete: `ip tuntap add dev X mode tap` (+ `brctl addif`), `ip tuntap del`."""

from __future__ import annotations

from typing import Any

from vnetd.contract.commands import TapDelete, TapEnsure
from vnetd.contract.errors import Conflict, Forbidden
from vnetd.handlers.context import Context
from vnetd.handlers.overlay_mtu import check_overlay_mtu
from vnetd.handlers.policy import require_kind, require_link
from vnetd.handlers.port import owned_bridge
from vnetd.handlers.views import view_of
from vnetd.net.model import Link, LinkChange, TapSpec


def _spec(cmd: TapEnsure) -> TapSpec:
    return TapSpec(name=cmd.name, owner_uid=cmd.owner_uid, group_gid=cmd.group_gid,
                   multi_queue=cmd.multi_queue, vnet_hdr=cmd.vnet_hdr, ipv6=cmd.ipv6)


def _check_fixed_flags(cmd: TapEnsure, link: Link) -> None:
    """Queue mode and vnet_hdr are fixed at creation; differing ones need a new TAP."""
    tun = link.tun
    if tun is None:
        return
    for field, wanted, have in (("multi_queue", cmd.multi_queue, tun.multi_queue),
                                ("vnet_hdr", cmd.vnet_hdr, tun.vnet_hdr)):
        if wanted != have:
            raise Conflict(f"tap {cmd.name} exists with {field}={have}; delete it to change that",
                           name=cmd.name, field=field, current=have, wanted=wanted)


async def ensure(cmd: TapEnsure, ctx: Context) -> dict[str, Any]:
    ctx.policy.check_protected(cmd.name, "create or change")
    # checked before any side effect
    bridge = None if cmd.bridge is None else await owned_bridge(ctx, cmd.bridge)
    if bridge is not None and cmd.mtu is not None:
        await check_overlay_mtu(ctx, bridge, cmd.mtu, f"tap {cmd.name}")
    link = await ctx.net.get_link(cmd.name)
    created = owner_changed = False
    if link is None:
        # Marked ours (and IPv6 off unless asked) before it can outlive a crash, so
        # a retry after any later failure converges.
        await ctx.net.add_tap(_spec(cmd))
        link = require_link(await ctx.net.get_link(cmd.name), cmd.name, "tap")
        created = True
    else:
        require_kind(link, "tap")
        ctx.policy.require_owned(link, "change")
        _check_fixed_flags(cmd, link)
        if bridge is not None and link.master not in (None, bridge.index):
            current = await ctx.net.get_link_by_index(link.master)
            if current is not None and not current.owned:
                raise Forbidden(f"tap {cmd.name} is a port of {current.name}, which vnetd did "
                                "not create; vnetd will not move it", name=cmd.name,
                                master=current.name)
        tun = link.tun
        if tun is not None and (
                (cmd.owner_uid is not None and tun.owner_uid != cmd.owner_uid)
                or (cmd.group_gid is not None and tun.group_gid != cmd.group_gid)):
            await ctx.net.set_tap_owner(_spec(cmd))
            owner_changed = True
    # A new TAP takes its bridge's MTU unless told otherwise (as libvirt does).
    mtu = cmd.mtu if cmd.mtu is not None else (bridge.mtu if created and bridge else None)
    change = LinkChange(
        mtu=mtu if mtu is not None and mtu != link.mtu else None,
        mac=cmd.mac if cmd.mac is not None and cmd.mac != link.mac else None,
        master=bridge.index if bridge is not None and link.master != bridge.index else None,
        up=cmd.up if cmd.up != link.up else None,
    )
    if not change.is_empty():
        await ctx.net.set_link(link.index, change)
    changed = created or owner_changed or not change.is_empty()
    if changed:
        link = require_link(await ctx.net.get_link(cmd.name), cmd.name, "tap")
    known = {bridge.index: bridge.name} if bridge is not None else None
    return {**await view_of(ctx.net, link, known), "created": created, "changed": changed}


async def delete(cmd: TapDelete, ctx: Context) -> dict[str, Any]:
    link = await ctx.net.get_link(cmd.name)
    if link is None:
        return {"name": cmd.name, "deleted": False}
    require_kind(link, "tap")
    ctx.policy.require_owned(link, "delete")
    await ctx.net.delete_link(link.index)
    return {"name": cmd.name, "deleted": True}
