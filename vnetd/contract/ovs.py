"""Open vSwitch bridges and ports: the `ovs.*` ops.

An OVS bridge is also a network device (its internal port), so its name obeys
the kernel's interface-name rules; a port is an existing device (a TAP, a veth
end) added to a bridge with its VLAN settings. Every field is checked here,
before any side effect: VLAN tags 0..4095, trunks distinct and bounded, and
only combinations OVS gives a meaning to.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from vnetd.contract.base import Command, OpSpec
from vnetd.contract.types import IfName, not_libvirt_reserved

VlanTag = Annotated[int, Field(ge=0, le=4095)]
MAX_TRUNKS = 4096
VlanMode = Literal["access", "trunk", "native-tagged", "native-untagged"]


class OvsBridgeEnsure(Command):
    """`ovs-vsctl --may-exist add-br NAME` (datapath type from `[ovs] datapath_type`)."""

    op: ClassVar[str] = "ovs.bridge.ensure"
    # An OVS bridge is also a device (its internal port): the `link` lock space.
    op_spec: ClassVar[OpSpec] = OpSpec(
        "create an Open vSwitch bridge (or find it) with its internal port",
        exclusive=("name",), leases=("name",), hold="hold_seconds", subject="name")
    name: IfName
    hold_seconds: float | None = Field(
        default=None, ge=0, le=7 * 86_400,
        description="keep the bridge from cleanup this long (a VM start, a migration)")

    _reserved = field_validator("name")(not_libvirt_reserved)


class OvsBridgeDelete(Command):
    """`ovs-vsctl --if-exists del-br NAME` (only a bridge vnetd created)."""

    op: ClassVar[str] = "ovs.bridge.delete"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "delete an Open vSwitch bridge vnetd created, with its ports", exclusive=("name",),
        subject="name")
    name: IfName


class OvsBridgeList(Command):
    """`ovs-vsctl show`, as data."""

    op: ClassVar[str] = "ovs.bridge.list"
    op_spec: ClassVar[OpSpec] = OpSpec("every Open vSwitch bridge with its ports and VLANs",
                                       read_only=True)


class OvsPortAttach(Command):
    """`ovs-vsctl --may-exist add-port BRIDGE NAME tag=T trunks=...`, converging VLANs."""

    op: ClassVar[str] = "ovs.port.attach"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "add a device to an Open vSwitch bridge, converging its VLAN tag and trunks",
        exclusive=("name",), shared=("bridge",), leases=("name", "bridge"),
        hold="hold_seconds", subject="name")
    name: IfName
    bridge: IfName
    tag: VlanTag | None = None
    trunks: list[VlanTag] = Field(default=[], max_length=MAX_TRUNKS)  # pydantic copies it
    vlan_mode: VlanMode | None = Field(
        default=None, description="default: access with a tag, trunk without")
    hold_seconds: float | None = Field(
        default=None, ge=0, le=7 * 86_400,
        description="keep the device from cleanup this long (a VM start, a migration)")

    @model_validator(mode="after")
    def _vlans(self) -> OvsPortAttach:
        if self.bridge == self.name:
            raise ValueError("a device cannot be a port of itself")
        if len(set(self.trunks)) != len(self.trunks):
            raise ValueError("trunks must be distinct")
        mode = self.vlan_mode or ("access" if self.tag is not None else "trunk")
        if mode == "access" and self.trunks:
            raise ValueError("an access port (a tag without vlan_mode) carries no trunks; "
                             "use vlan_mode native-untagged or native-tagged for both")
        if mode == "access" and self.tag is None:
            raise ValueError("vlan_mode access needs a tag")
        if mode == "trunk" and self.tag is not None:
            raise ValueError("vlan_mode trunk takes trunks, not a tag")
        if mode.startswith("native") and self.tag is None:
            raise ValueError(f"vlan_mode {mode} needs a tag (the native VLAN)")
        return self


class OvsPortDetach(Command):
    """`ovs-vsctl --if-exists del-port NAME` (only a port vnetd added)."""

    op: ClassVar[str] = "ovs.port.detach"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "remove a port vnetd added from its Open vSwitch bridge", exclusive=("name",),
        subject="name")
    name: IfName


OVS_OPS: tuple[type[Command], ...] = (
    OvsBridgeEnsure, OvsBridgeDelete, OvsBridgeList, OvsPortAttach, OvsPortDetach)
"""This module's ops, for the op table (commands.build_op_table)."""
