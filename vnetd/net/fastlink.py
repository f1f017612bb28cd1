"""A small raw rtnetlink client for the hot link operations, on the event loop.

Why not pyroute2 here: decoding one RTM_NEWLINK into pyroute2's message objects
costs about 0.6 ms of Python, several times the kernel's own work, and every
request waits for its answer before the next one is sent. This module builds
the few requests vnetd's hot path needs (get, set, delete, dump of links) with
`struct`, decodes only the attributes `Link` carries, and keeps many requests
in flight on one socket: each is sent at once (the kernel runs rtnetlink
requests synchronously inside sendmsg) and its answer is matched by sequence
number when the socket becomes readable.

It must not grow into a general netlink library: anything rare (routes,
features) stays on pyroute2 in `netlink.py`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from dataclasses import dataclass, field

from vnetd.net.model import BridgeOptions, BridgeSettings, Link, LinkChange, TunSettings

# netlink / rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h)
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NETLINK_EXT_ACK = 11
NETLINK_CAP_ACK = 10
SOL_NETLINK = 270

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_GROUP = 27
IFLA_EXT_MASK = 29
IFLA_CARRIER = 33
IFLA_CARRIER_CHANGES = 35
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_BR_FORWARD_DELAY = 1
IFLA_BR_AGEING_TIME = 4
IFLA_BR_STP_STATE = 5
IFLA_BR_VLAN_FILTERING = 7
IFLA_TUN_OWNER = 1
IFLA_TUN_GROUP = 2
IFLA_TUN_TYPE = 3
IFLA_TUN_VNET_HDR = 5
IFLA_TUN_PERSIST = 6
IFLA_TUN_MULTI_QUEUE = 7
RTEXT_FILTER_VF = 1 << 0
RTEXT_FILTER_SKIP_STATS = 1 << 3
NLA_F_NESTED = 1 << 15
NLA_TYPE_MASK = ~((1 << 15) | (1 << 14))
IFF_UP = 0x1
IFF_TUN = 1
IFF_TAP = 2
_CENTI = 100.0

OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_NLA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ERR = struct.Struct("=i")

MAX_IN_FLIGHT = 256
"""Requests sent but not answered yet. Answers queue in our receive buffer until
the loop reads them; bounding them keeps that buffer from overflowing (ENOBUFS)."""
RCVBUF_BYTES = 8 * 1024 * 1024
RECV_BYTES = 256 * 1024


class NetlinkRequestError(OSError):
    """The kernel answered a request with an error (errno is set)."""


class DumpInterrupted(Exception):
    """The link table changed during a dump (NLM_F_DUMP_INTR): take it again."""


# ---------------------------------------------------------------- encoding
def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, _U32.pack(value))


def _u8(kind: int, value: int) -> bytes:
    return _attr(kind, bytes((value,)))


def _str(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _mac(value: str) -> bytes:
    return bytes(int(part, 16) for part in value.split(":"))


def bridge_data(options: BridgeOptions) -> bytes:
    out = b""
    if options.forward_delay is not None:
        out += _u32(IFLA_BR_FORWARD_DELAY, round(options.forward_delay * _CENTI))
    if options.ageing_time is not None:
        out += _u32(IFLA_BR_AGEING_TIME, round(options.ageing_time * _CENTI))
    if options.stp is not None:
        out += _u32(IFLA_BR_STP_STATE, int(options.stp))
    if options.vlan_filtering is not None:
        out += _u8(IFLA_BR_VLAN_FILTERING, int(options.vlan_filtering))
    return out


def _linkinfo(kind: str, data: bytes) -> bytes:
    inner = _str(IFLA_INFO_KIND, kind)
    if data:
        inner += _attr(IFLA_INFO_DATA | NLA_F_NESTED, data)
    return _attr(IFLA_LINKINFO | NLA_F_NESTED, inner)


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(0, 0, index, flags, change)


def change_body(index: int, change: LinkChange) -> bytes:
    """RTM_NEWLINK (set) for one existing link: every non-None field of `change`."""
    flags = change_mask = 0
    if change.up is not None:
        change_mask = IFF_UP
        flags = IFF_UP if change.up else 0
    body = ifinfo(index, flags, change_mask)
    if change.alias is not None:
        # As iproute2 does: no terminating NUL (the kernel stores nla_len bytes).
        body += _attr(IFLA_IFALIAS, change.alias.encode())
    if change.mtu is not None:
        body += _u32(IFLA_MTU, change.mtu)
    if change.mac is not None:
        body += _attr(IFLA_ADDRESS, _mac(change.mac))
    if change.master is not None:
        body += _u32(IFLA_MASTER, change.master)
    if change.bridge is not None and not change.bridge.is_empty():
        body += _linkinfo("bridge", bridge_data(change.bridge))
    return body


def new_bridge_body(name: str, mtu: int | None, mac: str | None,
                    options: BridgeOptions) -> bytes:
    body = ifinfo() + _str(IFLA_IFNAME, name)
    if mtu is not None:
        body += _u32(IFLA_MTU, mtu)
    if mac is not None:
        body += _attr(IFLA_ADDRESS, _mac(mac))
    return body + _linkinfo("bridge", bridge_data(options))


def get_by_name_body(name: str) -> bytes:
    return (ifinfo() + _str(IFLA_IFNAME, name)
            + _u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))


def get_by_index_body(index: int) -> bytes:
    return ifinfo(index) + _u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)


def dump_body() -> bytes:
    return ifinfo() + _u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)


def group_body(index: int, group: int) -> bytes:
    return ifinfo(index) + _u32(IFLA_GROUP, group)


def delete_group_body(group: int) -> bytes:
    return ifinfo() + _u32(IFLA_GROUP, group)


# ---------------------------------------------------------------- decoding
def _attrs(data: bytes | memoryview, start: int, end: int) -> dict[int, memoryview]:
    """Top-level attributes between start and end (the last one of a type wins)."""
    out: dict[int, memoryview] = {}
    view = data if isinstance(data, memoryview) else memoryview(data)
    unpack = _NLA.unpack_from
    pos = start
    while pos + 4 <= end:
        length, kind = unpack(view, pos)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = view[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return out


def _get_u32(attrs: dict[int, memoryview], kind: int) -> int | None:
    value = attrs.get(kind)
    return _U32.unpack_from(value)[0] if value is not None and len(value) >= 4 else None


def _get_u8(attrs: dict[int, memoryview], kind: int) -> int | None:
    value = attrs.get(kind)
    return value[0] if value is not None and len(value) >= 1 else None


def _get_str(attrs: dict[int, memoryview], kind: int) -> str | None:
    value = attrs.get(kind)
    if value is None:
        return None
    return bytes(value).split(b"\0", 1)[0].decode(errors="replace")


def parse_link_message(data: bytes | memoryview, offset: int = 0) -> Link:
    """Decode one RTM_NEWLINK (nlmsghdr at `offset`) into a Link."""
    length = _NLMSGHDR.unpack_from(data, offset)[0]
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, offset + 16)
    attrs = _attrs(data, offset + 32, offset + length)
    kind = "device"
    bridge = tun = None
    info = attrs.get(IFLA_LINKINFO)
    if info is not None:
        nested = _attrs(info, 0, len(info))
        kind = _get_str(nested, IFLA_INFO_KIND) or "device"
        data_attr = nested.get(IFLA_INFO_DATA)
        if data_attr is not None:
            d = _attrs(data_attr, 0, len(data_attr))
            if kind == "bridge":
                bridge = BridgeSettings(
                    stp=bool(_get_u32(d, IFLA_BR_STP_STATE)),
                    forward_delay=(_get_u32(d, IFLA_BR_FORWARD_DELAY) or 0) / _CENTI,
                    ageing_time=(_get_u32(d, IFLA_BR_AGEING_TIME) or 0) / _CENTI,
                    vlan_filtering=bool(_get_u8(d, IFLA_BR_VLAN_FILTERING)),
                )
            elif kind == "tun":
                kind = "tap" if _get_u8(d, IFLA_TUN_TYPE) == IFF_TAP else "tun"
                tun = TunSettings(
                    mode=kind,
                    owner_uid=_get_u32(d, IFLA_TUN_OWNER),
                    group_gid=_get_u32(d, IFLA_TUN_GROUP),
                    multi_queue=bool(_get_u8(d, IFLA_TUN_MULTI_QUEUE)),
                    vnet_hdr=bool(_get_u8(d, IFLA_TUN_VNET_HDR)),
                    persistent=bool(_get_u8(d, IFLA_TUN_PERSIST)),
                )
    name = _get_str(attrs, IFLA_IFNAME) or ""
    if kind == "device" and name == "lo":
        kind = "loopback"
    address = attrs.get(IFLA_ADDRESS)
    operstate = _get_u8(attrs, IFLA_OPERSTATE)
    master = _get_u32(attrs, IFLA_MASTER)
    return Link(
        index=index,
        name=name,
        kind=kind,
        mtu=_get_u32(attrs, IFLA_MTU) or 0,
        mac=":".join(f"{b:02x}" for b in address) if address is not None else None,
        up=bool(flags & IFF_UP),
        oper_state=(OPERSTATES[operstate] if operstate is not None
                    and operstate < len(OPERSTATES) else "unknown"),
        carrier=bool(_get_u8(attrs, IFLA_CARRIER)),
        carrier_changes=_get_u32(attrs, IFLA_CARRIER_CHANGES) or 0,
        master=master or None,
        alias=_get_str(attrs, IFLA_IFALIAS),
        bridge=bridge,
        tun=tun,
    )


def blocking_request(sock: socket.socket, msg_type: int, flags: int, body: bytes) -> None:
    """Send one request on a blocking socket and wait for its acknowledgement.

    For requests that hold the kernel for long (a device deletion waits for an RCU
    grace period, ~18 ms): run on a worker thread, they do not stall the event loop.
    """
    header = _NLMSGHDR.pack(16 + len(body), msg_type, flags | NLM_F_REQUEST | NLM_F_ACK, 1, 0)
    sock.send(header + body)
    while True:
        data = sock.recv(RECV_BYTES)
        pos = 0
        while pos + 16 <= len(data):
            length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, pos)
            if length < 16:
                break
            if kind == NLMSG_ERROR and seq == 1:
                code = -_ERR.unpack_from(data, pos + 16)[0]
                if code:
                    raise NetlinkRequestError(code, os.strerror(code))
                return
            pos += (length + 3) & ~3


# ---------------------------------------------------------------- the socket
@dataclass
class _Pending:
    future: asyncio.Future[list[Link] | None]
    dump: bool
    links: list[Link] = field(default_factory=list)
    interrupted: bool = False


class FastLink:
    """Pipelined rtnetlink requests on one socket, answered on the event loop.

    `sock` must already be in the target namespace (a netlink socket keeps the
    namespace it was created in); `FastLink` takes it over and closes it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF_BYTES)  # SO_RCVBUFFORCE (root)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        # Errors come back with only the request's header, not its whole body.
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.bind((0, 0))
        self._pid = sock.getsockname()[0]
        self._seq = 0
        self._pending: dict[int, _Pending] = {}
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @staticmethod
    def open_socket() -> socket.socket:
        """Create the rtnetlink socket (call it on a thread inside the namespace)."""
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)

    def _attach(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            loop.add_reader(self._sock.fileno(), self._on_readable)
        elif self._loop is not loop:
            raise RuntimeError("FastLink is bound to another event loop")

    async def request(self, msg_type: int, flags: int, body: bytes) -> list[Link] | None:
        """Send one request; returns the links answered (GET, dump) or None (ack)."""
        if self._closed:
            raise NetlinkRequestError(errno.EBADF, "netlink socket closed")
        self._attach()
        async with self._slots:
            if self._loop is None:  # _attach() sets it
                raise NetlinkRequestError(errno.EBADF, "netlink socket not attached")
            self._seq = seq = (self._seq + 1) & 0xFFFFFFFF or 1
            dump = (flags & NLM_F_DUMP) == NLM_F_DUMP and msg_type == RTM_GETLINK
            pending = _Pending(self._loop.create_future(), dump)
            self._pending[seq] = pending
            header = _NLMSGHDR.pack(16 + len(body), msg_type, flags | NLM_F_REQUEST, seq, 0)
            try:
                self._sock.send(header + body)
            except OSError:
                del self._pending[seq]
                raise
            # The kernel has already done the work; the answer waits in our buffer.
            try:
                return await pending.future
            finally:
                self._pending.pop(seq, None)

    def _fail_all(self, exc: BaseException) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(exc)
        self._pending.clear()

    def _on_readable(self) -> None:
        while True:
            try:
                data = self._sock.recv(RECV_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:
                # ENOBUFS: answers were dropped; nobody can tell which. Fail all
                # requests in flight (temporary errors: the jobs can be resent).
                self._fail_all(NetlinkRequestError(exc.errno or errno.EIO,
                                                   f"netlink socket: {exc.strerror}"))
                if exc.errno == errno.ENOBUFS:
                    continue
                return
            self._dispatch(data)

    def _dispatch(self, data: bytes) -> None:
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos + 16 <= end:
            length, msg_type, flags, seq, _pid = _NLMSGHDR.unpack_from(view, pos)
            if length < 16:
                break
            pending = self._pending.get(seq)
            if pending is not None and not pending.future.done():
                self._one(pending, view, pos, length, msg_type, flags)
            pos += (length + 3) & ~3

    @staticmethod
    def _one(pending: _Pending, view: memoryview, pos: int, length: int, msg_type: int,
             flags: int) -> None:
        if flags & NLM_F_DUMP_INTR:
            pending.interrupted = True
        if msg_type == NLMSG_ERROR:
            code = -_ERR.unpack_from(view, pos + 16)[0]
            if code:
                pending.future.set_exception(NetlinkRequestError(code, os.strerror(code)))
            else:
                pending.future.set_result(pending.links if pending.dump else None)
        elif msg_type == NLMSG_DONE:
            if pending.interrupted:
                pending.future.set_exception(DumpInterrupted())
            else:
                pending.future.set_result(pending.links)
        elif msg_type == RTM_NEWLINK:
            pending.links.append(parse_link_message(view, pos))
            if not pending.dump and not flags & NLM_F_MULTI:
                pending.future.set_result(pending.links)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._fail_all(NetlinkRequestError(errno.EBADF, "netlink socket closed"))
        self._sock.close()

    # ------------------------------------------------------------ the operations
    async def get_link(self, name: str) -> Link:
        links = await self.request(RTM_GETLINK, 0, get_by_name_body(name))
        if not links:  # the kernel answers ENODEV, never an empty list; but be explicit
            raise NetlinkRequestError(errno.ENODEV, f"no link named {name}")
        return links[0]

    async def get_link_by_index(self, index: int) -> Link:
        links = await self.request(RTM_GETLINK, 0, get_by_index_body(index))
        if not links:
            raise NetlinkRequestError(errno.ENODEV, f"no link #{index}")
        return links[0]

    async def dump_links(self) -> list[Link]:
        return await self.request(RTM_GETLINK, NLM_F_DUMP, dump_body()) or []

    async def set_link(self, index: int, change: LinkChange) -> None:
        await self.request(RTM_NEWLINK, NLM_F_ACK, change_body(index, change))

    async def add_bridge(self, name: str, mtu: int | None, mac: str | None,
                         options: BridgeOptions) -> None:
        await self.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                           new_bridge_body(name, mtu, mac, options))

    async def delete_link(self, index: int) -> None:
        await self.request(RTM_DELLINK, NLM_F_ACK, ifinfo(index))

    async def set_group(self, index: int, group: int) -> None:
        await self.request(RTM_NEWLINK, NLM_F_ACK, group_body(index, group))

    async def delete_group(self, group: int) -> None:
        await self.request(RTM_DELLINK, NLM_F_ACK, delete_group_body(group))
