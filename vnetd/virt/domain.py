"""A domain's interfaces, read from the XML libvirtd gives for it.

Only what the domain events need: each `<interface>`'s type, MAC, libvirt alias, the
host device it uses (`<target dev>`: a TAP or a macvtap) and what that device is
plugged into (`<source network|bridge|dev>`). The XML comes from libvirtd itself, not
from a client, and is still read with the one safe parser (vnetd.virt.xml.parse_safe).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from vnetd.virt.backend import DomainInterface
from vnetd.virt.xml import LIBVIRT_XML_MAX_BYTES, XmlError, parse_safe


def _attr(el: ET.Element | None, name: str) -> str | None:
    if el is None:
        return None
    value = el.get(name)
    return value or None


def interfaces_of(xml: str) -> tuple[DomainInterface, ...]:
    """The interfaces of a definition; none when it does not parse (or is refused)."""
    try:
        return read_interfaces(xml)
    except XmlError:
        return ()


def read_interfaces(xml: str) -> tuple[DomainInterface, ...]:
    """The interfaces of a definition; raises XmlError when it does not parse."""
    root = parse_safe(xml, max_bytes=LIBVIRT_XML_MAX_BYTES)
    out = []
    for iface in root.iterfind("devices/interface"):
        source = iface.find("source")
        out.append(DomainInterface(
            alias=_attr(iface.find("alias"), "name"),
            mac=_attr(iface.find("mac"), "address"),
            type=iface.get("type") or "",
            target=_attr(iface.find("target"), "dev"),
            network=_attr(source, "network"),
            bridge=_attr(source, "bridge"),
            source_dev=_attr(source, "dev"),
        ))
    return tuple(out)
