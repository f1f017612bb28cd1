"""What handlers need from libvirt, as a typed Protocol (libvirt-python has no types).

The real adapter is vnetd.virt.libvirt_backend; unit tests use a small fake. Every
method is a coroutine: the adapter runs the blocking libvirt call in a thread pool.
Failures are VirtError with a `reason` the handlers map onto contract errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Reason(StrEnum):
    NOT_FOUND = "not_found"
    INVALID = "invalid"  # libvirt rejected the XML or an argument
    UNSUPPORTED = "unsupported"  # this host/kernel/hardware cannot do it
    CONFLICT = "conflict"  # the state forbids it (already active, address in use, ...)
    UNAVAILABLE = "unavailable"  # no connection to libvirtd
    FAILED = "failed"  # anything else libvirt reported


class VirtError(Exception):
    def __init__(self, reason: Reason, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code


@dataclass(frozen=True)
class NetworkState:
    name: str
    uuid: str
    active: bool
    persistent: bool
    autostart: bool
    xml: str
    """The current definition (the live one when active)."""


@dataclass(frozen=True)
class DomainInterface:
    """One `<interface>` of a domain's live definition (what its NIC is plugged into)."""

    alias: str | None  # libvirt's device alias ("net0"): the device-added/removed events name it
    mac: str | None
    type: str  # network | bridge | ethernet | direct | ...
    target: str | None  # the host device: TAP (vnetN, or Nova's pre-made one) or macvtap
    network: str | None  # <source network>
    bridge: str | None  # <source bridge> (also in the live XML of a network interface)
    source_dev: str | None  # <source dev>: a macvtap's parent

    def data(self) -> dict[str, str | None]:
        return {"alias": self.alias, "mac": self.mac, "type": self.type,
                "target": self.target, "network": self.network, "bridge": self.bridge,
                "source_dev": self.source_dev}


@dataclass(frozen=True)
class DomainState:
    name: str
    uuid: str
    active: bool
    interfaces: tuple[DomainInterface, ...]
    """From the live definition when active, else the persistent one."""


@dataclass(frozen=True)
class DomainDefinitions:
    """The XML of a domain's definitions, for what cleanup must not remove."""

    name: str
    xmls: tuple[str, ...]
    """Its current definition (the live one when running) and, for a running
    persistent domain, the one it boots with next."""


class UpdateSection(StrEnum):
    DHCP_HOST = "ip-dhcp-host"
    DHCP_RANGE = "ip-dhcp-range"


class UpdateAction(StrEnum):
    ADD = "add"
    MODIFY = "modify"
    DELETE = "delete"


class VirtBackend(Protocol):
    adopt_unowned: bool
    """Config: destroy/undefine of networks vnetd did not define is allowed."""

    @property
    def connected(self) -> bool: ...

    def may_exist(self, name: str) -> bool:
        """A hint, without asking libvirtd: False when no network of that name was there
        when last seen (listed, looked up, or named by an event)."""
        ...

    async def list_networks(self) -> list[NetworkState]: ...

    async def get_network(self, name: str) -> NetworkState | None: ...

    async def network_xml(self, name: str, inactive: bool) -> str: ...

    async def define(self, name: str, xml: str,
                     prev: NetworkState | None = None) -> NetworkState:
        """Define (or redefine) network `name` (the XML's <name>); its state afterwards.
        `prev`: its state just before, as the caller read it (None: it did not exist)."""
        ...

    async def create(self, name: str, xml: str) -> NetworkState:
        """Create and start transient network `name`; its state afterwards."""
        ...

    # `prev` (optional) is the network's state as the caller read it just before the
    # change: the adapter then knows the state the change leads to, and the lifecycle
    # event it causes is published with that state instead of reading it again.
    async def start(self, name: str, prev: NetworkState | None = None) -> None: ...

    async def destroy(self, name: str, prev: NetworkState | None = None) -> None: ...

    async def undefine(self, name: str, prev: NetworkState | None = None) -> None: ...

    async def set_autostart(self, name: str, enabled: bool) -> None: ...

    async def update(self, name: str, action: UpdateAction, section: UpdateSection,
                     parent_index: int, xml: str, live: bool, config: bool) -> None: ...

    async def list_domains(self) -> list[DomainState]:
        """Every domain (running or not) with the interfaces of its current definition."""
        ...

    async def get_domain(self, uuid: str) -> DomainState | None: ...

    async def domain_definitions(self) -> list[DomainDefinitions]:
        """Every domain's definitions as libvirtd gives them (parse with virt.xml.parse_safe)."""
        ...
