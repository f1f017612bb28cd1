"""port.attach / port.detach: `brctl addif` / `brctl delif`."""

from __future__ import annotations

from typing import Any

from vnetd.contract.commands import PortAttach, PortDetach
from vnetd.contract.errors import Conflict, Forbidden
from vnetd.handlers.context import Context
from vnetd.handlers.policy import require_kind, require_link
from vnetd.handlers.views import link_view
from vnetd.net.model import Link, LinkChange


async def owned_bridge(ctx: Context, name: str) -> Link:
    """The existing, vnetd-owned Linux bridge `name` that a port may join (else the error)."""
    return require_owned_bridge(ctx, await ctx.net.get_link(name), name)


def require_owned_bridge(ctx: Context, link: Link | None, name: str) -> Link:
    """`owned_bridge`'s checks on a link already read (None: there is none)."""
    bridge = require_link(link, name, "bridge")
    require_kind(bridge, "bridge")
    ctx.policy.require_owned(bridge, "attach ports to")
    return bridge


async def attach(cmd: PortAttach, ctx: Context) -> dict[str, Any]:
    bridge = await owned_bridge(ctx, cmd.bridge)
    port = require_link(await ctx.net.get_link(cmd.name), cmd.name)
    ctx.policy.require_may_attach(port)
    if port.kind == "bridge":
        raise Conflict(f"{cmd.name} is a bridge; a bridge cannot be a port of another bridge",
                       name=cmd.name)
    if port.master == bridge.index:
        return {**link_view(port, bridge.name), "changed": False}
    if port.master is not None:
        current = await ctx.net.get_link_by_index(port.master)
        raise Conflict(
            f"{cmd.name} is already a port of {current.name if current else port.master}; "
            "detach it first", name=cmd.name, master=current.name if current else None)

    await ctx.net.set_link(port.index, LinkChange(master=bridge.index))
    port = require_link(await ctx.net.get_link(cmd.name), cmd.name)
    return {**link_view(port, bridge.name), "changed": True}


async def detach(cmd: PortDetach, ctx: Context) -> dict[str, Any]:
    port = await ctx.net.get_link(cmd.name)
    if port is None or port.master is None:
        return {"name": cmd.name, "detached": False}
    ctx.policy.check_protected(cmd.name, "detach")
    bridge = await ctx.net.get_link_by_index(port.master)
    if bridge is not None and not bridge.owned:
        raise Forbidden(f"{cmd.name} is a port of {bridge.name}, which vnetd did not create",
                        name=cmd.name, master=bridge.name)

    await ctx.net.set_link(port.index, LinkChange(master=0))
    return {"name": cmd.name, "detached": True, "bridge": bridge.name if bridge else None}
