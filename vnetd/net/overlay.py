"""The overlay's kernel interface: VXLAN devices, their FDB and their neighbour table.

`OverlayBackend` is what handlers use (through `NetBackend.overlay()`); the real
implementation is `vnetd.net.vxlan.VxlanNetlink`, the unit tests use a fake.

Ownership of entries (vnetd changes only what it wrote, and the kernel holds
the marker, so it survives a restart without a database):

- only entries on VXLAN devices vnetd owns (alias `vnetd:v1`) are ever looked
  at; the bridge's own FDB (NTF_MASTER) and every other device are never read
  or written;
- a unicast FDB entry or a neighbour entry is vnetd's when it is
  NUD_PERMANENT *and* carries NTF_EXT_LEARNED ("extern_learn"): vnetd writes
  both, learning never creates that state and a hand-typed `bridge fdb add` or
  `ip neigh add` does not either, so such entries stay foreign and untouched;
- an all-zero MAC entry (the flood list, one row per remote VTEP) is vnetd's
  when it is NUD_PERMANENT: the kernel keeps the flags once per MAC, not per
  remote, so they cannot mark one remote; the flood list of a vnetd device is
  the control plane's to define as a whole.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from vnetd.contract.errors import VnetdError

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NTF_MASTER = 0x04
NTF_EXT_LEARNED = 0x10
ZERO_MAC = "00:00:00:00:00:00"


def overhead(local: str) -> int:
    """Bytes VXLAN adds to an inner frame: outer IP (20/40) + UDP 8 + VXLAN 8 + inner
    Ethernet 14: 50 over IPv4, 70 over IPv6."""
    return 50 if ipaddress.ip_address(local).version == 4 else 70


@dataclass(frozen=True, slots=True)
class VxlanSpec:
    """A VXLAN device to create (down, unmarked, not attached)."""

    name: str
    vni: int
    local: str
    link: int | None
    """Index of the underlay device (IFLA_VXLAN_LINK), or None: routing decides."""
    port: int = 4789
    learning: bool = False
    proxy: bool = False
    ttl: int = 0
    """0: inherit ("auto")."""
    tos: int = 0
    mtu: int | None = None


@dataclass(frozen=True, slots=True)
class VxlanInfo:
    """A VXLAN device's settings as the kernel reports them."""

    vni: int
    local: str | None
    link: int | None
    port: int
    learning: bool
    proxy: bool
    ttl: int
    tos: int


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """One row of a VXLAN device's own FDB (NTF_SELF): a MAC and one remote."""

    mac: str
    dst: str | None
    state: int = NUD_PERMANENT
    flags: int = NTF_SELF

    @property
    def flood(self) -> bool:
        return self.mac == ZERO_MAC

    @property
    def owned(self) -> bool:
        if not self.state & NUD_PERMANENT or self.dst is None:
            return False
        return self.flood or bool(self.flags & NTF_EXT_LEARNED)


@dataclass(frozen=True, slots=True)
class NeighEntry:
    """One neighbour (ARP/ND) entry on a VXLAN device: what proxy answers from."""

    ip: str
    mac: str | None
    state: int = NUD_PERMANENT
    flags: int = NTF_EXT_LEARNED

    @property
    def owned(self) -> bool:
        return bool(self.state & NUD_PERMANENT) and bool(self.flags & NTF_EXT_LEARNED)


FdbAction = Literal["add", "append", "replace", "delete"]
"""add: a new unicast entry (fails if the MAC exists); append: one more remote of the
flood list; replace: move an owned unicast entry to another remote; delete: one row."""


@dataclass(frozen=True, slots=True)
class FdbOp:
    action: FdbAction
    mac: str
    dst: str


NeighAction = Literal["add", "replace", "delete"]


@dataclass(frozen=True, slots=True)
class NeighOp:
    action: NeighAction
    ip: str
    mac: str


@dataclass(frozen=True, slots=True)
class OpError:
    """One request of a batch that the kernel refused."""

    op: FdbOp | NeighOp
    errno: int
    error: VnetdError


class OverlayBackend(Protocol):
    async def add_vxlan(self, spec: VxlanSpec) -> None:
        """Create the device; Unsupported when the kernel has no VXLAN, Conflict if taken."""

    async def vxlan_info(self, index: int) -> VxlanInfo | None:
        """The settings of VXLAN device `index`, None when it is not one (or gone)."""

    async def local_addresses(self) -> dict[str, int]:
        """Every address configured in the namespace -> the index of its link."""

    async def fdb_entries(self, index: int) -> list[FdbEntry]:
        """The device's own FDB rows (NTF_SELF), every state."""

    async def neigh_entries(self, index: int) -> list[NeighEntry]:
        """The device's IPv4 and IPv6 neighbour entries, every state."""

    async def apply(self, index: int, fdb: Sequence[FdbOp],
                    neigh: Sequence[NeighOp]) -> list[OpError]:
        """Send every request, FDB first then neighbours, in order, as few writes as
        possible; returns the ones the kernel refused (the others took effect)."""
