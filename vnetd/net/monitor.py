"""The event watcher's netlink socket: link and address notifications, decoded cheaply.

A raw AF_NETLINK socket, opened inside the target namespace, bound to the link
and address multicast groups, separate from the command socket (net/netlink.py).
Decoding is done here from the raw bytes and reads only the attributes vnetd
reports: pyroute2's full decode costs about half a millisecond per RTM_NEWLINK,
which would be most of the latency budget of the event stream.

This module does no I/O policy: it reads what is there, never blocks, and
reports loss (ENOBUFS) to the caller, who decides to resync. It must not hide
loss (no NETLINK_NO_ENOBUFS).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Literal

from vnetd.net.model import BridgeSettings, Link, TunSettings
from vnetd.net.netns import NamespaceWorker

NETLINK_ROUTE = 0
SO_RCVBUFFORCE = 33
SOL_NETLINK = 270
NETLINK_LISTEN_ALL_NSID = 8

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300

IFF_UP = 0x1

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_CARRIER = 16, 18, 20, 33
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_BR_FORWARD_DELAY, IFLA_BR_AGEING_TIME, IFLA_BR_STP_STATE, IFLA_BR_VLAN_FILTERING = 1, 4, 5, 7
IFLA_TUN_OWNER, IFLA_TUN_GROUP, IFLA_TUN_TYPE = 1, 2, 3
IFLA_TUN_VNET_HDR, IFLA_TUN_PERSIST, IFLA_TUN_MULTI_QUEUE = 5, 6, 7
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL = 1, 2, 3
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")
FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}
_CENTI = 100.0

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """RTM_NEWLINK / RTM_DELLINK: the link's full state as the kernel sent it."""

    deleted: bool
    link: Link


@dataclass(frozen=True, slots=True)
class Address:
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


@dataclass(frozen=True, slots=True)
class AddressEvent:
    deleted: bool
    address: Address


@dataclass(frozen=True, slots=True)
class Control:
    """End of a dump (done) or an error answer to one of our requests."""

    kind: Literal["done", "error", "interrupted"]
    seq: int
    error: int = 0
    interrupted: bool = False
    """NLM_F_DUMP_INTR: the table changed while it was dumped."""


Message = LinkEvent | AddressEvent | Control


def _attrs(buf: bytes | bytearray | memoryview, start: int, end: int,
           wanted: frozenset[int] | None = None) -> dict[int, memoryview]:
    """rtattr TLVs in buf[start:end] by type (the last one of a type wins).

    With `wanted`, only those types are sliced out: an RTM_NEWLINK carries some
    fifty attributes (statistics, queues, ...) and vnetd reads about ten.
    """
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    out: dict[int, memoryview] = {}
    unpack = _RTATTR.unpack_from
    pos = start
    while pos + 4 <= end:
        length, kind = unpack(mv, pos)
        if length < 4 or pos + length > end:
            break
        kind &= NLA_TYPE_MASK
        if wanted is None or kind in wanted:
            out[kind] = mv[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return out


_LINK_ATTRS = frozenset({IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_OPERSTATE,
                         IFLA_LINKINFO, IFLA_IFALIAS, IFLA_CARRIER})


def _str(value: memoryview) -> str:
    return bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace")


def _u32(value: memoryview | None) -> int | None:
    return None if value is None or len(value) < 4 else int(_U32.unpack_from(value)[0])


def _u8(value: memoryview | None) -> int | None:
    return None if value is None or len(value) < 1 else int(value[0])


def _mac(value: memoryview | None) -> str | None:
    if value is None or len(value) == 0:
        return None
    return ":".join(f"{b:02x}" for b in bytes(value))


def decode_link(buf: bytes | bytearray | memoryview, start: int, end: int) -> Link:
    """One ifinfomsg (header at `start`, attributes up to `end`) into a Link.

    Gives what net/netlink.py's parse_link gives from pyroute2's decode.
    """
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(buf, start)
    at = _attrs(buf, start + _IFINFOMSG.size, end, _LINK_ATTRS)
    name = _str(at[IFLA_IFNAME]) if IFLA_IFNAME in at else ""
    kind = "device"
    bridge = tun = None
    info = at.get(IFLA_LINKINFO)
    if info is not None:
        nested = _attrs(info, 0, len(info))
        if IFLA_INFO_KIND in nested:
            kind = _str(nested[IFLA_INFO_KIND]) or "device"
        data_raw = nested.get(IFLA_INFO_DATA)
        data = _attrs(data_raw, 0, len(data_raw)) if data_raw is not None else None
        if kind == "bridge" and data is not None:
            bridge = BridgeSettings(
                stp=bool(_u32(data.get(IFLA_BR_STP_STATE))),
                forward_delay=(_u32(data.get(IFLA_BR_FORWARD_DELAY)) or 0) / _CENTI,
                ageing_time=(_u32(data.get(IFLA_BR_AGEING_TIME)) or 0) / _CENTI,
                vlan_filtering=bool(_u8(data.get(IFLA_BR_VLAN_FILTERING))),
            )
        elif kind == "tun" and data is not None:
            kind = "tap" if _u8(data.get(IFLA_TUN_TYPE)) == 2 else "tun"
            tun = TunSettings(
                mode=kind,
                owner_uid=_u32(data.get(IFLA_TUN_OWNER)),
                group_gid=_u32(data.get(IFLA_TUN_GROUP)),
                multi_queue=bool(_u8(data.get(IFLA_TUN_MULTI_QUEUE))),
                vnet_hdr=bool(_u8(data.get(IFLA_TUN_VNET_HDR))),
                persistent=bool(_u8(data.get(IFLA_TUN_PERSIST))),
            )
    if kind == "device" and name == "lo":
        kind = "loopback"
    oper = _u8(at.get(IFLA_OPERSTATE))
    master = _u32(at.get(IFLA_MASTER))
    alias = _str(at[IFLA_IFALIAS]) if IFLA_IFALIAS in at else None
    return Link(
        index=index,
        name=name,
        kind=kind,
        mtu=_u32(at.get(IFLA_MTU)) or 0,
        mac=_mac(at.get(IFLA_ADDRESS)),
        up=bool(flags & IFF_UP),
        oper_state=OPERSTATES[oper] if oper is not None and oper < len(OPERSTATES) else "unknown",
        carrier=bool(_u8(at.get(IFLA_CARRIER))),
        master=master or None,
        alias=alias or None,
        bridge=bridge,
        tun=tun,
    )


def decode_address(buf: bytes | bytearray | memoryview, start: int, end: int) -> Address | None:
    family, prefixlen, _flags, scope, index = _IFADDRMSG.unpack_from(buf, start)
    fam = FAMILIES.get(family)
    if fam is None:
        return None
    at = _attrs(buf, start + _IFADDRMSG.size, end)
    raw = at.get(IFA_LOCAL) if IFA_LOCAL in at else at.get(IFA_ADDRESS)
    if raw is None:
        return None
    label = at.get(IFA_LABEL)
    return Address(index=index, family=fam, address=socket.inet_ntop(family, bytes(raw)),
                   prefixlen=prefixlen, scope=scope,
                   label=_str(label) if label is not None else None)


def decode(buf: bytes | bytearray | memoryview, size: int | None = None) -> list[Message]:
    """Every message of one netlink datagram that vnetd cares about, in order."""
    end_all = len(buf) if size is None else size
    out: list[Message] = []
    pos = 0
    while pos + _NLMSGHDR.size <= end_all:
        length, mtype, flags, seq, _pid = _NLMSGHDR.unpack_from(buf, pos)
        if length < _NLMSGHDR.size or pos + length > end_all:
            break
        body, end = pos + _NLMSGHDR.size, pos + length
        if mtype in (RTM_NEWLINK, RTM_DELLINK):
            # AF_BRIDGE messages on the link group are bridge *port* notices (a port
            # joining or leaving a bridge sends RTM_DELLINK/AF_BRIDGE while the link
            # itself stays): the link's own AF_UNSPEC message tells its state.
            if buf[body] != socket.AF_BRIDGE:
                out.append(LinkEvent(mtype == RTM_DELLINK, decode_link(buf, body, end)))
        elif mtype in (RTM_NEWADDR, RTM_DELADDR):
            addr = decode_address(buf, body, end)
            if addr is not None:
                out.append(AddressEvent(mtype == RTM_DELADDR, addr))
        elif mtype == NLMSG_DONE:
            out.append(Control("done", seq, interrupted=bool(flags & NLM_F_DUMP_INTR)))
        elif mtype == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", buf, body)
            if code != 0:
                out.append(Control("error", seq, error=-code))
        if flags & NLM_F_DUMP_INTR and mtype != NLMSG_DONE:
            out.append(Control("interrupted", seq, interrupted=True))
        pos += (length + 3) & ~3
    return out


def dump_request(mtype: int, seq: int) -> bytes:
    """An RTM_GETLINK / RTM_GETADDR dump request (all families)."""
    if mtype == RTM_GETADDR:
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    else:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), mtype, NLM_F_REQUEST | NLM_F_DUMP,
                            seq, 0)
    return header + body


class Overrun(Exception):
    """The kernel dropped notifications for this socket (ENOBUFS): resync."""


def _open(rcvbuf: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        try:  # FORCE (CAP_NET_ADMIN) lets the size exceed net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, GROUPS))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class MonitorSocket:
    """One subscribed socket; reopen() gives a fresh one (after an overrun)."""

    RECV_BYTES = 1 << 18

    def __init__(self, netns: str | None, rcvbuf: int) -> None:
        self.netns = netns or None
        self.rcvbuf = rcvbuf
        self._worker = NamespaceWorker(self.netns)
        self._sock: socket.socket | None = None
        self._buf = bytearray(self.RECV_BYTES)
        self._seq = 0

    async def open(self) -> int:
        """(Re)open the socket inside the namespace; returns its file descriptor."""
        self.close_socket()
        # The socket keeps the namespace of the thread that created it.
        self._sock = await self._worker.run(_open, self.rcvbuf)
        return self._sock.fileno()

    @property
    def fileno(self) -> int:
        if self._sock is None:
            raise OSError(errno.EBADF, "the monitor socket is not open")
        return self._sock.fileno()

    @property
    def effective_rcvbuf(self) -> int:
        if self._sock is None:
            raise OSError(errno.EBADF, "the monitor socket is not open")
        return int(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def request_dump(self, what: Literal["link", "addr"]) -> int:
        """Send a dump request on this socket; its answers arrive in order with notifications."""
        if self._sock is None:
            raise OSError(errno.EBADF, "the monitor socket is not open")
        self._seq += 1
        self._sock.send(dump_request(RTM_GETLINK if what == "link" else RTM_GETADDR, self._seq))
        return self._seq

    def read(self, max_datagrams: int = 256) -> list[Message]:
        """What is queued now (up to max_datagrams datagrams); never blocks.

        Raises Overrun when the kernel reports lost notifications.
        """
        if self._sock is None:
            raise OSError(errno.EBADF, "the monitor socket is not open")
        out: list[Message] = []
        buf = self._buf
        for _ in range(max_datagrams):
            try:
                n = self._sock.recv_into(buf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise Overrun(os.strerror(exc.errno)) from exc
                raise
            if n == 0:
                break
            out.extend(decode(buf, n))
        return out

    def close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        self.close_socket()
        self._worker.close()
