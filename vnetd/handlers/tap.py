"""tap.ensure / tap.delete: `ip tuntap add dev X mode tap` (+ `brctl addif`), `ip tuntap del`.

tap.ensure reads once, plans, applies: the TAP and its bridge in one round trip,
every check on that state before any side effect, then one creation (which
marks and configures the TAP in the same request) or one change, whose answer
is the state the reply shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vnetd.contract.commands import TapDelete, TapEnsure
from vnetd.contract.errors import Conflict, Forbidden
from vnetd.handlers.context import Context
from vnetd.handlers.overlay_mtu import check_overlay_mtu
from vnetd.handlers.policy import require_kind, require_link
from vnetd.handlers.port import require_owned_bridge
from vnetd.handlers.views import view_of
from vnetd.net.model import Link, LinkChange, TapSpec


def tap_spec(cmd: TapEnsure) -> TapSpec:
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


@dataclass(frozen=True)
class TapPlan:
    create: bool
    owner: bool
    """An existing TAP gets a new owner/group (an ioctl, not netlink)."""
    change: LinkChange


def plan_ensure(cmd: TapEnsure, link: Link | None, bridge: Link | None) -> TapPlan:
    if link is None:
        # A new TAP takes its bridge's MTU unless told otherwise (as libvirt does).
        mtu = cmd.mtu if cmd.mtu is not None else (bridge.mtu if bridge else None)
        return TapPlan(True, False, LinkChange(
            mtu=mtu, mac=cmd.mac, master=bridge.index if bridge else None,
            up=True if cmd.up else None))  # a new TAP is down
    tun = link.tun
    owner = tun is not None and (
        (cmd.owner_uid is not None and tun.owner_uid != cmd.owner_uid)
        or (cmd.group_gid is not None and tun.group_gid != cmd.group_gid))
    return TapPlan(False, owner, LinkChange(
        mtu=cmd.mtu if cmd.mtu is not None and cmd.mtu != link.mtu else None,
        mac=cmd.mac if cmd.mac is not None and cmd.mac != link.mac else None,
        master=bridge.index if bridge is not None and link.master != bridge.index else None,
        up=cmd.up if cmd.up != link.up else None))


async def _check_existing(cmd: TapEnsure, ctx: Context, link: Link, bridge: Link | None) -> None:
    require_kind(link, "tap")
    ctx.policy.require_owned(link, "change")
    _check_fixed_flags(cmd, link)
    if bridge is not None and link.master not in (None, bridge.index):
        current = await ctx.net.get_link_by_index(link.master)
        if current is not None and not current.owned:
            raise Forbidden(f"tap {cmd.name} is a port of {current.name}, which vnetd did "
                            "not create; vnetd will not move it", name=cmd.name,
                            master=current.name)


async def ensure(cmd: TapEnsure, ctx: Context) -> dict[str, Any]:
    ctx.policy.check_protected(cmd.name, "create or change")
    # Read once (the kernel's state, not a cache: the ownership checks run on it),
    # check everything before any side effect.
    if cmd.bridge is None:
        (link,), bridge = await ctx.net.get_links((cmd.name,)), None
    else:
        link, found = await ctx.net.get_links((cmd.name, cmd.bridge))
        bridge = require_owned_bridge(ctx, found, cmd.bridge)
        if cmd.mtu is not None:
            await check_overlay_mtu(ctx, bridge, cmd.mtu, f"tap {cmd.name}")
    if link is not None:
        await _check_existing(cmd, ctx, link, bridge)
    plan = plan_ensure(cmd, link, bridge)

    if link is None:
        # Marked ours (and IPv6 off unless asked) before it can outlive a crash, so
        # a retry after any later failure converges.
        link = await ctx.net.add_tap(tap_spec(cmd), plan.change)
    else:
        if plan.owner:
            await ctx.net.set_tap_owner(tap_spec(cmd))
        if not plan.change.is_empty():
            link = await ctx.net.change_link(link.index, plan.change)
        elif plan.owner:
            link = require_link((await ctx.net.get_links((cmd.name,)))[0], cmd.name, "tap")
    changed = plan.create or plan.owner or not plan.change.is_empty()
    known = {bridge.index: bridge.name} if bridge is not None else None
    return {**await view_of(ctx.net, link, known), "created": plan.create, "changed": changed}


async def delete(cmd: TapDelete, ctx: Context) -> dict[str, Any]:
    link = await ctx.net.get_link(cmd.name)
    if link is None:
        return {"name": cmd.name, "deleted": False}
    require_kind(link, "tap")
    ctx.policy.require_owned(link, "delete")
    await ctx.net.delete_link(link.index)
    return {"name": cmd.name, "deleted": True}
