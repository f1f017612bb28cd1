"""What handlers need from Open vSwitch, as a typed Protocol (the `ovs` IDL has no types).

The real adapter is vnetd.ovs.idl (the OVSDB IDL on a thread of its own); unit
tests use a small fake. Every method is a coroutine. Failures are OvsError with
a `reason` the handlers map onto contract errors. Rows are named by their
OVSDB uuid where a check and a change must be about the same row: a delete
names the row it checked, and the adapter verifies in the same transaction
that the row still carries what was checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol

OWNER_KEY = "vnetd-owner"
OWNER_VALUE = "v1"
"""external_ids marker of every bridge, port and interface vnetd creates."""

VlanMode = Literal["access", "trunk", "native-tagged", "native-untagged"]


class Reason(StrEnum):
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # the database refused it (a name taken, a constraint)
    CHANGED = "changed"  # the row changed under us (a verify failed): read again
    UNAVAILABLE = "unavailable"  # no connection to ovsdb-server, or vswitchd did not apply
    FAILED = "failed"  # anything else the server reported


class OvsError(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Vlan:
    """A port's VLAN settings: what OVS keeps in Port.tag, trunks and vlan_mode."""

    tag: int | None = None
    trunks: tuple[int, ...] = ()
    mode: VlanMode | None = None


@dataclass(frozen=True, slots=True)
class OvsInterface:
    name: str
    type: str
    """"" for a system device (a TAP, a veth end), "internal" for a bridge's own port."""
    ofport: int | None
    error: str | None
    link_state: str | None
    mac_in_use: str | None
    external_ids: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OvsPort:
    uuid: str
    name: str
    bridge: str | None
    vlan: Vlan
    interfaces: tuple[OvsInterface, ...]
    external_ids: Mapping[str, str] = field(default_factory=dict)

    @property
    def owned(self) -> bool:
        return self.external_ids.get(OWNER_KEY) == OWNER_VALUE


@dataclass(frozen=True, slots=True)
class OvsBridge:
    uuid: str
    name: str
    datapath_type: str
    ports: tuple[OvsPort, ...]
    external_ids: Mapping[str, str] = field(default_factory=dict)

    @property
    def owned(self) -> bool:
        return self.external_ids.get(OWNER_KEY) == OWNER_VALUE

    def guest_ports(self) -> tuple[OvsPort, ...]:
        """Ports other than the bridge's own internal port (which OVS names after it)."""
        return tuple(p for p in self.ports if p.name != self.name)


@dataclass(frozen=True, slots=True)
class OvsState:
    """One consistent picture of the database (what the IDL replica holds)."""

    bridges: tuple[OvsBridge, ...]
    ovs_version: str | None = None
    datapath_types: tuple[str, ...] = ()

    def bridge(self, name: str) -> OvsBridge | None:
        return next((b for b in self.bridges if b.name == name), None)

    def port(self, name: str) -> OvsPort | None:
        return next((p for b in self.bridges for p in b.ports if p.name == name), None)


@dataclass(frozen=True, slots=True)
class OvsOptions:
    """How handlers use OVS on this host (from `[ovs]`)."""

    datapath_type: str = "system"
    foreign_bridges: tuple[str, ...] = ()
    """Glob patterns of bridges vnetd did not create that its ports may still join."""


StateListener = Callable[[OvsState, bool], None]
"""Called on the event loop with each new picture and whether it follows a reconnect."""


class OvsBackend(Protocol):
    remote: str

    @property
    def state(self) -> str:
        """"connecting", "connected" or "degraded" (with `last_error`)."""

    @property
    def last_error(self) -> str | None: ...

    async def snapshot(self) -> OvsState:
        """The current picture; raises OvsError(UNAVAILABLE) when never connected."""

    async def add_bridge(self, name: str, datapath_type: str,
                         external_ids: Mapping[str, str]) -> OvsBridge:
        """Create a bridge with its internal port (as `ovs-vsctl add-br` does)."""

    async def delete_bridge(self, uuid: str, external_ids: Mapping[str, str]) -> None:
        """Delete the bridge row `uuid` and its ports, if it still has `external_ids`."""

    async def add_port(self, bridge_uuid: str, name: str, vlan: Vlan,
                       external_ids: Mapping[str, str]) -> OvsPort:
        """Add a port of one system interface `name` to the bridge row `bridge_uuid`."""

    async def set_port_vlan(self, uuid: str, vlan: Vlan) -> OvsPort:
        """Converge the VLAN settings of the port row `uuid`."""

    async def delete_port(self, uuid: str, external_ids: Mapping[str, str]) -> None:
        """Remove the port row `uuid` from its bridge, if it still has `external_ids`."""
