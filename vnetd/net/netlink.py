"""NetBackend on the real kernel: pyroute2's AsyncIPRoute plus the namespace worker.

The only module of vnetd that imports pyroute2. rtnetlink requests go through
one AsyncIPRoute socket opened inside the target namespace once at start;
TAP creation and sysctls go through the namespace worker thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError

from vnetd.contract.errors import (
    Conflict,
    Forbidden,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unsupported,
    VnetdError,
)
from vnetd.net import tun
from vnetd.net.model import BridgeOptions, BridgeSettings, Link, LinkChange, TapSpec, TunSettings
from vnetd.net.netns import NamespaceWorker

T = TypeVar("T")
IFF_UP = 0x1
DUMP_RETRIES = 5
_CENTI = 100.0  # the kernel keeps bridge timers in centiseconds (USER_HZ)


def error_from_errno(code: int, what: str) -> VnetdError:
    """Name a kernel errno in the contract's terms (EEXIST is a conflict, and so on)."""
    text = f"{what}: {os.strerror(code)}"
    if code in (errno.ENODEV, errno.ENOENT, errno.ENXIO):
        return NotFound(text, errno=code)
    if code in (errno.EEXIST, errno.EBUSY, errno.ELOOP, errno.ENOTEMPTY):
        return Conflict(text, errno=code)
    if code in (errno.EPERM, errno.EACCES):
        return Forbidden(text, errno=code)
    if code in (errno.EINVAL, errno.ERANGE, errno.EADDRNOTAVAIL):
        return InvalidArgument(text, errno=code)
    if code in (errno.EOPNOTSUPP, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
        return Unsupported(text, errno=code)
    if code in (errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN, errno.EINTR):
        return Unavailable(text, errno=code)
    return Internal(text, errno=code)


def parse_link(msg: Any) -> Link:
    """Turn one RTM_NEWLINK message into a Link."""
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "device"
    data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    bridge = tun_settings = None
    if kind == "bridge" and data is not None:
        bridge = BridgeSettings(
            stp=bool(data.get("IFLA_BR_STP_STATE")),
            forward_delay=(data.get("IFLA_BR_FORWARD_DELAY") or 0) / _CENTI,
            ageing_time=(data.get("IFLA_BR_AGEING_TIME") or 0) / _CENTI,
            vlan_filtering=bool(data.get("IFLA_BR_VLAN_FILTERING")),
        )
    elif kind == "tun" and data is not None:
        mode = "tap" if data.get("IFLA_TUN_TYPE") == 2 else "tun"
        kind = mode
        tun_settings = TunSettings(
            mode=mode,
            owner_uid=data.get("IFLA_TUN_OWNER"),
            group_gid=data.get("IFLA_TUN_GROUP"),
            multi_queue=bool(data.get("IFLA_TUN_MULTI_QUEUE")),
            vnet_hdr=bool(data.get("IFLA_TUN_VNET_HDR")),
            persistent=bool(data.get("IFLA_TUN_PERSIST")),
        )
    elif msg.get("ifname") == "lo":
        kind = "loopback"
    master = msg.get("master")
    return Link(
        index=int(msg["index"]),
        name=msg.get("ifname"),
        kind=kind,
        mtu=int(msg.get("mtu") or 0),
        mac=msg.get("address"),
        up=bool(msg["flags"] & IFF_UP),
        oper_state=str(msg.get("operstate") or "UNKNOWN").lower(),
        carrier=bool(msg.get("carrier")),
        master=int(master) if master else None,
        alias=msg.get("ifalias"),
        bridge=bridge,
        tun=tun_settings,
    )


def _bridge_attrs(options: BridgeOptions) -> dict[str, int]:
    attrs: dict[str, int] = {}
    if options.stp is not None:
        attrs["br_stp_state"] = int(options.stp)
    if options.forward_delay is not None:
        attrs["br_forward_delay"] = round(options.forward_delay * _CENTI)
    if options.ageing_time is not None:
        attrs["br_ageing_time"] = round(options.ageing_time * _CENTI)
    if options.vlan_filtering is not None:
        attrs["br_vlan_filtering"] = int(options.vlan_filtering)
    return attrs


class NetlinkBackend:
    """NetBackend for the kernel, working inside `netns` (None: our own namespace)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns or None
        self._worker = NamespaceWorker(self.netns)
        self._ipr = AsyncIPRoute(netns=self.netns) if self.netns else AsyncIPRoute()

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except NetlinkError as exc:
            raise error_from_errno(exc.code, what) from exc

    async def _worker_call(self, what: str, fn: Callable[..., T], *args: object) -> T:
        try:
            return await self._worker.run(fn, *args)
        except OSError as exc:
            if exc.errno is None:
                raise
            raise error_from_errno(exc.errno, what) from exc

    async def get_link(self, name: str) -> Link | None:
        try:
            msgs = await self._ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise error_from_errno(exc.code, f"get link {name}") from exc
        return parse_link(msgs[0])

    async def get_link_by_index(self, index: int) -> Link | None:
        try:
            msgs = await self._ipr.link("get", index=index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise error_from_errno(exc.code, f"get link #{index}") from exc
        return parse_link(msgs[0])

    async def list_links(self) -> list[Link]:
        for _ in range(DUMP_RETRIES):
            try:
                return [parse_link(m) async for m in await self._ipr.link("dump")]
            except NetlinkDumpInterrupted:
                continue  # the table changed under the dump: take it again
            except NetlinkError as exc:
                raise error_from_errno(exc.code, "dump links") from exc
        raise Unavailable("link dump kept being interrupted by concurrent changes")

    async def add_bridge(self, name: str, mtu: int | None, mac: str | None,
                         options: BridgeOptions) -> None:
        attrs: dict[str, Any] = {"ifname": name, "kind": "bridge", **_bridge_attrs(options)}
        if mtu is not None:
            attrs["mtu"] = mtu
        if mac is not None:
            attrs["address"] = mac
        await self._call(f"create bridge {name}", lambda: self._ipr.link("add", **attrs))

    async def add_tap(self, spec: TapSpec) -> None:
        await self._worker_call(f"create tap {spec.name}", tun.create_tap, spec)

    async def set_tap_owner(self, spec: TapSpec) -> None:
        await self._worker_call(f"set owner of tap {spec.name}", tun.set_owner, spec)

    async def set_link(self, index: int, change: LinkChange) -> None:
        attrs: dict[str, Any] = {"index": index}
        if change.alias is not None:
            attrs["ifalias"] = change.alias
        if change.mtu is not None:
            attrs["mtu"] = change.mtu
        if change.mac is not None:
            attrs["address"] = change.mac
        if change.master is not None:
            attrs["master"] = change.master
        if change.up is not None:
            attrs["state"] = "up" if change.up else "down"
        if change.bridge is not None and not change.bridge.is_empty():
            attrs["kind"] = "bridge"
            attrs.update(_bridge_attrs(change.bridge))
        await self._call(f"set link #{index}", lambda: self._ipr.link("set", **attrs))

    async def delete_link(self, index: int) -> None:
        await self._call(f"delete link #{index}", lambda: self._ipr.link("del", index=index))

    async def disable_ipv6(self, name: str) -> None:
        await self._worker_call(f"disable IPv6 on {name}", tun.disable_ipv6, name)

    async def default_route_interfaces(self) -> set[str]:
        indexes: set[int] = set()
        for family in (2, 10):  # AF_INET, AF_INET6
            try:
                async for route in await self._ipr.route("dump", family=family, dst_len=0):
                    if route.get("dst_len", 0) == 0 and route.get("table") in (254, None):
                        oif = route.get("oif")
                        if oif:
                            indexes.add(int(oif))
                        for hop in route.get("multipath") or []:
                            indexes.add(int(hop["oif"]))
            except NetlinkError as exc:
                raise error_from_errno(exc.code, "dump routes") from exc
        names = set()
        for index in indexes:
            link = await self.get_link_by_index(index)
            if link is not None:
                names.add(link.name)
        return names

    async def features(self) -> dict[str, bool | str]:
        return {
            "bridge": await self._worker.run(os.path.isdir, "/sys/module/bridge"),
            "tun_device": await self._worker.run(tun.tun_usable),
            "netns": self.netns or "",
        }

    async def close(self) -> None:
        self._ipr.close()
        self._worker.close()
