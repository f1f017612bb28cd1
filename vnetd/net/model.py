"""Plain data describing links as the kernel reports them."""

from __future__ import annotations

from dataclasses import dataclass

OWNER_PREFIX = "vnetd:"
"""Devices whose interface alias starts with this were created by vnetd.

The marker lives in the kernel itself, so ownership survives a daemon restart
without any database, and `ip link` shows it to operators.
"""

OWNER_ALIAS = OWNER_PREFIX + "v1"

CREATING_GROUP = 0x766E6400
"""The interface group ("vnd\\0", 1986880512) a device vnetd creates over netlink
is born in, named in the creating request itself.

The kernel ignores an alias in a creating RTM_NEWLINK, so the alias can only
come in a second request; a device in this group and without the alias is one
whose creation by vnetd was cut short (a kill between the two requests), and
the next ensure of its name finishes it (marks it, then leaves the group). A
TAP needs no group: it is created non-persistent and made persistent only
once marked (net/netlink.py). Nobody else is expected to use this number.
"""


def is_owned_alias(alias: str | None) -> bool:
    return alias is not None and alias.startswith(OWNER_PREFIX)


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    stp: bool
    forward_delay: float
    """Seconds (the kernel keeps centiseconds)."""
    ageing_time: float
    """Seconds (the kernel keeps centiseconds)."""
    vlan_filtering: bool


@dataclass(frozen=True, slots=True)
class TunSettings:
    mode: str
    """"tap" or "tun"."""
    owner_uid: int | None
    group_gid: int | None
    multi_queue: bool
    vnet_hdr: bool
    persistent: bool


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    kind: str
    """"bridge", "tap", "tun", "veth", "vxlan", ... or "device" for kind-less links."""
    mtu: int
    mac: str | None
    up: bool
    """Administrative state (IFF_UP)."""
    oper_state: str
    """Operational state as the kernel names it: "up", "down", "unknown", ..."""
    carrier: bool
    master: int | None
    alias: str | None
    bridge: BridgeSettings | None = None
    tun: TunSettings | None = None
    carrier_changes: int = 0
    """How often the carrier went on or off (IFLA_CARRIER_CHANGES): for a TAP, a
    process attaching or detaching. A changed count means "used since last seen"."""
    group: int = 0
    """Interface group (IFLA_GROUP); 0 is the kernel's default."""

    @property
    def owned(self) -> bool:
        return is_owned_alias(self.alias)

    @property
    def half_created(self) -> bool:
        """Created by vnetd, creation not finished (see CREATING_GROUP)."""
        return self.group == CREATING_GROUP


@dataclass(frozen=True, slots=True)
class Address:
    """One IP address of a link (RTM_NEWADDR / RTM_DELADDR)."""

    index: int
    family: str
    """"inet" or "inet6"."""
    address: str
    prefixlen: int
    scope: int
    label: str | None

    @property
    def key(self) -> tuple[int, str, str, int]:
        return (self.index, self.family, self.address, self.prefixlen)


ADDR_GEN_MODE_EUI64 = 0
"""IN6_ADDR_GEN_MODE_EUI64: a link-local address from the MAC (the kernel's default)."""
ADDR_GEN_MODE_NONE = 1
"""IN6_ADDR_GEN_MODE_NONE: the kernel generates no link-local address for the link."""


@dataclass(frozen=True, slots=True)
class Ipv6State:
    """A link's IPv6 as the kernel keeps it: its per-device `disable_ipv6` and
    `addr_gen_mode` (net.ipv6.conf.<name>.*).

    Both are needed to say "off": address generation none alone still lets a router
    advertisement give the link a SLAAC address, and disable_ipv6 alone is undone by
    anyone who writes 0 to it (then a link-local address appears at once)."""

    disabled: bool
    """disable_ipv6 = 1: the link has no IPv6 address at all, whatever it receives."""
    addr_gen_mode: int
    """0 eui64, 1 none, 2 stable-privacy, 3 random (ADDR_GEN_MODE_*)."""

    @property
    def enabled(self) -> bool:
        """The link may get IPv6 addresses (a SLAAC one from a router advertisement)."""
        return not self.disabled

    @property
    def off(self) -> bool:
        """What `ipv6: false` converges to: disabled, and no link-local generation."""
        return self.disabled and self.addr_gen_mode == ADDR_GEN_MODE_NONE

    @property
    def on(self) -> bool:
        """What `ipv6: true` converges to: enabled, with link-local generation."""
        return not self.disabled and self.addr_gen_mode != ADDR_GEN_MODE_NONE


@dataclass(frozen=True, slots=True)
class BridgeOptions:
    """Bridge attributes to set; None means leave as is (or kernel default)."""

    stp: bool | None = None
    forward_delay: float | None = None
    ageing_time: float | None = None
    vlan_filtering: bool | None = None

    def is_empty(self) -> bool:
        return all(v is None for v in (self.stp, self.forward_delay, self.ageing_time,
                                       self.vlan_filtering))


@dataclass(frozen=True, slots=True)
class LinkChange:
    """One RTM_NEWLINK (set) request: every field None is left unchanged."""

    alias: str | None = None
    mtu: int | None = None
    mac: str | None = None
    up: bool | None = None
    master: int | None = None
    """Index of the new master; 0 detaches from the current one."""
    bridge: BridgeOptions | None = None
    group: int | None = None
    """Interface group; 0 is the kernel's default."""

    def is_empty(self) -> bool:
        return (
            self.alias is None and self.mtu is None and self.mac is None and self.up is None
            and self.master is None and (self.bridge is None or self.bridge.is_empty())
            and self.group is None
        )


@dataclass(frozen=True, slots=True)
class TapSpec:
    name: str
    owner_uid: int | None = None
    group_gid: int | None = None
    multi_queue: bool = False
    vnet_hdr: bool = False
    ipv6: bool = True
    """False: IPv6 is disabled on the TAP at creation, before anything can bring it up."""
