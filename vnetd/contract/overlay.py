"""Tenant networks across hosts: VXLAN devices and their forwarding state as full state.

`vxlan.ensure` creates or converges one VXLAN device (one segment on this host)
and attaches it to a vnetd bridge. `fdb.converge` gives, for one such device,
the *complete* list of remote VTEPs (head-end replication: one all-zero MAC
row per remote) and optionally the complete unicast `{mac -> vtep}` and
`{ip -> mac}` tables (ARP/ND suppression with `proxy`): vnetd adds what is
missing and removes what it wrote that is no longer listed. Re-sending the same
job repairs any drift; there are no deltas to lose.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from functools import lru_cache
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from vnetd.contract.base import Command, OpSpec
from vnetd.contract.types import IfName, Mac, Mtu, not_libvirt_reserved

MAX_VNI = 16_777_215
MAX_REMOTES = 1024
MAX_FDB = 16_384
MAX_NEIGHBOURS = 16_384


@lru_cache(maxsize=65536)
def ip_of(value: str) -> tuple[str, int] | None:
    """(normal form, version) of an IP address, None if it is none. Cached: a job of
    thousands of entries names a few VTEPs over and over, and ipaddress is slow."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    return str(ip), ip.version


@lru_cache(maxsize=65536)
def _unicast_ip(value: str) -> str:
    found = ip_of(value)
    if found is None:
        raise ValueError(f"not an IPv4 or IPv6 address: {value!r}")
    ip = ipaddress.ip_address(found[0])
    if ip.is_unspecified or ip.is_multicast or (ip.version == 4 and int(ip) == 0xFFFFFFFF):
        raise ValueError(f"{value} is not a unicast address")
    return found[0]


UnicastIp = Annotated[str, AfterValidator(_unicast_ip)]
"""An IPv4 or IPv6 unicast address, normalised (::ffff:0:1 style kept as the kernel)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class VxlanEnsure(Command):
    """`ip link add NAME type vxlan id VNI local IP dstport 4789 nolearning` + `master BR`."""

    op: ClassVar[str] = "vxlan.ensure"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "create a VXLAN device or converge it, optionally in a bridge", exclusive=("name",),
        shared=("bridge",), leases=("name", "bridge"), subject="name")
    name: IfName
    vni: int = Field(ge=1, le=MAX_VNI)
    local: UnicastIp = Field(description="this host's underlay address (source of VXLAN)")
    dev: IfName | None = Field(default=None, description="underlay device; default: routing")
    dstport: int = Field(default=4789, ge=1, le=65535)
    learning: bool = Field(default=False, description="off: the FDB is the control plane's")
    proxy: bool = Field(default=False, description="answer ARP/ND from neighbour entries")
    ttl: int | None = Field(default=None, ge=1, le=255, description="default: inherit")
    tos: int | None = Field(default=None, ge=0, le=255, description="default: 0")
    mtu: Mtu | None = Field(default=None, description="default: underlay MTU - 50 (IPv6: 70)")
    bridge: IfName | None = None
    up: bool = True

    _reserved = field_validator("name")(not_libvirt_reserved)

    @model_validator(mode="after")
    def _distinct(self) -> VxlanEnsure:
        if self.bridge is not None and self.bridge in (self.name, self.dev):
            raise ValueError("bridge must differ from the VXLAN device and its underlay")
        if self.dev is not None and self.dev == self.name:
            raise ValueError("a VXLAN device cannot be its own underlay")
        return self


class VxlanDelete(Command):
    op: ClassVar[str] = "vxlan.delete"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "delete a VXLAN device vnetd owns", exclusive=("name",), subject="name")
    name: IfName


class FdbEntrySpec(_Model):
    """One unicast forwarding entry: frames to `mac` go to the VTEP `dst`."""

    mac: Mac
    dst: UnicastIp


class NeighbourSpec(_Model):
    """One ARP/ND entry answered locally by the VXLAN device (with `proxy`)."""

    ip: UnicastIp
    mac: Mac


def _first_duplicate(values: list[str]) -> str | None:
    counts = Counter(values)
    return next((v for v in values if counts[v] > 1), None)


def _families(values: list[str]) -> set[int]:
    return {found[1] for v in values if (found := ip_of(v)) is not None}


class FdbConverge(Command):
    """The complete forwarding state of one VXLAN device; None leaves that table alone."""

    op: ClassVar[str] = "fdb.converge"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "the complete remote VTEP, FDB and neighbour tables of a VXLAN device",
        exclusive=("name",), subject="name")
    name: IfName
    remotes: list[UnicastIp] = Field(max_length=MAX_REMOTES,
                                     description="every remote VTEP of the segment")
    fdb: list[FdbEntrySpec] | None = Field(default=None, max_length=MAX_FDB)
    neighbours: list[NeighbourSpec] | None = Field(default=None, max_length=MAX_NEIGHBOURS)

    @model_validator(mode="after")
    def _consistent(self) -> FdbConverge:
        if len(set(self.remotes)) != len(self.remotes):
            raise ValueError("remotes must be distinct")
        dsts = [*self.remotes, *(e.dst for e in self.fdb or ())]
        if len(_families(dsts)) > 1:
            raise ValueError("remotes and fdb destinations must all be IPv4 or all IPv6")
        macs = [e.mac for e in self.fdb or ()]
        if dup := _first_duplicate(macs):
            raise ValueError(f"fdb lists MAC {dup} twice (one VTEP per MAC)")
        if dup := _first_duplicate([n.ip for n in self.neighbours or ()]):
            raise ValueError(f"neighbours lists {dup} twice")
        return self


OVERLAY_OPS: tuple[type[Command], ...] = (VxlanEnsure, VxlanDelete, FdbConverge)
"""This module's ops, for the op table (commands.build_op_table)."""
