"""host.snapshot / host.health: what the daemon sees, whether it can work, and if not, why."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from vnetd.contract.commands import HostHealth, HostSnapshot
from vnetd.handlers import ovs
from vnetd.handlers.context import Context
from vnetd.handlers.overlay_views import add_vxlan_views
from vnetd.handlers.views import views_of

FINE = ("connected", "disabled")


class ComponentStates(dict[str, str]):
    """Component -> state (what host.health lists), remembering since when each state
    holds and each component's last error, so that `degraded` comes with its reason.

    A plain dict to its writers (`states["libvirt"] = "degraded"`); `note_error` adds
    the why. Kept by the daemon; read through ctx.component_details.
    """

    def __init__(self, initial: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._clock = clock
        self.since: dict[str, float] = {}
        self.errors: dict[str, tuple[str, float]] = {}
        for key, value in (initial or {}).items():
            self[key] = value

    def __setitem__(self, key: str, value: str) -> None:
        if self.get(key) != value:
            self.since[key] = self._clock()
        super().__setitem__(key, value)

    def note_error(self, key: str, message: str) -> None:
        self.errors[key] = (message, self._clock())

    def details(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for key, state in self.items():
            error, at = self.errors.get(key, (None, None))
            out[key] = {"state": state, "since": _iso(self.since.get(key)),
                        "last_error": error, "last_error_at": _iso(at)}
        return out


def note_error(states: Mapping[str, str], key: str, message: str) -> None:
    """Record why `key` is not fine, when `states` keeps reasons (a plain dict does not)."""
    if isinstance(states, ComponentStates):
        states.note_error(key, message)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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
    result.update(await ovs.snapshot_part(ctx))
    return result


async def health(cmd: HostHealth, ctx: Context) -> dict[str, Any]:
    """Healthy: the result has no more keys. Degraded: `reasons` (one sentence per cause)
    and `details` (per component: state, since, last_error, last_error_at)."""
    features = await ctx.net.features()
    components = ctx.components()
    missing = [k for k in ("bridge", "tun_device") if not features.get(k)]
    bad = {k: v for k, v in components.items() if v not in FINE}
    result: dict[str, Any] = {
        "host_id": ctx.host_id,
        "version": ctx.version,
        "status": "degraded" if missing or bad else "healthy",
        "kernel": features,
        "components": components,
        "ovs": ovs.health_view(ctx),
    }
    if (node := ctx.broker_node()) is not None:
        result["broker_node"] = node
    if not (missing or bad):
        return result
    details = ctx.component_details()
    reasons = [f"kernel: no {k.replace('_', ' ')} support" for k in missing]
    for name, state in sorted(bad.items()):
        d = details.get(name) or {}
        since = f" since {d['since']}" if d.get("since") else ""
        why = f": {d['last_error']}" if d.get("last_error") else ""
        reasons.append(f"{name} {state}{since}{why}")
    result["reasons"] = reasons
    result["details"] = {k: v for k, v in details.items() if k in components}
    return result
