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

    async def list_networks(self) -> list[NetworkState]: ...

    async def get_network(self, name: str) -> NetworkState | None: ...

    async def network_xml(self, name: str, inactive: bool) -> str: ...

    async def define(self, xml: str) -> None: ...

    async def create(self, xml: str) -> None: ...

    async def start(self, name: str) -> None: ...

    async def destroy(self, name: str) -> None: ...

    async def undefine(self, name: str) -> None: ...

    async def set_autostart(self, name: str, enabled: bool) -> None: ...

    async def update(self, name: str, action: UpdateAction, section: UpdateSection,
                     parent_index: int, xml: str, live: bool, config: bool) -> None: ...
