"""An in-memory fake of vnetd's own NetBackend Protocol, for the unit tier.

It keeps the kernel's rules that handlers depend on: names are unique
(creating a taken name is a Conflict, like EEXIST/EBUSY), an unknown index is
NotFound (ENODEV), a bridge cannot be a port of a bridge (ELOOP), new devices
start down and marked as vnetd's (the backend marks them), bridge timers
are kept in centiseconds as the kernel keeps them, and a link's IPv6 state goes
away under an MTU of 1280 and comes back with the defaults (on) above it. Every
call is logged so tests can say "nothing changed".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vnetd.contract.errors import Conflict, InvalidArgument, NotFound, Unsupported, VnetdError
from vnetd.net.backend import NetBackend
from vnetd.net.model import (
    ADDR_GEN_MODE_EUI64,
    ADDR_GEN_MODE_NONE,
    OWNER_ALIAS,
    BridgeOptions,
    BridgeSettings,
    Ipv6State,
    Link,
    LinkChange,
    TapSpec,
    TunSettings,
)
from vnetd.net.overlay import OverlayBackend
from vnetd.net.rtnl import IPV6_MIN_MTU

if TYPE_CHECKING:
    from tests.unit.fake_overlay import FakeOverlay

MUTATING = frozenset(
    {"add_bridge", "add_tap", "add_taps", "finish_creation", "set_tap_owner", "set_link",
     "change_link", "delete_link", "disable_ipv6", "set_ipv6", "add_vxlan", "apply"}
)
Caller = Callable[..., Awaitable[dict[str, Any]]]
"""The `call` fixture: `await call("bridge.ensure", name="br0")` validates and dispatches."""

DEFAULT_BRIDGE = BridgeSettings(
    stp=False, forward_delay=15.0, ageing_time=300.0, vlan_filtering=False
)
IPV6_ON = Ipv6State(disabled=False, addr_gen_mode=ADDR_GEN_MODE_EUI64)
"""The kernel's defaults for a new link (and a link's IPv6 state made anew)."""
IPV6_OFF = Ipv6State(disabled=True, addr_gen_mode=ADDR_GEN_MODE_NONE)


@dataclass
class RecordingSink:
    """An EventSink that keeps every (type, subject, data) it is given, in order."""

    events: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)

    def emit(self, type: str, subject: str | None, data: dict[str, Any]) -> None:
        self.events.append((type, subject, data))

    def types(self) -> list[tuple[str, str | None]]:
        return [(t, s) for t, s, _ in self.events]


def centiseconds(seconds: float) -> float:
    """What the kernel gives back for a timer set to `seconds` (USER_HZ = 100)."""
    return round(seconds * 100) / 100


@dataclass
class FakeLink:
    index: int
    name: str
    kind: str
    mtu: int = 1500
    mac: str | None = None
    up: bool = False
    master: int | None = None
    alias: str | None = None
    bridge: BridgeSettings | None = None
    tun: TunSettings | None = None
    group: int = 0
    ipv6: Ipv6State | None = IPV6_ON
    """None: the kernel keeps no IPv6 state (MTU under 1280)."""
    ipv6_when_up: Ipv6State | None = None
    """The IPv6 state the link had when it was last brought up (tests of "before up")."""

    def freeze(self) -> Link:
        return Link(
            index=self.index,
            name=self.name,
            kind=self.kind,
            mtu=self.mtu,
            mac=self.mac,
            up=self.up,
            oper_state="up" if self.up else "down",
            carrier=self.up,
            master=self.master,
            alias=self.alias,
            bridge=self.bridge,
            tun=self.tun,
            group=self.group,
        )


@dataclass
class Call:
    method: str
    args: tuple[Any, ...]

    @property
    def mutating(self) -> bool:
        return self.method in MUTATING


@dataclass
class FakeNet:
    links: dict[int, FakeLink] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    ipv6_disabled: set[str] = field(default_factory=set)
    default_routes: set[str] = field(default_factory=set)
    kernel_features: dict[str, bool | str] = field(
        default_factory=lambda: {"bridge": True, "tun_device": True, "netns": ""}
    )
    closed: bool = False
    _next_index: int = 1
    overlay_backend: FakeOverlay | None = None

    # -- test set-up (not logged) -------------------------------------------------

    def add(
        self,
        name: str,
        kind: str = "device",
        *,
        owned: bool = False,
        alias: str | None = None,
        master: str | None = None,
        up: bool = True,
        mtu: int = 1500,
        mac: str | None = None,
        multi_queue: bool = False,
        vnet_hdr: bool = False,
        owner_uid: int | None = None,
        group: int = 0,
        ipv6: Ipv6State | None = IPV6_ON,
    ) -> int:
        """Put a device in place as if someone else (or vnetd, `owned`) had made it."""
        self._require_free(name)
        index = self._new_index()
        self.links[index] = FakeLink(
            index=index,
            name=name,
            kind=kind,
            mtu=mtu,
            mac=mac or self._mac(index),
            up=up,
            master=self.index_of(master) if master else None,
            alias="vnetd:v1" if owned else alias,
            bridge=DEFAULT_BRIDGE if kind == "bridge" else None,
            tun=TunSettings(
                mode="tap",
                owner_uid=owner_uid,
                group_gid=None,
                multi_queue=multi_queue,
                vnet_hdr=vnet_hdr,
                persistent=True,
            )
            if kind == "tap"
            else None,
            group=group,
            ipv6=ipv6 if mtu >= IPV6_MIN_MTU else None,
        )
        return index

    def index_of(self, name: str) -> int:
        for link in self.links.values():
            if link.name == name:
                return link.index
        raise KeyError(name)

    def by_name(self, name: str) -> FakeLink:
        return self.links[self.index_of(name)]

    def names(self) -> set[str]:
        return {link.name for link in self.links.values()}

    def mutations(self) -> list[Call]:
        return [c for c in self.calls if c.mutating]

    def forget_calls(self) -> None:
        self.calls.clear()

    # -- helpers ----------------------------------------------------------------

    def _new_index(self) -> int:
        index = self._next_index
        self._next_index += 1
        return index

    @staticmethod
    def _mac(index: int) -> str:
        return f"52:54:00:00:{index >> 8 & 0xFF:02x}:{index & 0xFF:02x}"

    def _find(self, name: str) -> FakeLink | None:
        return next((link for link in self.links.values() if link.name == name), None)

    def _require_free(self, name: str) -> None:
        if self._find(name) is not None:
            raise Conflict(f"create {name}: File exists", errno=17)

    def _require_index(self, index: int) -> FakeLink:
        link = self.links.get(index)
        if link is None:
            raise NotFound(f"link #{index}: No such device", errno=19)
        return link

    @staticmethod
    def _apply_bridge(current: BridgeSettings, options: BridgeOptions) -> BridgeSettings:
        return BridgeSettings(
            stp=current.stp if options.stp is None else options.stp,
            forward_delay=current.forward_delay
            if options.forward_delay is None
            else centiseconds(options.forward_delay),
            ageing_time=current.ageing_time
            if options.ageing_time is None
            else centiseconds(options.ageing_time),
            vlan_filtering=current.vlan_filtering
            if options.vlan_filtering is None
            else options.vlan_filtering,
        )

    async def _io(self, call: Call) -> None:
        """Log the call and yield to the loop, as a real netlink round trip would."""
        self.calls.append(call)
        await asyncio.sleep(0)

    # -- the NetBackend Protocol --------------------------------------------------

    async def get_link(self, name: str) -> Link | None:
        await self._io(Call("get_link", (name,)))
        link = self._find(name)
        return link.freeze() if link else None

    async def get_links(self, names: Sequence[str]) -> list[Link | None]:
        await self._io(Call("get_links", tuple(names)))
        found = [self._find(name) for name in names]
        return [link.freeze() if link else None for link in found]

    async def get_link_by_index(self, index: int) -> Link | None:
        await self._io(Call("get_link_by_index", (index,)))
        link = self.links.get(index)
        return link.freeze() if link else None

    async def list_links(self, *, exact: bool = True) -> list[Link]:
        await self._io(Call("list_links", ()))
        return [link.freeze() for link in sorted(self.links.values(), key=lambda x: x.index)]

    async def add_bridge(
        self, name: str, mtu: int | None, mac: str | None, options: BridgeOptions,
        *, ipv6: bool = False
    ) -> None:
        await self._io(Call("add_bridge", (name, mtu, mac, options, ipv6)))
        self._require_free(name)
        index = self._new_index()
        self.links[index] = FakeLink(
            index=index,
            name=name,
            kind="bridge",
            mtu=mtu or 1500,
            mac=mac or self._mac(index),
            alias=OWNER_ALIAS,
            bridge=self._apply_bridge(DEFAULT_BRIDGE, options),
            ipv6=None if (mtu or 1500) < IPV6_MIN_MTU else IPV6_ON if ipv6 else IPV6_OFF,
        )

    async def finish_creation(self, link: Link) -> None:
        await self._io(Call("finish_creation", (link,)))
        fake = self._require_index(link.index)
        if fake.alias is None or not fake.alias.startswith("vnetd:"):
            fake.alias = OWNER_ALIAS
        fake.group = 0

    async def add_tap(self, spec: TapSpec, change: LinkChange) -> Link:
        await self._io(Call("add_tap", (spec, change)))
        return await self._add_tap(spec, change)

    async def _add_tap(self, spec: TapSpec, change: LinkChange) -> Link:
        if self._find(spec.name) is not None:
            raise Conflict(f"create tap {spec.name}: Device or resource busy", errno=16)
        index = self._new_index()
        link = FakeLink(
            index=index,
            name=spec.name,
            kind="tap",
            mac=self._mac(index),
            alias=OWNER_ALIAS,
            tun=TunSettings(
                mode="tap",
                owner_uid=spec.owner_uid,
                group_gid=spec.group_gid,
                multi_queue=spec.multi_queue,
                vnet_hdr=spec.vnet_hdr,
                persistent=True,
            ),
        )
        # The kernel refuses a bad change before it creates anything: the real backend
        # creates the TAP on a descriptor it closes when the marking request fails.
        self.links[index] = link
        try:
            self._apply(link, change)
        except BaseException:
            del self.links[index]
            raise
        if not spec.ipv6:
            self.ipv6_disabled.add(spec.name)
        return link.freeze()

    async def add_taps(self, items: Sequence[tuple[TapSpec, LinkChange]],
                       stop_on_error: bool) -> list[Link | VnetdError | None]:
        await self._io(Call("add_taps", (tuple(items), stop_on_error)))
        out: list[Link | VnetdError | None] = [None] * len(items)
        for i, (spec, change) in enumerate(items):
            try:
                out[i] = await self._add_tap(spec, change)
            except VnetdError as exc:
                out[i] = exc
                if stop_on_error:
                    break
        return out

    async def set_tap_owner(self, spec: TapSpec) -> None:
        await self._io(Call("set_tap_owner", (spec,)))
        link = self._find(spec.name)
        if link is None or link.tun is None:
            raise NotFound(f"set owner of tap {spec.name}: No such device", errno=19)
        t = link.tun
        link.tun = TunSettings(
            mode=t.mode,
            owner_uid=spec.owner_uid,
            group_gid=spec.group_gid,
            multi_queue=t.multi_queue,
            vnet_hdr=t.vnet_hdr,
            persistent=t.persistent,
        )

    async def set_link(self, index: int, change: LinkChange) -> None:
        await self._io(Call("set_link", (index, change)))
        self._apply(self._require_index(index), change)

    async def change_link(self, index: int, change: LinkChange) -> Link:
        await self._io(Call("change_link", (index, change)))
        link = self._require_index(index)
        self._apply(link, change)
        return link.freeze()

    def _apply(self, link: FakeLink, change: LinkChange) -> None:
        index = link.index
        # Validate the whole request first: the kernel applies all of it or none.
        master = None
        if change.master:
            master = self.links.get(change.master)
            if master is None:  # do_set_master() answers EINVAL for an unknown master
                raise InvalidArgument(f"set link #{index}: Invalid argument", errno=22)
            if master.kind == "bridge" and link.kind == "bridge":
                raise Conflict(f"set link #{index}: Too many levels of symbolic links", errno=40)
            if master.index == index:
                raise Conflict(f"set link #{index}: Device or resource busy", errno=16)
        if change.mtu is not None and not 68 <= change.mtu <= 65535:
            raise InvalidArgument(f"set link #{index}: Invalid argument", errno=22)
        if change.bridge is not None and not change.bridge.is_empty() and link.bridge is None:
            raise InvalidArgument(f"set link #{index}: Invalid argument", errno=22)
        if change.alias is not None:
            link.alias = change.alias
        if change.mtu is not None:
            if change.mtu < IPV6_MIN_MTU:
                link.ipv6 = None
            elif link.ipv6 is None:
                link.ipv6 = IPV6_ON  # made anew, with the defaults
            link.mtu = change.mtu
        if change.mac is not None:
            link.mac = change.mac
        if change.master is not None:
            link.master = master.index if master else None
        if change.up is not None:
            if change.up and not link.up:
                link.ipv6_when_up = link.ipv6
            link.up = change.up
        if change.group is not None:
            link.group = change.group
        if change.bridge is not None and link.bridge is not None:
            link.bridge = self._apply_bridge(link.bridge, change.bridge)

    async def delete_link(self, index: int) -> None:
        await self._io(Call("delete_link", (index,)))
        self._require_index(index)
        del self.links[index]
        for link in self.links.values():
            if link.master == index:
                link.master = None
        if self.overlay_backend is not None:
            self.overlay_backend.forget(index)

    async def disable_ipv6(self, name: str) -> None:
        await self._io(Call("disable_ipv6", (name,)))
        self.ipv6_disabled.add(name)

    async def ipv6_states(self, names: Sequence[str]) -> list[Ipv6State | None]:
        await self._io(Call("ipv6_states", tuple(names)))
        found = [self._find(name) for name in names]
        return [link.ipv6 if link else None for link in found]

    async def set_ipv6(self, link: Link, enabled: bool) -> None:
        await self._io(Call("set_ipv6", (link.name, enabled)))
        fake = self._require_index(link.index)
        if fake.ipv6 is None:
            raise Unsupported(f"{link.name}: no IPv6 state (MTU {fake.mtu})", name=link.name)
        fake.ipv6 = IPV6_ON if enabled else IPV6_OFF

    async def default_route_interfaces(self) -> set[str]:
        await self._io(Call("default_route_interfaces", ()))
        return set(self.default_routes)

    async def features(self) -> dict[str, bool | str]:
        await self._io(Call("features", ()))
        return dict(self.kernel_features)

    def overlay(self) -> OverlayBackend:
        if self.overlay_backend is None:
            from tests.unit.fake_overlay import FakeOverlay
            self.overlay_backend = FakeOverlay(self)
        return self.overlay_backend

    async def close(self) -> None:
        await self._io(Call("close", ()))
        self.closed = True


def _satisfies_protocol(net: FakeNet) -> NetBackend:
    return net  # mypy checks that FakeNet is a NetBackend


class ExplodingNet(FakeNet):
    """A backend with a bug: every link lookup fails with an exception nobody expects."""

    async def get_link(self, name: str) -> Link | None:
        raise RuntimeError("boom")

    async def get_links(self, names: Sequence[str]) -> list[Link | None]:
        raise RuntimeError("boom")
