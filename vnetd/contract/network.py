"""libvirt virtual networks: the spec of each kind and the `network.*` ops.

A spec is a discriminated union on `kind`; vnetd builds the network XML from it
(vnetd.virt.xml). Raw XML is accepted instead of a spec for what the spec does not
cover; it is only size-checked here and parsed safely (no DTD, no entities) by the
virt layer before any side effect.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from vnetd.contract.base import NETWORK, Command, OpSpec
from vnetd.contract.types import IfName, Mac, Mtu

MAX_XML_BYTES = 64 * 1024
MAX_DHCP_HOSTS = 4096

_NET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
_DNS_NAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*")
_PCI = re.compile(r"([0-9a-f]{4}):([0-9a-f]{2}):([0-1][0-9a-f])\.([0-7])")


def _net_name(value: str) -> str:
    if not _NET_NAME.fullmatch(value):
        raise ValueError("network name must be 1 to 64 of [A-Za-z0-9_.-], not starting with . or -")
    return value


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as exc:
        raise ValueError(f"not an IPv4 address: {value!r}") from exc


def _ipv6(value: str) -> str:
    try:
        return str(ipaddress.IPv6Address(value))
    except ValueError as exc:
        raise ValueError(f"not an IPv6 address: {value!r}") from exc


def _dns_name(value: str) -> str:
    if not _DNS_NAME.fullmatch(value):
        raise ValueError("must be a DNS name (letters, digits, '-', dot-separated labels)")
    return value


def _pci(value: str) -> str:
    v = value.lower()
    if not _PCI.fullmatch(v):
        raise ValueError("PCI address must look like 0000:04:10.1 (domain:bus:slot.function)")
    return v


NetName = Annotated[str, AfterValidator(_net_name)]
"""A libvirt network name: 1..64 of [A-Za-z0-9_.-], not starting with '.' or '-'."""
IPv4 = Annotated[str, AfterValidator(_ipv4)]
IPv6 = Annotated[str, AfterValidator(_ipv6)]
DnsName = Annotated[str, AfterValidator(_dns_name)]
PciAddress = Annotated[str, AfterValidator(_pci)]
VlanTag = Annotated[int, Field(ge=0, le=4095)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Bridge(_Model):
    """The Linux bridge libvirt creates (isolated/nat/route/open) or uses (bridge)."""

    name: IfName | None = Field(default=None, description="default: libvirt picks virbrN")
    stp: bool = True
    delay: int = Field(default=0, ge=0, le=30, description="forward delay, seconds")
    mac: Mac | None = None


class DhcpRange(_Model):
    start: str
    end: str


class DhcpHost(_Model):
    """A static lease: `mac` (IPv4) or `name` identifies the guest; `ip` is its address."""

    mac: Mac | None = None
    name: DnsName | None = Field(default=None, max_length=63)
    ip: str

    @model_validator(mode="after")
    def _identified(self) -> DhcpHost:
        if self.mac is None and self.name is None:
            raise ValueError("a DHCP host needs a mac or a name")
        return self


class Dhcp(_Model):
    ranges: list[DhcpRange] = Field(default_factory=list, max_length=64)
    hosts: list[DhcpHost] = Field(default_factory=list, max_length=MAX_DHCP_HOSTS)


class _Ip(_Model):
    dhcp: Dhcp | None = None

    def _check_dhcp(self, address: str, prefix: int) -> None:
        net = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
        if self.dhcp is None:
            return
        seen: set[str] = set()
        for r in self.dhcp.ranges:
            start, end = ipaddress.ip_address(r.start), ipaddress.ip_address(r.end)
            if start not in net or end not in net:
                raise ValueError(f"DHCP range {r.start}-{r.end} is outside {net}")
            if int(start) > int(end):
                raise ValueError(f"DHCP range {r.start}-{r.end} ends before it starts")
        for h in self.dhcp.hosts:
            if ipaddress.ip_address(h.ip) not in net:
                raise ValueError(f"DHCP host address {h.ip} is outside {net}")
            key = h.mac or h.name or ""
            if key in seen:
                raise ValueError(f"DHCP host {key} listed twice")
            seen.add(key)


class Ipv4(_Ip):
    address: IPv4
    prefix: int = Field(ge=8, le=30)

    @model_validator(mode="after")
    def _ranges(self) -> Ipv4:
        for r in self.dhcp.ranges if self.dhcp else ():
            _ipv4(r.start)
            _ipv4(r.end)
        for h in self.dhcp.hosts if self.dhcp else ():
            _ipv4(h.ip)
        self._check_dhcp(self.address, self.prefix)
        return self


class Ipv6(_Ip):
    address: IPv6
    prefix: int = Field(default=64, ge=8, le=126)

    @model_validator(mode="after")
    def _ranges(self) -> Ipv6:
        for r in self.dhcp.ranges if self.dhcp else ():
            _ipv6(r.start)
            _ipv6(r.end)
        for h in self.dhcp.hosts if self.dhcp else ():
            _ipv6(h.ip)
            if h.mac is not None:
                raise ValueError("IPv6 DHCP hosts are identified by name (or id), not mac")
        self._check_dhcp(self.address, self.prefix)
        return self


class _Routed(_Model):
    """Fields of the kinds where libvirt creates a bridge with addresses."""

    bridge: Bridge = Bridge()
    mtu: Mtu | None = None
    domain: DnsName | None = None
    ipv4: Ipv4 | None = None
    ipv6: Ipv6 | None = None


class IsolatedSpec(_Routed):
    kind: Literal["isolated"]


class PortRange(_Model):
    start: int = Field(ge=1, le=65535)
    end: int = Field(ge=1, le=65535)


class NatSpec(_Routed):
    kind: Literal["nat"]
    dev: IfName | None = Field(default=None, description="only NAT out through this device")
    ports: PortRange | None = Field(default=None, description="source ports used for NAT")


class RouteSpec(_Routed):
    kind: Literal["route"]
    dev: IfName | None = None


class OpenSpec(_Routed):
    kind: Literal["open"]


class BridgeSpec(_Model):
    """Guests join an existing host bridge (on a NIC, VLAN, bond or bonded VLAN)."""

    kind: Literal["bridge"]
    bridge: IfName


MacvtapMode = Literal["bridge", "vepa", "private", "passthrough"]


class MacvtapSpec(_Model):
    """Guests get a macvtap device on one of `devices` (libvirt's `direct` interfaces)."""

    kind: Literal["macvtap"]
    mode: MacvtapMode = "bridge"
    devices: list[IfName] = Field(min_length=1, max_length=256)

    @model_validator(mode="after")
    def _distinct(self) -> MacvtapSpec:
        if len(set(self.devices)) != len(self.devices):
            raise ValueError("devices must be distinct")
        return self


class HostdevSpec(_Model):
    """A pool of SR-IOV VFs passed to guests: a PF (all its VFs) or a list of VFs."""

    kind: Literal["hostdev"]
    managed: bool = True
    pf: IfName | None = None
    vfs: list[PciAddress] = Field(default_factory=list, max_length=256)

    @model_validator(mode="after")
    def _one_source(self) -> HostdevSpec:
        if (self.pf is None) == (not self.vfs):
            raise ValueError("give exactly one of pf (a PF device) or vfs (VF PCI addresses)")
        return self


class PortgroupVlan(_Model):
    tags: list[VlanTag] = Field(min_length=1, max_length=64)
    trunk: bool = False


class Portgroup(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    default: bool = False
    vlan: PortgroupVlan | None = None


class OvsSpec(_Model):
    """Guests join an existing Open vSwitch bridge (`virtualport type='openvswitch'`)."""

    kind: Literal["ovs"]
    bridge: IfName
    vlan: PortgroupVlan | None = None
    portgroups: list[Portgroup] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _portgroups(self) -> OvsSpec:
        names = [p.name for p in self.portgroups]
        if len(set(names)) != len(names):
            raise ValueError("portgroup names must be distinct")
        if sum(p.default for p in self.portgroups) > 1:
            raise ValueError("at most one portgroup can be the default")
        return self


NetworkSpec = Annotated[
    IsolatedSpec | NatSpec | RouteSpec | OpenSpec | BridgeSpec | MacvtapSpec | HostdevSpec
    | OvsSpec,
    Field(discriminator="kind"),
]
KINDS = ("isolated", "nat", "route", "open", "bridge", "macvtap", "hostdev", "ovs")


class _NetworkCommand(Command):
    name: NetName


def _on_network(summary: str, read_only: bool = False) -> OpSpec:
    """The spec of an op on one network: it locks that network's name, its event's subject."""
    return OpSpec(summary, read_only=read_only, exclusive=("name",), subject="name",
                  space=NETWORK)


class _WithDefinition(_NetworkCommand):
    spec: NetworkSpec | None = None
    xml: str | None = Field(default=None, min_length=1, max_length=MAX_XML_BYTES)

    @model_validator(mode="after")
    def _one_definition(self) -> _WithDefinition:
        if (self.spec is None) == (self.xml is None):
            raise ValueError("give exactly one of spec or xml")
        if self.xml is not None and len(self.xml.encode()) > MAX_XML_BYTES:
            raise ValueError(f"xml is larger than {MAX_XML_BYTES} bytes")
        return self


class NetworkDefine(_WithDefinition):
    """`virsh net-define` (+ `net-autostart`, `net-start`)."""

    op: ClassVar[str] = "network.define"
    op_spec: ClassVar[OpSpec] = _on_network("define (or replace) a persistent network")
    autostart: bool | None = None
    start: bool = False
    replace: bool = False


class NetworkCreate(_WithDefinition):
    """`virsh net-create`: a transient network, gone when stopped."""

    op: ClassVar[str] = "network.create"
    op_spec: ClassVar[OpSpec] = _on_network("create and start a transient network")
    ttl_seconds: int | None = Field(
        default=None, ge=1, le=30 * 86_400,
        description="cleanup destroys the network this long after creation")


class NetworkStart(_NetworkCommand):
    op: ClassVar[str] = "network.start"
    op_spec: ClassVar[OpSpec] = _on_network("start a defined network")


class NetworkDestroy(_NetworkCommand):
    op: ClassVar[str] = "network.destroy"
    op_spec: ClassVar[OpSpec] = _on_network("stop a network")


class NetworkUndefine(_NetworkCommand):
    op: ClassVar[str] = "network.undefine"
    op_spec: ClassVar[OpSpec] = _on_network("remove a network's definition")


class NetworkAutostart(_NetworkCommand):
    op: ClassVar[str] = "network.autostart"
    op_spec: ClassVar[OpSpec] = _on_network("set whether libvirt starts the network at boot")
    enabled: bool


class NetworkDumpxml(_NetworkCommand):
    op: ClassVar[str] = "network.dumpxml"
    op_spec: ClassVar[OpSpec] = _on_network("the network's XML", read_only=True)
    inactive: bool = False


class NetworkList(Command):
    op: ClassVar[str] = "network.list"
    op_spec: ClassVar[OpSpec] = OpSpec("every network libvirt knows", read_only=True)


class NetworkUpdate(_NetworkCommand):
    """`virsh net-update` for DHCP host entries and ranges."""

    op: ClassVar[str] = "network.update"
    op_spec: ClassVar[OpSpec] = _on_network("add, modify or delete a DHCP host or range")
    action: Literal["add", "modify", "delete"]
    host: DhcpHost | None = None
    range: DhcpRange | None = None
    family: Literal["ipv4", "ipv6"] = "ipv4"
    live: bool = True
    config: bool = True

    @model_validator(mode="after")
    def _one_item(self) -> NetworkUpdate:
        if (self.host is None) == (self.range is None):
            raise ValueError("give exactly one of host or range")
        if self.range is not None and self.action == "modify":
            raise ValueError("a DHCP range cannot be modified: delete it and add the new one")
        if not (self.live or self.config):
            raise ValueError("at least one of live or config must be true")
        check = _ipv4 if self.family == "ipv4" else _ipv6
        if self.host is not None:
            check(self.host.ip)
        if self.range is not None:
            check(self.range.start)
            check(self.range.end)
        return self


NETWORK_OPS: tuple[type[Command], ...] = (
    NetworkDefine, NetworkCreate, NetworkStart, NetworkDestroy, NetworkUndefine,
    NetworkAutostart, NetworkDumpxml, NetworkList, NetworkUpdate)
"""This module's ops, for the op table (commands.build_op_table)."""
