"""host.snapshot / host.health: what the daemon sees, and whether it can work."""

from __future__ import annotations

from typing import Any

from vnetd.contract.commands import HostHealth, HostSnapshot
from vnetd.handlers.context import Context
from vnetd.handlers.overlay_views import add_vxlan_views
from vnetd.handlers.views import views_of


async def snapshot(cmd: HostSnapshot, ctx: Context) -> dict[str, Any]:
    """Links (and what providers add: networks, the event stream position).

    When the event watcher provides the links, they come from its own socket,
    dumped at the stream position it reports, so the handler's dump is skipped.
    """
    result: dict[str, Any] = {"host_id": ctx.host_id}
    for part in ctx.snapshot_parts:
        result.update(await part())
    if "links" not in result:
        result["links"] = views_of(await ctx.net.list_links())
    await add_vxlan_views(ctx.net, result["links"])
    return result


async def health(cmd: HostHealth, ctx: Context) -> dict[str, Any]:
    features = await ctx.net.features()
    components = ctx.components()
    kernel_ok = bool(features.get("bridge")) and bool(features.get("tun_device"))
    degraded = not kernel_ok or any(v not in ("connected", "disabled") for v in components.values())
    return {
        "host_id": ctx.host_id,
        "version": ctx.version,
        "status": "degraded" if degraded else "healthy",
        "kernel": features,
        "components": components,
    }
