"""What cleanup asks libvirt: which interfaces it references, which networks expired.

`LibvirtReferences` implements cleanup's ReferenceSource: the bridge of every
libvirt network, and the target device and source bridge of every defined
domain (running or not, live and persistent definitions). `LibvirtNetworkTtl`
implements its NetworkSource: owned transient networks whose ownership marker
carries `expires` (unix seconds). Both go through the daemon's one libvirt
connection (the VirtBackend in ctx.virt), only through that Protocol; every
libvirt call runs in the backend's thread pool, never on the event loop. Every
definition is read with the one safe parser (vnetd.virt.xml.parse_safe).

When libvirt cannot answer, or gives a definition that does not parse (or that
the safe parser refuses), they raise Unavailable and cleanup keeps everything:
a reference it cannot read is not a reference it may ignore.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable

from vnetd.contract.errors import Unavailable
from vnetd.virt.backend import NetworkState, VirtBackend, VirtError
from vnetd.virt.domain import read_interfaces
from vnetd.virt.xml import LIBVIRT_XML_MAX_BYTES, MARKER, XmlError, parse_safe

GetBackend = Callable[[], VirtBackend | None]


def _root(xml: str, what: str) -> ET.Element:
    try:
        return parse_safe(xml, max_bytes=LIBVIRT_XML_MAX_BYTES)
    except XmlError as exc:
        raise Unavailable(f"libvirt: the definition of {what} is unreadable: {exc}") from None


def network_references(states: list[NetworkState]) -> dict[str, str]:
    refs: dict[str, str] = {}
    for state in states:
        bridge = _root(state.xml, f"network {state.name}").find("bridge")
        if bridge is not None and bridge.get("name"):
            refs[str(bridge.get("name"))] = f"network {state.name}"
    return refs


def domain_references(name: str, xml: str) -> dict[str, str]:
    """Interfaces one domain definition names: `<target dev>` and `<source bridge>`."""
    try:
        interfaces = read_interfaces(xml)
    except XmlError as exc:
        raise Unavailable(f"libvirt: the definition of domain {name} is unreadable: {exc}"
                          ) from None
    refs: dict[str, str] = {}
    for iface in interfaces:
        if iface.target:
            refs[iface.target] = f"domain {name}"
        if iface.bridge:
            refs[iface.bridge] = f"domain {name}"
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
            for domain in await backend.domain_definitions():
                for xml in domain.xmls:
                    refs.update(domain_references(domain.name, xml))
        except VirtError as exc:
            raise Unavailable(f"libvirt: {exc.message}") from exc
        return refs


def expires_of(state: NetworkState) -> float | None:
    """Unix time an owned transient network expires at, or None (no TTL, or not ours)."""
    if state.persistent:
        return None
    try:
        root = parse_safe(state.xml, max_bytes=LIBVIRT_XML_MAX_BYTES)
    except XmlError:
        return None  # unreadable: no TTL, so cleanup keeps the network
    marker = root.find(f"metadata/{MARKER}")
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
