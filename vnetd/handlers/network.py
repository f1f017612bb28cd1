"""network.*: libvirt virtual networks (`virsh net-define`, `net-start`, ... `net-update`).

Every handler converges: defining the same network twice changes nothing, a
different definition under a taken name is `conflict` unless `replace`. vnetd
changes only networks that carry its ownership marker (`forbidden` otherwise,
unless `[libvirt] adopt_unowned`); reading (list, dumpxml) is always allowed.
Kinds this host cannot run are refused with `unsupported` before libvirt is asked
to start them, or when libvirt itself reports the missing feature.
"""

from __future__ import annotations

import functools
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, TypeVar

from vnetd.contract.errors import (
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unsupported,
    VnetdError,
)
from vnetd.contract.network import (
    NetworkAutostart,
    NetworkCreate,
    NetworkDefine,
    NetworkDestroy,
    NetworkDumpxml,
    NetworkList,
    NetworkStart,
    NetworkUndefine,
    NetworkUpdate,
)
from vnetd.handlers import ovs
from vnetd.handlers.context import Context
from vnetd.virt import xml
from vnetd.virt.backend import (
    NetworkState,
    Reason,
    UpdateAction,
    UpdateSection,
    VirtBackend,
    VirtError,
)

T = TypeVar("T")
_HOST_ONLY_KINDS = ("macvtap", "hostdev", "ovs")


def _virt(ctx: Context) -> VirtBackend:
    if ctx.virt is None:
        raise Unavailable("libvirt networks are disabled on this host ([libvirt] enabled = false)")
    return ctx.virt


async def _call(aw: Awaitable[T], name: str, kind: str | None = None) -> T:
    """Await a backend call, turning VirtError into the contract's errors."""
    try:
        return await aw
    except VirtError as exc:
        raise _error(exc, name, kind) from None


def _error(exc: VirtError, name: str, kind: str | None) -> VnetdError:
    d = {"name": name, "libvirt_code": exc.code}
    if exc.reason is Reason.UNAVAILABLE:
        return Unavailable(f"libvirtd is unreachable, try again later: {exc.message}", **d)
    if exc.reason is Reason.NOT_FOUND:
        return NotFound(f"network {name} does not exist", **d)
    if exc.reason is Reason.INVALID:
        return InvalidArgument(f"libvirt rejected network {name}: {exc.message}", **d)
    if exc.reason is Reason.UNSUPPORTED or kind in _HOST_ONLY_KINDS:
        # For device-backed kinds a failure is the host lacking the device/feature.
        return Unsupported(f"this host cannot run the {kind or ''} network {name}: "
                           f"{exc.message}".replace("  ", " "), **d)
    return Conflict(f"libvirt refused the change to network {name}: {exc.message}", **d)


def _parse(state: NetworkState) -> ET.Element:
    """The state's XML, parsed once (shared: read it, never change it). A job and the
    events of its changes look at the same definition several times (owner, kind,
    summary), and every network.list / host.snapshot row at the unchanged ones."""
    return _parse_xml(state.xml)


@functools.lru_cache(maxsize=256)
def _parse_xml(text: str) -> ET.Element:
    return xml.parse_safe(text, max_bytes=xml.LIBVIRT_XML_MAX_BYTES)


def view(state: NetworkState) -> dict[str, Any]:
    """A row of `virsh net-list --all`, as data."""
    return {"name": state.name, "uuid": state.uuid, "active": state.active,
            "persistent": state.persistent, "autostart": state.autostart,
            **xml.summary(_parse(state))}


def _require_owned(virt: VirtBackend, state: NetworkState, action: str) -> None:
    if xml.marker_of(_parse(state)) is None and not virt.adopt_unowned:
        raise Forbidden(f"network {state.name} was not defined by vnetd; vnetd will not "
                        f"{action} it (set [libvirt] adopt_unowned to allow)", name=state.name)


def _desired(cmd: NetworkDefine | NetworkCreate) -> ET.Element:
    if cmd.spec is not None:
        return xml.build(cmd.name, cmd.spec)
    if cmd.xml is None:  # the model requires exactly one of spec and xml
        raise InvalidArgument("one of spec or xml is required", name=cmd.name)
    try:
        return xml.parse_network(cmd.xml, cmd.name)
    except xml.XmlError as exc:
        raise InvalidArgument(f"xml: {exc}", name=cmd.name) from None


async def _check_runnable(root: ET.Element, ctx: Context) -> None:
    """Refuse, before any side effect, to start a network whose host devices are missing."""
    name = root.findtext("name") or ""
    kind = xml.kind_of(root)
    if kind == "bridge":
        bridge = xml.bridge_of(root) or ""
        link = await ctx.net.get_link(bridge)
        if link is None:
            raise NotFound(f"network {name} needs the host bridge {bridge}, which does not exist",
                           name=name, bridge=bridge)
        if link.kind != "bridge":
            raise Conflict(f"{bridge} is a {link.kind}, not a bridge", name=name, bridge=bridge)
    elif kind == "macvtap":
        fwd = root.find("forward")
        devs = [i.get("dev", "") for i in root.findall("forward/interface")]
        if fwd is not None and fwd.get("dev"):
            devs.append(fwd.get("dev", ""))
        for dev in devs:
            if await ctx.net.get_link(dev) is None:
                raise NotFound(f"network {name} needs device {dev}, which does not exist",
                               name=name, device=dev)
    elif kind == "ovs" and ctx.ovs is not None:  # OVSDB knows, whatever the datapath
        bridge = xml.bridge_of(root) or ""
        if (await ovs.state_of(ctx)).bridge(bridge) is None:
            raise NotFound(f"network {name} needs the Open vSwitch bridge {bridge}, which does "
                           "not exist", name=name, bridge=bridge)
    elif kind == "ovs":
        bridge = xml.bridge_of(root) or ""
        link = await ctx.net.get_link(bridge)
        if link is None or link.kind != "openvswitch":
            links = await ctx.net.list_links()
            if not any(lk.kind == "openvswitch" for lk in links):
                raise Unsupported(
                    f"network {name} needs the Open vSwitch bridge {bridge}, but Open vSwitch "
                    "is not running here (no openvswitch datapath, and [ovs] enabled = false)",
                    name=name, bridge=bridge)
            raise NotFound(f"network {name} needs the Open vSwitch bridge {bridge}, which does "
                           "not exist", name=name, bridge=bridge)


async def _state(virt: VirtBackend, name: str) -> NetworkState:
    state = await _call(virt.get_network(name), name)
    if state is None:
        raise NotFound(f"network {name} does not exist", name=name)
    return state


async def _define_new(virt: VirtBackend, cmd: NetworkDefine, desired: ET.Element,
                      ctx: Context) -> NetworkState | None:
    """Define a network that is most likely new without looking it up first: without a
    uuid in the XML libvirt refuses it when any network has that name, and nothing
    changes. None: refused (or not runnable, when asked to start): the caller looks."""
    if desired.find("uuid") is not None or virt.may_exist(cmd.name):
        return None
    if cmd.start:
        try:
            await _check_runnable(desired, ctx)
        except VnetdError:
            return None  # it may exist and run already: the careful path says
    try:
        text = xml.to_string(xml.with_marker(desired, ctx.version))
        return await virt.define(cmd.name, text)
    except VirtError:
        return None


async def define(cmd: NetworkDefine, ctx: Context) -> dict[str, Any]:
    virt = _virt(ctx)
    desired = _desired(cmd)
    kind = xml.kind_of(desired)
    new = await _define_new(virt, cmd, desired, ctx)
    if new is not None:
        return await _define_rest(cmd, ctx, virt, new, desired, kind, created=True,
                                  changed=True, restarted=False)
    digest = xml.digest(desired)
    existing = await _call(virt.get_network(cmd.name), cmd.name, kind)
    created = changed = restarted = False
    # The state is read once; what vnetd changes after that is applied to it locally or
    # comes back from the change (one libvirt round trip less per step on the hot path).
    state: NetworkState
    if existing is not None:
        state = existing
        marker = xml.marker_of(_parse(existing))
        same = marker is not None and marker.digest == digest
        if not same:
            if not cmd.replace:
                raise Conflict(f"network {cmd.name} already exists with a different definition; "
                               "pass replace: true to redefine it", name=cmd.name,
                               owned=marker is not None)
            _require_owned(virt, existing, "replace")
        if not same or not existing.persistent:
            if existing.active and not same:
                await _check_runnable(desired, ctx)
            xml.set_uuid(desired, existing.uuid)
            text = xml.to_string(xml.with_marker(desired, ctx.version))
            state = await _call(virt.define(cmd.name, text, existing), cmd.name, kind)
            changed = True
            if existing.active and not same:
                # The new definition takes effect only on a restart of the network.
                await _call(virt.destroy(cmd.name), cmd.name, kind)
                await _call(virt.start(cmd.name), cmd.name, kind)
                restarted = True
                state = await _state(virt, cmd.name)
    else:
        if cmd.start:
            await _check_runnable(desired, ctx)
        text = xml.to_string(xml.with_marker(desired, ctx.version))
        state = await _call(virt.define(cmd.name, text), cmd.name, kind)
        created = changed = True
    return await _define_rest(cmd, ctx, virt, state, desired, kind, created=created,
                              changed=changed, restarted=restarted)


async def _define_rest(cmd: NetworkDefine, ctx: Context, virt: VirtBackend, state: NetworkState,
                       desired: ET.Element, kind: str, *, created: bool, changed: bool,
                       restarted: bool) -> dict[str, Any]:
    """define's autostart and start steps, on the state defining left."""
    if cmd.autostart is not None and state.autostart != cmd.autostart:
        await _call(virt.set_autostart(cmd.name, cmd.autostart), cmd.name, kind)
        state = replace(state, autostart=cmd.autostart)
        changed = True
    if cmd.start and not state.active:
        if not created:
            await _check_runnable(desired, ctx)
        await _call(virt.start(cmd.name, state), cmd.name, kind)
        state = replace(state, active=True)
        changed = True
    return {**view(state), "created": created, "changed": changed, "restarted": restarted}


async def create(cmd: NetworkCreate, ctx: Context) -> dict[str, Any]:
    virt = _virt(ctx)
    desired = _desired(cmd)
    kind = xml.kind_of(desired)
    existing = await _call(virt.get_network(cmd.name), cmd.name, kind)
    if existing is not None:
        marker = xml.marker_of(_parse(existing))
        if marker is not None and marker.digest == xml.digest(desired) and existing.active:
            return {**view(existing), "created": False, "changed": False}
        raise Conflict(f"network {cmd.name} already exists"
                       + ("" if existing.active else " (inactive: use network.start)"),
                       name=cmd.name, active=existing.active, persistent=existing.persistent)
    await _check_runnable(desired, ctx)
    expires = time.time() + cmd.ttl_seconds if cmd.ttl_seconds else None
    marked = xml.with_marker(desired, ctx.version, expires)
    state = await _call(virt.create(cmd.name, xml.to_string(marked)), cmd.name, kind)
    return {**view(state), "created": True, "changed": True}


async def start(cmd: NetworkStart, ctx: Context) -> dict[str, Any]:
    virt = _virt(ctx)
    state = await _state(virt, cmd.name)
    changed = False
    if not state.active:
        _require_owned(virt, state, "start")
        root = _parse(state)
        await _check_runnable(root, ctx)
        await _call(virt.start(cmd.name, state), cmd.name, xml.kind_of(root))
        state = replace(state, active=True)
        changed = True
    return {**view(state), "changed": changed}


async def destroy(cmd: NetworkDestroy, ctx: Context) -> dict[str, Any]:
    virt = _virt(ctx)
    state = await _call(virt.get_network(cmd.name), cmd.name)
    if state is None or not state.active:
        return {"name": cmd.name, "destroyed": False, "exists": state is not None}
    _require_owned(virt, state, "destroy")
    await _call(virt.destroy(cmd.name, state), cmd.name)
    return {"name": cmd.name, "destroyed": True, "exists": state.persistent}


async def undefine(cmd: NetworkUndefine, ctx: Context) -> dict[str, Any]:
    virt = _virt(ctx)
    state = await _call(virt.get_network(cmd.name), cmd.name)
    if state is None or not state.persistent:
        return {"name": cmd.name, "undefined": False, "active": bool(state and state.active)}
    _require_owned(virt, state, "undefine")
    await _call(virt.undefine(cmd.name, state), cmd.name)
    # Like `virsh net-undefine`: an active network keeps running, now transient.
    return {"name": cmd.name, "undefined": True, "active": state.active}


async def autostart(cmd: NetworkAutostart, ctx: Context) -> dict[str, Any]:
    virt = _virt(ctx)
    state = await _state(virt, cmd.name)
    changed = False
    if state.autostart != cmd.enabled:
        _require_owned(virt, state, "change autostart of")
        if not state.persistent:
            raise Conflict(f"network {cmd.name} is transient: it cannot autostart",
                           name=cmd.name)
        await _call(virt.set_autostart(cmd.name, cmd.enabled), cmd.name)
        state = replace(state, autostart=cmd.enabled)
        changed = True
    return {**view(state), "changed": changed}


async def dumpxml(cmd: NetworkDumpxml, ctx: Context) -> dict[str, Any]:
    virt = _virt(ctx)
    text = await _call(virt.network_xml(cmd.name, cmd.inactive), cmd.name)
    return {"name": cmd.name, "inactive": cmd.inactive, "xml": text}


async def list_(cmd: NetworkList, ctx: Context) -> dict[str, Any]:
    virt = _virt(ctx)
    states = await _call(virt.list_networks(), "*")
    return {"networks": sorted((view(s) for s in states), key=lambda v: str(v["name"]))}


# ------------------------------------------------------------------ net-update
def _ip_index(root: ET.Element, family: str) -> int | None:
    for i, ip in enumerate(root.findall("ip")):
        if (ip.get("family") or "ipv4") == family:
            return i
    return None


def _host_key(el: ET.Element) -> tuple[str | None, str | None]:
    return (el.get("mac"), el.get("name"))


def _current(root: ET.Element, index: int, cmd: NetworkUpdate) -> tuple[bool, ET.Element | None]:
    """(already converged?, the existing entry this update targets)."""
    ip = root.findall("ip")[index]
    if cmd.host is not None:
        want = xml.host_element(cmd.host)
        match = None
        for h in ip.findall("dhcp/host"):
            if (h.get("mac") is not None and h.get("mac") == cmd.host.mac) or (
                    h.get("mac") is None and h.get("name") is not None
                    and h.get("name") == cmd.host.name):
                match = h
                break
        same = match is not None and dict(match.attrib) == dict(want.attrib)
        if cmd.action == "delete":
            return match is None, match
        return same, match
    if cmd.range is None:  # the model requires exactly one of host and range
        raise InvalidArgument("one of host or range is required", field="range")
    r = next((x for x in ip.findall("dhcp/range")
              if x.get("start") == cmd.range.start and x.get("end") == cmd.range.end), None)
    return (r is None) if cmd.action == "delete" else (r is not None), r


async def update(cmd: NetworkUpdate, ctx: Context) -> dict[str, Any]:
    virt = _virt(ctx)
    state = await _state(virt, cmd.name)
    _require_owned(virt, state, "update")
    live = cmd.live and state.active
    config = cmd.config and state.persistent
    if not (live or config):
        raise Conflict(f"network {cmd.name} is "
                       + ("inactive: there is no live definition to update"
                          if cmd.live else "transient: there is no config to update"),
                       name=cmd.name)
    targets: list[tuple[str, bool]] = []
    if live:
        targets.append(("live", False))
    if config:
        targets.append(("config", True))
    section = UpdateSection.DHCP_HOST if cmd.host is not None else UpdateSection.DHCP_RANGE
    new_el = xml.host_element(cmd.host) if cmd.host else xml.range_element(cmd.range)  # type: ignore[arg-type]
    applied: list[str] = []
    for where, inactive in targets:
        root = xml.parse_safe(await _call(virt.network_xml(cmd.name, inactive), cmd.name),
                              max_bytes=16 * 1024 * 1024)
        index = _ip_index(root, cmd.family)
        if index is None:
            raise Conflict(f"network {cmd.name} has no {cmd.family} address to hold DHCP "
                           "entries", name=cmd.name)
        done, match = _current(root, index, cmd)
        if done:
            continue
        if cmd.host is not None and cmd.action == "add" and match is not None:
            raise Conflict(f"network {cmd.name} already has a DHCP host "
                           f"{cmd.host.mac or cmd.host.name} with other values; use modify",
                           name=cmd.name, existing=dict(match.attrib))
        if cmd.action == "modify" and match is None:
            raise NotFound(f"network {cmd.name} has no DHCP host "
                           f"{cmd.host.mac or cmd.host.name if cmd.host else ''} to modify",
                           name=cmd.name)
        el = match if cmd.action == "delete" and match is not None else new_el
        await _call(virt.update(cmd.name, UpdateAction(cmd.action), section, index,
                                xml.to_string(el), live=not inactive, config=inactive),
                    cmd.name)
        applied.append(where)
    return {"name": cmd.name, "action": cmd.action, "changed": bool(applied),
            "applied": applied}
