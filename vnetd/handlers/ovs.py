"""ovs.bridge.* / ovs.port.*: Open vSwitch bridges and ports, through OVSDB.

Each handler reads one consistent picture of the database, decides, and makes
at most one transaction; deletes name the row they checked and the adapter
verifies in the same transaction that it still carries vnetd's marker, so a
row someone else took over in between is never deleted.

Ownership: vnetd changes or deletes only bridges and ports it created
(`external_ids:vnetd-owner=v1`). It may add its ports to a bridge it did not
create only when `[ovs] foreign_bridges` names it; the devices it adds must be
its own or listed in `policy.attachable`, as for Linux bridges.

Availability: with `[ovs] enabled = false` every op answers `unsupported`;
with OVS enabled but ovsdb-server unreachable (or ovs-vswitchd not applying
changes), `unavailable`, which is temporary: the job is to be retried.
"""

from __future__ import annotations

from collections.abc import Awaitable
from fnmatch import fnmatchcase
from typing import Any

from vnetd.contract.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Unavailable,
    Unsupported,
    VnetdError,
)
from vnetd.contract.ovs import (
    OvsBridgeDelete,
    OvsBridgeEnsure,
    OvsBridgeList,
    OvsPortAttach,
    OvsPortDetach,
)
from vnetd.handlers.context import Context
from vnetd.ovs.backend import (
    OWNER_KEY,
    OWNER_VALUE,
    OvsBackend,
    OvsBridge,
    OvsError,
    OvsPort,
    OvsState,
    Reason,
    Vlan,
)

OWNER_IDS = {OWNER_KEY: OWNER_VALUE}
DISABLED = ("Open vSwitch is not managed by this daemon ([ovs] enabled = false); "
            "install openvswitch-switch and set [ovs] enabled = true")


def backend_of(ctx: Context) -> OvsBackend:
    if ctx.ovs is None:
        raise Unsupported(DISABLED, feature="ovs")
    return ctx.ovs


def translate(exc: OvsError, **details: Any) -> VnetdError:
    if exc.reason is Reason.NOT_FOUND:
        return NotFound(exc.message, **details)
    if exc.reason is Reason.UNAVAILABLE:
        return Unavailable(exc.message, dependency="ovsdb", **details)
    if exc.reason is Reason.CHANGED:
        return Conflict(f"changed by someone else while vnetd worked on it: {exc.message}",
                        **details)
    return Conflict(exc.message, **details)  # the server refused it (a constraint)


async def state_of(ctx: Context) -> OvsState:
    try:
        return await backend_of(ctx).snapshot()
    except OvsError as exc:
        raise translate(exc) from exc


# ---------------------------------------------------------------- views
def port_view(port: OvsPort) -> dict[str, Any]:
    iface = port.interfaces[0] if port.interfaces else None
    return {
        "name": port.name,
        "bridge": port.bridge,
        "owned": port.owned,
        "tag": port.vlan.tag,
        "trunks": list(port.vlan.trunks),
        "vlan_mode": port.vlan.mode,
        "type": iface.type if iface else None,
        "ofport": iface.ofport if iface else None,
        "link_state": iface.link_state if iface else None,
        "mac": iface.mac_in_use if iface else None,
        "error": iface.error if iface else None,
    }


def bridge_view(bridge: OvsBridge) -> dict[str, Any]:
    """An OVS bridge as `bridge.list` shows bridges (kind "ovs"), with its ports' VLANs."""
    guests = bridge.guest_ports()
    return {
        "name": bridge.name,
        "kind": "ovs",
        "owned": bridge.owned,
        "datapath_type": bridge.datapath_type or "system",
        "ports": [p.name for p in guests],
        "ovs_ports": [port_view(p) for p in guests],
    }


def state_view(state: OvsState) -> dict[str, Any]:
    return {"bridges": [bridge_view(b) for b in state.bridges],
            "ovs_version": state.ovs_version, "datapath_types": list(state.datapath_types)}


def health_view(ctx: Context) -> dict[str, Any]:
    """What host.health says of OVS: connected / degraded (with why) / disabled."""
    if ctx.ovs is None:
        return {"state": "disabled", "reason": "[ovs] enabled = false"}
    view: dict[str, Any] = {"state": ctx.ovs.state, "db": ctx.ovs.remote,
                            "datapath_type": ctx.ovs_options.datapath_type}
    if ctx.ovs.state != "connected":
        view["reason"] = ctx.ovs.last_error
    return view


async def snapshot_part(ctx: Context) -> dict[str, Any]:
    """The `ovs` part of host.snapshot (None with the reason when it cannot be read)."""
    if ctx.ovs is None:
        return {"ovs": None, "ovs_error": DISABLED}
    try:
        return {"ovs": state_view(await ctx.ovs.snapshot())}
    except OvsError as exc:
        return {"ovs": None, "ovs_error": exc.message}


async def bridge_entries(ctx: Context) -> list[dict[str, Any]]:
    """OVS bridges for `bridge.list`; none when OVS is disabled or unreachable."""
    if ctx.ovs is None:
        return []
    try:
        state = await ctx.ovs.snapshot()
    except OvsError:
        return []
    return [bridge_view(b) for b in state.bridges]


# ---------------------------------------------------------------- bridges
async def ensure(cmd: OvsBridgeEnsure, ctx: Context) -> dict[str, Any]:
    ctx.policy.check_protected(cmd.name, "create or change")
    backend = backend_of(ctx)
    state = await state_of(ctx)
    want = ctx.ovs_options.datapath_type
    bridge = state.bridge(cmd.name)
    created = False
    if bridge is None:
        port = state.port(cmd.name)
        if port is not None:
            raise Conflict(f"{cmd.name} is a port of OVS bridge {port.bridge}", name=cmd.name)
        link = await ctx.net.get_link(cmd.name)
        if link is not None:
            raise Conflict(f"{cmd.name} exists as a {link.kind} device, not an OVS bridge",
                           name=cmd.name, kind=link.kind)
        try:
            bridge = await backend.add_bridge(cmd.name, want, OWNER_IDS)
        except OvsError as exc:
            raise translate(exc, name=cmd.name) from exc
        created = True
    else:
        _require_owned_bridge(bridge, "change")
        have = bridge.datapath_type or "system"
        if have != want:
            raise Conflict(f"OVS bridge {cmd.name} has datapath_type {have}, this host's "
                           f"[ovs] datapath_type is {want}", name=cmd.name, datapath_type=have)
    return {**bridge_view(bridge), "created": created, "changed": created}


async def _removed(deletion: Awaitable[None], name: str) -> bool:
    """Await an OVSDB delete of vnetd's row; False if it was gone already (a racing
    delete won: the caller's answer is then "nothing to do"), other errors translated."""
    try:
        await deletion
    except OvsError as exc:
        if exc.reason is Reason.NOT_FOUND:
            return False
        raise translate(exc, name=name) from exc
    return True


async def delete(cmd: OvsBridgeDelete, ctx: Context) -> dict[str, Any]:
    backend = backend_of(ctx)
    bridge = (await state_of(ctx)).bridge(cmd.name)
    if bridge is None:
        return {"name": cmd.name, "deleted": False}
    _require_owned_bridge(bridge, "delete")
    ctx.policy.check_protected(cmd.name, "delete")
    if not await _removed(backend.delete_bridge(bridge.uuid, OWNER_IDS), cmd.name):
        return {"name": cmd.name, "deleted": False}
    return {"name": cmd.name, "deleted": True,
            "detached_ports": [p.name for p in bridge.guest_ports()]}


async def list_(cmd: OvsBridgeList, ctx: Context) -> dict[str, Any]:
    return state_view(await state_of(ctx))


def _require_owned_bridge(bridge: OvsBridge, action: str) -> None:
    if not bridge.owned:
        raise Forbidden(f"OVS bridge {bridge.name} was not created by vnetd; vnetd will not "
                        f"{action} it", name=bridge.name, external_ids=dict(bridge.external_ids))


# ---------------------------------------------------------------- ports
def _vlan(cmd: OvsPortAttach) -> Vlan:
    return Vlan(tag=cmd.tag, trunks=tuple(sorted(cmd.trunks)), mode=cmd.vlan_mode)


async def attach(cmd: OvsPortAttach, ctx: Context) -> dict[str, Any]:
    ctx.policy.check_protected(cmd.name, "attach")
    backend = backend_of(ctx)
    state = await state_of(ctx)
    bridge = state.bridge(cmd.bridge)
    if bridge is None:
        raise NotFound(f"OVS bridge {cmd.bridge} does not exist", name=cmd.bridge)
    if not bridge.owned and not any(fnmatchcase(bridge.name, p)
                                    for p in ctx.ovs_options.foreign_bridges):
        raise Forbidden(f"OVS bridge {bridge.name} was not created by vnetd and is not listed "
                        "in [ovs] foreign_bridges", name=bridge.name)
    link = await ctx.net.get_link(cmd.name)
    if link is None:
        raise NotFound(f"device {cmd.name} does not exist", name=cmd.name)
    ctx.policy.require_may_attach(link)
    vlan = _vlan(cmd)
    port = state.port(cmd.name)
    created = changed = False
    try:
        if port is None:
            if state.bridge(cmd.name) is not None:
                raise Conflict(f"{cmd.name} is an OVS bridge", name=cmd.name)
            if link.master is not None:
                raise Conflict(f"{cmd.name} is a port of another bridge (index {link.master}); "
                               "detach it first", name=cmd.name)
            port = await backend.add_port(bridge.uuid, cmd.name, vlan, OWNER_IDS)
            created = changed = True
        else:
            if not port.owned:
                raise Forbidden(f"OVS port {cmd.name} was not added by vnetd; vnetd will not "
                                "change it", name=cmd.name)
            if port.bridge != cmd.bridge:
                raise Conflict(f"{cmd.name} is a port of OVS bridge {port.bridge}; detach it "
                               "first", name=cmd.name, bridge=port.bridge)
            if port.vlan != vlan:
                port = await backend.set_port_vlan(port.uuid, vlan)
                changed = True
    except OvsError as exc:
        raise translate(exc, name=cmd.name) from exc
    return {**port_view(port), "created": created, "changed": changed}


async def detach(cmd: OvsPortDetach, ctx: Context) -> dict[str, Any]:
    backend = backend_of(ctx)
    state = await state_of(ctx)
    port = state.port(cmd.name)
    if port is None:
        return {"name": cmd.name, "detached": False}
    if port.name == port.bridge:
        raise Conflict(f"{cmd.name} is the internal port of OVS bridge {port.bridge}: delete "
                       "the bridge instead", name=cmd.name)
    if not port.owned:
        raise Forbidden(f"OVS port {cmd.name} was not added by vnetd; vnetd will not detach it",
                        name=cmd.name, bridge=port.bridge)
    ctx.policy.check_protected(cmd.name, "detach")
    if not await _removed(backend.delete_port(port.uuid, OWNER_IDS), cmd.name):
        return {"name": cmd.name, "detached": False}
    return {"name": cmd.name, "detached": True, "bridge": port.bridge}
