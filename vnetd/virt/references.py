"""What cleanup asks libvirt: which interfaces it references, which networks expired.

`LibvirtReferences` implements cleanup's ReferenceSource: the bridge of every
libvirt network, and the target device and source bridge of every defined
domain (running or not, live and persistent definitions). `LibvirtNetworkTtl`
implements its NetworkSource: owned transient networks whose ownership marker
carries `expires` (unix seconds). Both go through the daemon's one libvirt
connection (the LibvirtBackend the libvirt watcher keeps in ctx.virt); every
libvirt call runs in its thread pool, never on the event loop.

When libvirt cannot answer they raise Unavailable, and cleanup keeps everything.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import libvirt

from vnetd.contract.errors import Unavailable
from vnetd.virt.backend import NetworkState, VirtBackend, VirtError
from vnetd.virt.libvirt_backend import LibvirtBackend
from vnetd.virt.xml import MARKER

GetBackend = Callable[[], VirtBackend | None]


def _root(xml: str) -> ET.Element | None:
    try:
        return ET.fromstring(xml)  # noqa: S314 - written by libvirtd itself, not a client
    except ET.ParseError:
        return None


def network_references(states: list[NetworkState]) -> dict[str, str]:
    refs: dict[str, str] = {}
    for state in states:
        root = _root(state.xml)
        bridge = root.find("bridge") if root is not None else None
        if bridge is not None and bridge.get("name"):
            refs[str(bridge.get("name"))] = f"network {state.name}"
    return refs


def domain_references(name: str, xml: str) -> dict[str, str]:
    """Interfaces one domain definition names: `<target dev>` and `<source bridge>`."""
    refs: dict[str, str] = {}
    root = _root(xml)
    if root is None:
        return refs
    for iface in root.iterfind("devices/interface"):
        target = iface.find("target")
        if target is not None and target.get("dev"):
            refs[str(target.get("dev"))] = f"domain {name}"
        source = iface.find("source")
        if source is not None and source.get("bridge"):
            refs[str(source.get("bridge"))] = f"domain {name}"
    return refs


def _domains(conn: Any) -> dict[str, str]:
    refs: dict[str, str] = {}
    for dom in conn.listAllDomains(0):
        try:
            name = dom.name()
            refs.update(domain_references(name, dom.XMLDesc(0)))
            if dom.isActive() and dom.isPersistent():  # the next boot's definition too
                refs.update(domain_references(name, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
        except libvirt.libvirtError as exc:  # undefined while we listed it
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    return refs


class LibvirtReferences:
    """ReferenceSource over the daemon's libvirt connection."""

    def __init__(self, backend: GetBackend) -> None:
        self._backend = backend

    async def referenced_interfaces(self) -> dict[str, str]:
        backend = self._backend()
        if backend is None or not backend.connected:
            raise Unavailable("not connected to libvirtd")
        try:
            refs = network_references(await backend.list_networks())
            if isinstance(backend, LibvirtBackend):
                refs.update(await backend._call(_domains))
        except VirtError as exc:
            raise Unavailable(f"libvirt: {exc.message}") from exc
        return refs


def expires_of(state: NetworkState) -> float | None:
    """Unix time an owned transient network expires at, or None (no TTL, or not ours)."""
    if state.persistent:
        return None
    root = _root(state.xml)
    marker = root.find(f"metadata/{MARKER}") if root is not None else None
    if marker is None:
        return None
    try:
        return float(marker.get("expires", ""))
    except ValueError:
        return None


class LibvirtNetworkTtl:
    """NetworkSource: owned transient networks with an `expires` in their marker."""

    def __init__(self, backend: GetBackend, clock: Callable[[], float] = time.time) -> None:
        self._backend = backend
        self.clock = clock

    def _require(self) -> VirtBackend:
        backend = self._backend()
        if backend is None or not backend.connected:
            raise Unavailable("not connected to libvirtd")
        return backend

    async def expiring_networks(self) -> list[tuple[str, float]]:
        backend = self._require()
        try:
            states = await backend.list_networks()
        except VirtError as exc:
            raise Unavailable(f"libvirt: {exc.message}") from exc
        now = self.clock()
        out = []
        for state in states:
            expires = expires_of(state)
            if expires is not None and state.active:
                out.append((state.name, expires - now))
        return out

    async def remove_expired(self, name: str) -> bool:
        backend = self._require()
        try:
            state = await backend.get_network(name)
            expires = expires_of(state) if state is not None else None
            if state is None or not state.active or expires is None or expires > self.clock():
                return False
            await backend.destroy(name)
        except VirtError as exc:
            raise Unavailable(f"libvirt: {exc.message}") from exc
        return True
