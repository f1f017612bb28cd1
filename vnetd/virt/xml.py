"""libvirt network XML: built from a validated spec, or parsed safely from raw text.

Everything is built with ElementTree, never by string formatting, so no field can
inject markup. `parse_safe` is vnetd's one XML parser, for a client's raw XML and
for what libvirtd returns alike: size-bounded, and a document with a DTD (so any
entity, internal or external: the libvirt XXE class of bugs) is refused. A
client's network must also carry the name the job gives.
Every network vnetd defines carries an ownership marker in `<metadata>`: a
`vnetd:network` element whose `digest` identifies the definition, so defining the
same network twice is recognised as no change.

Element order follows libvirt's own formatter (virNetworkDefFormatBuf), so the
XML vnetd sends is what `virsh net-dumpxml` shows back (plus uuid and mac).
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from copy import deepcopy
from dataclasses import dataclass
from typing import NoReturn
from xml.parsers import expat

from vnetd.contract.network import (
    MAX_XML_BYTES,
    BridgeSpec,
    Dhcp,
    DhcpHost,
    DhcpRange,
    HostdevSpec,
    Ipv4,
    Ipv6,
    IsolatedSpec,
    MacvtapSpec,
    NatSpec,
    NetworkSpec,
    OpenSpec,
    OvsSpec,
    PortgroupVlan,
    RouteSpec,
)

NS = "https://vnetd.dev/xmlns/network/1"
MARKER = f"{{{NS}}}network"
ET.register_namespace("vnetd", NS)

LIBVIRT_XML_MAX_BYTES = 16 * 1024 * 1024
"""Bound on a definition libvirtd gives (a domain with many devices is large)."""


class XmlError(ValueError):
    """Raw XML that vnetd refuses (unsafe, malformed, or not the named network)."""


@dataclass(frozen=True)
class Marker:
    digest: str
    version: str


# ------------------------------------------------------------------ building
def _sub(parent: ET.Element, tag: str, **attrs: str | None) -> ET.Element:
    return ET.SubElement(parent, tag, {k: v for k, v in attrs.items() if v is not None})


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _dhcp(parent: ET.Element, dhcp: Dhcp) -> None:
    el = _sub(parent, "dhcp")
    for r in dhcp.ranges:
        range_element(r, el)
    for h in dhcp.hosts:
        host_element(h, el)


def range_element(r: DhcpRange, parent: ET.Element | None = None) -> ET.Element:
    attrs = {"start": r.start, "end": r.end}
    return ET.Element("range", attrs) if parent is None else ET.SubElement(parent, "range", attrs)


def host_element(h: DhcpHost, parent: ET.Element | None = None) -> ET.Element:
    attrs = {k: v for k, v in (("mac", h.mac), ("name", h.name), ("ip", h.ip)) if v is not None}
    return ET.Element("host", attrs) if parent is None else ET.SubElement(parent, "host", attrs)


def _ip(root: ET.Element, ip: Ipv4 | Ipv6, family: str | None) -> None:
    el = _sub(root, "ip", family=family, address=ip.address, prefix=str(ip.prefix))
    if ip.dhcp is not None and (ip.dhcp.ranges or ip.dhcp.hosts):
        _dhcp(el, ip.dhcp)


def _vlan(parent: ET.Element, vlan: PortgroupVlan) -> None:
    el = _sub(parent, "vlan", trunk="yes" if vlan.trunk else None)
    for tag in vlan.tags:
        _sub(el, "tag", id=str(tag))


def _routed(root: ET.Element, spec: IsolatedSpec | NatSpec | RouteSpec | OpenSpec) -> None:
    if isinstance(spec, NatSpec):
        fwd = _sub(root, "forward", mode="nat", dev=spec.dev)
        if spec.ports is not None:
            nat = _sub(fwd, "nat")
            _sub(nat, "port", start=str(spec.ports.start), end=str(spec.ports.end))
    elif isinstance(spec, RouteSpec):
        _sub(root, "forward", mode="route", dev=spec.dev)
    elif isinstance(spec, OpenSpec):
        _sub(root, "forward", mode="open")
    b = spec.bridge
    _sub(root, "bridge", name=b.name, stp="on" if b.stp else "off", delay=str(b.delay))
    if spec.mtu is not None:
        _sub(root, "mtu", size=str(spec.mtu))
    if b.mac is not None:
        _sub(root, "mac", address=b.mac)
    if spec.domain is not None:
        _sub(root, "domain", name=spec.domain)
    if spec.ipv4 is not None:
        _ip(root, spec.ipv4, None)
    if spec.ipv6 is not None:
        _ip(root, spec.ipv6, "ipv6")


def _pci_address(parent: ET.Element, pci: str) -> None:
    domain, bus, rest = pci.split(":")
    slot, function = rest.split(".")
    _sub(parent, "address", type="pci", domain=f"0x{domain}", bus=f"0x{bus}",
         slot=f"0x{slot}", function=f"0x{function}")


def build(name: str, spec: NetworkSpec, uuid: str | None = None) -> ET.Element:
    """The <network> element for `spec` (without the ownership marker)."""
    root = ET.Element("network")
    _sub(root, "name").text = name
    if uuid is not None:
        _sub(root, "uuid").text = uuid
    if isinstance(spec, IsolatedSpec | NatSpec | RouteSpec | OpenSpec):
        _routed(root, spec)
    elif isinstance(spec, BridgeSpec):
        _sub(root, "forward", mode="bridge")
        _sub(root, "bridge", name=spec.bridge)
    elif isinstance(spec, MacvtapSpec):
        # libvirt names the first device in `dev` too; so does vnetd, to read back equal.
        fwd = _sub(root, "forward", dev=spec.devices[0], mode=spec.mode)
        for dev in spec.devices:
            _sub(fwd, "interface", dev=dev)
    elif isinstance(spec, HostdevSpec):
        fwd = _sub(root, "forward", mode="hostdev", managed=_yes(spec.managed))
        if spec.pf is not None:
            _sub(fwd, "pf", dev=spec.pf)
        for vf in spec.vfs:
            _pci_address(fwd, vf)
    elif isinstance(spec, OvsSpec):
        _sub(root, "forward", mode="bridge")
        _sub(root, "bridge", name=spec.bridge)
        if spec.vlan is not None:
            _vlan(root, spec.vlan)
        _sub(root, "virtualport", type="openvswitch")
        for pg in spec.portgroups:
            el = _sub(root, "portgroup", name=pg.name, default="yes" if pg.default else None)
            if pg.vlan is not None:
                _vlan(el, pg.vlan)
    else:  # pragma: no cover - the union is exhaustive
        raise TypeError(f"unknown spec {type(spec).__name__}")
    return root


# ------------------------------------------------------------------ raw XML
def _refuse_dtd(*_: object) -> NoReturn:
    raise XmlError("XML with a DOCTYPE or ENTITY declaration is refused")


def _check_no_dtd(raw: bytes) -> None:
    """Refuse a document type declaration as expat itself reads the bytes.

    Not a search of the text: expat picks the encoding from the document (a
    UTF-16 document hides `<!DOCTYPE` from any byte pattern), and this parser
    reads it exactly as the tree parser after it will.
    """
    check = expat.ParserCreate()
    check.StartDoctypeDeclHandler = _refuse_dtd
    check.EntityDeclHandler = _refuse_dtd
    check.UnparsedEntityDeclHandler = _refuse_dtd
    check.ExternalEntityRefHandler = _refuse_dtd
    check.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        check.Parse(raw, True)
    except expat.ExpatError as exc:
        raise XmlError(f"malformed XML: {expat.ErrorString(exc.code)} "
                       f"(line {exc.lineno}, column {exc.offset})") from None


def parse_safe(text: str, *, max_bytes: int = MAX_XML_BYTES) -> ET.Element:
    """Parse XML vnetd did not build: bounded, no DTD, no entities; raises XmlError."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) > max_bytes:
        raise XmlError(f"XML is larger than {max_bytes} bytes")
    _check_no_dtd(raw)
    # Safe: a document with a DTD (and so with any entity) was refused above.
    parser = ET.XMLParser()  # noqa: S314
    try:
        parser.feed(raw)
        return parser.close()
    except ET.ParseError as exc:
        raise XmlError(f"malformed XML: {exc}") from exc


def parse_network(text: str, name: str) -> ET.Element:
    """A client's raw <network> XML, checked: safe, root <network>, the expected name."""
    root = parse_safe(text)
    if root.tag != "network":
        raise XmlError(f"root element must be <network>, not <{root.tag}>")
    names = root.findall("name")
    if len(names) != 1 or (names[0].text or "").strip() != name:
        found = (names[0].text or "").strip() if names else None
        raise XmlError(f"the XML's <name> ({found!r}) must be exactly {name!r}")
    names[0].text = name
    return root


# ------------------------------------------------------------------ marker / digest
def _strip_marker(root: ET.Element) -> None:
    for meta in root.findall("metadata"):
        for m in meta.findall(MARKER):
            meta.remove(m)
        if len(meta) == 0:
            root.remove(meta)


def digest(root: ET.Element) -> str:
    """Identity of a definition: sha256 of its canonical form without uuid and marker."""
    copy = deepcopy(root)
    _strip_marker(copy)
    for u in copy.findall("uuid"):
        copy.remove(u)
    # canonicalize re-parses, but only ElementTree's own output: it never has a DTD.
    canon = ET.canonicalize(ET.tostring(copy, encoding="unicode"), strip_text=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def with_marker(root: ET.Element, version: str, expires: float | None = None) -> ET.Element:
    """A copy of `root` with the vnetd ownership marker in <metadata> (after uuid);
    `expires` (unix seconds) is the end of a transient network's time to live."""
    copy = deepcopy(root)
    d = digest(copy)
    _strip_marker(copy)
    meta = copy.find("metadata")
    if meta is None:
        meta = ET.Element("metadata")
        pos = 0
        while pos < len(copy) and copy[pos].tag in ("name", "uuid"):
            pos += 1
        copy.insert(pos, meta)
    attrs = {"digest": d, "version": version}
    if expires is not None:
        attrs["expires"] = f"{expires:.0f}"
    ET.SubElement(meta, MARKER, attrs)
    return copy


def set_uuid(root: ET.Element, uuid: str) -> None:
    el = root.find("uuid")
    if el is None:
        el = ET.Element("uuid")
        root.insert(1, el)
    el.text = uuid


def marker_of(root: ET.Element) -> Marker | None:
    el = root.find(f"metadata/{MARKER}")
    if el is None:
        return None
    return Marker(digest=el.get("digest", ""), version=el.get("version", ""))


def to_string(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode")


# ------------------------------------------------------------------ reading back
def kind_of(root: ET.Element) -> str:
    """The spec kind a network's XML corresponds to."""
    fwd = root.find("forward")
    mode = fwd.get("mode", "nat") if fwd is not None else None
    if mode is None:
        return "isolated"
    if mode in ("nat", "route", "open", "hostdev"):
        return mode
    if mode in ("vepa", "private", "passthrough"):
        return "macvtap"
    if mode == "bridge":
        vp = root.find("virtualport")
        if vp is not None and vp.get("type") == "openvswitch":
            return "ovs"
        if root.find("bridge") is not None:
            return "bridge"
        return "macvtap"
    return mode


def bridge_of(root: ET.Element) -> str | None:
    el = root.find("bridge")
    return el.get("name") if el is not None else None


def summary(root: ET.Element) -> dict[str, object]:
    """Facts for list/events from a network's XML."""
    marker = marker_of(root)
    return {"kind": kind_of(root), "bridge": bridge_of(root), "owned": marker is not None}
