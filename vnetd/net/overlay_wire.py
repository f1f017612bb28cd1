"""rtnetlink encoding and decoding for the overlay: VXLAN links, FDB and neighbours.

Plain functions over bytes and one blocking socket, run on the namespace
worker thread. Many requests go out in one write: the kernel handles every
message of a datagram in order and acks each, so a full-state job of a thousand
entries costs a few system calls, not a thousand round trips.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from vnetd.net import bpf, rtnl
from vnetd.net.model import CREATING_GROUP
from vnetd.net.overlay import (
    NTF_EXT_LEARNED,
    NTF_SELF,
    NUD_PERMANENT,
    FdbEntry,
    FdbOp,
    NeighEntry,
    NeighOp,
    VxlanInfo,
    VxlanSpec,
)
from vnetd.net.rtnl import (
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IFLA_MTU,
    NETLINK_CAP_ACK,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_DELNEIGH,
    RTM_NEWNEIGH,
    SOL_NETLINK,
    attr,
    attr_str,
    attr_u8,
    attr_u32,
    get_u8,
    get_u32,
    ifinfo,
    mac_bytes,
    nested,
)

NLM_F_REPLACE, NLM_F_APPEND = 0x100, 0x800
AF_BRIDGE = 7
VXLAN_ID, VXLAN_LINK, VXLAN_LOCAL, VXLAN_TTL, VXLAN_TOS = 1, 3, 4, 5, 6
VXLAN_LEARNING, VXLAN_PROXY, VXLAN_PORT, VXLAN_LOCAL6 = 7, 11, 15, 17
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8

_HDR = rtnl.NLMSGHDR
_IFINFO = rtnl.IFINFOMSG
_NDMSG = struct.Struct("=BxxxiHBB")
_ERR = rtnl.S32
CHUNK_BYTES = 96 * 1024
"""Requests per write: well under the socket buffers, so acks never overrun."""
RECV_BYTES = 1 << 20
TIMEOUT_SECONDS = 10.0


class WireError(Exception):
    def __init__(self, code: int, what: str) -> None:
        super().__init__(what)
        self.code = code


class DumpInterrupted(Exception):
    """The table changed during the dump (NLM_F_DUMP_INTR): take it again."""


# ------------------------------------------------------------------ encoding
@lru_cache(maxsize=65536)
def _ip(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def _family(ip: str) -> int:
    return socket.AF_INET if ipaddress.ip_address(ip).version == 4 else socket.AF_INET6


def vxlan_create_body(spec: VxlanSpec) -> bytes:
    local = ipaddress.ip_address(spec.local)
    data = attr_u32(VXLAN_ID, spec.vni)
    data += attr(VXLAN_LOCAL if local.version == 4 else VXLAN_LOCAL6, local.packed)
    if spec.link is not None:
        data += attr_u32(VXLAN_LINK, spec.link)
    data += attr(VXLAN_PORT, struct.pack("!H", spec.port))  # network order, unlike the rest
    data += attr_u8(VXLAN_LEARNING, int(spec.learning))
    data += attr_u8(VXLAN_PROXY, int(spec.proxy))
    data += attr_u8(VXLAN_TTL, spec.ttl)
    data += attr_u8(VXLAN_TOS, spec.tos)
    # Born in CREATING_GROUP (the kernel ignores an alias here): see net/model.py.
    body = ifinfo() + attr_str(IFLA_IFNAME, spec.name) + attr_u32(rtnl.IFLA_GROUP,
                                                               CREATING_GROUP)
    if spec.mtu is not None:
        body += attr_u32(IFLA_MTU, spec.mtu)
    return body + rtnl.linkinfo("vxlan", data)


_FDB_FLAGS = {"add": NLM_F_CREATE | NLM_F_EXCL, "append": NLM_F_CREATE | NLM_F_APPEND,
              "replace": NLM_F_CREATE | NLM_F_REPLACE, "delete": 0}


_FDB_V4 = struct.Struct("=BxxxiHBBHH6sxxHH4s")
_FDB_V6 = struct.Struct("=BxxxiHBBHH6sxxHH16s")
"""ndmsg, NDA_LLADDR (6 bytes, padded), NDA_DST: a whole FDB request body in one pack."""
_NEIGH_V4 = struct.Struct("=BxxxiHBBHH4sHH6sxx")
_NEIGH_V6 = struct.Struct("=BxxxiHBBHH16sHH6sxx")
"""ndmsg, NDA_DST, NDA_LLADDR: a whole neighbour request body in one pack."""


@lru_cache(maxsize=65536)
def _mac(mac: str) -> bytes:
    if len(mac) == 17 and mac[2::3] == ":::::":
        return bytes.fromhex(mac[0:2] + mac[3:5] + mac[6:8] + mac[9:11] + mac[12:14] + mac[15:17])
    return mac_bytes(mac)


def fdb_request(index: int, op: FdbOp) -> tuple[int, int, bytes]:
    """(type, flags, body) of one FDB row change on the VXLAN device itself (NTF_SELF)."""
    flags = NTF_SELF if op.action == "append" or op.mac == "00:00:00:00:00:00" \
        else NTF_SELF | NTF_EXT_LEARNED
    mac, dst = _mac(op.mac), _ip(op.dst)
    if len(mac) == 6 and len(dst) in (4, 16):
        layout = _FDB_V4 if len(dst) == 4 else _FDB_V6
        body = layout.pack(AF_BRIDGE, index, NUD_PERMANENT, flags, 0,
                           10, NDA_LLADDR, mac, 4 + len(dst), NDA_DST, dst)
    else:
        body = _NDMSG.pack(AF_BRIDGE, index, NUD_PERMANENT, flags, 0)
        body += attr(NDA_LLADDR, mac) + attr(NDA_DST, dst)
    kind = RTM_DELNEIGH if op.action == "delete" else RTM_NEWNEIGH
    return kind, _FDB_FLAGS[op.action], body


def neigh_request(index: int, op: NeighOp) -> tuple[int, int, bytes]:
    ip, mac = _ip(op.ip), _mac(op.mac)
    if len(mac) == 6:
        v4 = len(ip) == 4
        body = (_NEIGH_V4 if v4 else _NEIGH_V6).pack(
            socket.AF_INET if v4 else socket.AF_INET6, index, NUD_PERMANENT, NTF_EXT_LEARNED,
            0, 4 + len(ip), NDA_DST, ip, 10, NDA_LLADDR, mac)
    else:
        body = _NDMSG.pack(_family(op.ip), index, NUD_PERMANENT, NTF_EXT_LEARNED, 0)
        body += attr(NDA_DST, ip) + attr(NDA_LLADDR, mac)
    if op.action == "delete":
        return RTM_DELNEIGH, 0, body
    flags = NLM_F_CREATE | (NLM_F_REPLACE if op.action == "replace" else NLM_F_EXCL)
    return RTM_NEWNEIGH, flags, body


# ------------------------------------------------------------------ decoding
def _fmt_ip(raw: memoryview | None) -> str | None:
    if raw is None or len(raw) not in (4, 16):
        return None
    return _ip_text(bytes(raw))


@lru_cache(maxsize=65536)
def _ip_text(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _u8(raw: memoryview | None) -> int:
    return get_u8(raw) or 0


def parse_vxlan(payload: bytes) -> VxlanInfo | None:
    """An RTM_NEWLINK payload -> VxlanInfo, or None when the link is not a VXLAN."""
    top = rtnl.attrs(payload, _IFINFO.size, len(payload), frozenset({IFLA_LINKINFO}))
    linkinfo = top.get(IFLA_LINKINFO)
    if linkinfo is None:
        return None
    info = nested(linkinfo)
    if rtnl.get_str(info.get(IFLA_INFO_KIND)) != "vxlan":
        return None
    raw = info.get(IFLA_INFO_DATA)
    d = nested(raw) if raw is not None else {}
    port = d.get(VXLAN_PORT)
    return VxlanInfo(
        vni=get_u32(d.get(VXLAN_ID)) or 0,
        local=_fmt_ip(d.get(VXLAN_LOCAL)) or _fmt_ip(d.get(VXLAN_LOCAL6)),
        link=get_u32(d.get(VXLAN_LINK)) or None,
        port=struct.unpack("!H", port)[0] if port is not None and len(port) == 2 else 0,
        learning=bool(_u8(d.get(VXLAN_LEARNING))),
        proxy=bool(_u8(d.get(VXLAN_PROXY))),
        ttl=_u8(d.get(VXLAN_TTL)),
        tos=_u8(d.get(VXLAN_TOS)),
    )


_NLATTR = rtnl.NLATTR


def parse_neigh(payload: bytes) -> tuple[int, int, int, int, str | None, str | None]:
    """(family, ifindex, state, flags, dst, lladdr) of an RTM_NEWNEIGH payload.

    Walks the attributes itself and keeps only the two it needs, as bytes (the
    text of each comes from a cache): a dump or a batch's notifications bring a
    thousand of these at once. Same rules as rtnl.attrs: the last of a type wins,
    a truncated attribute ends the walk.
    """
    family, index, state, flags, _type = _NDMSG.unpack_from(payload, 0)
    dst = mac = None
    unpack = _NLATTR.unpack_from
    pos, end = _NDMSG.size, len(payload)
    while pos + 4 <= end:
        length, kind = unpack(payload, pos)
        if length < 4 or pos + length > end:
            break
        kind &= rtnl.NLA_TYPE_MASK
        if kind == NDA_DST:
            dst = bytes(payload[pos + 4:pos + length])
        elif kind == NDA_LLADDR:
            mac = bytes(payload[pos + 4:pos + length])
        pos += (length + 3) & ~3
    return (family, index, state, flags,
            _ip_text(dst) if dst is not None and len(dst) in (4, 16) else None,
            _mac_text(mac) if mac is not None and len(mac) == 6 else None)


@lru_cache(maxsize=65536)
def _mac_text(raw: bytes) -> str:
    return raw.hex(":")


def parse_addr(payload: bytes) -> tuple[int, str | None]:
    found = rtnl.decode_address(payload, 0, len(payload))
    return (found.index, found.address) if found is not None else (0, None)


def messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of every message of one datagram."""
    pos = 0
    while pos + _HDR.size <= len(data):
        length, kind, flags, seq, _pid = _HDR.unpack_from(data, pos)
        if length < _HDR.size:
            return
        yield kind, flags, seq, data[pos + _HDR.size:pos + length]
        pos += (length + 3) & ~3


# ------------------------------------------------------------------ the socket
def recv_datagram(sock: socket.socket, buf: bytearray) -> bytes:
    """One datagram, read into the caller's reusable buffer and copied out at its size."""
    try:
        n = sock.recv_into(buf)
    except TimeoutError as exc:
        raise WireError(errno.ETIMEDOUT, "no answer from the kernel") from exc
    return bytes(memoryview(buf)[:n])


@dataclass
class Wire:
    """One blocking rtnetlink socket of the target namespace (worker thread only)."""

    sock: socket.socket
    seq: int = 0
    buf: bytearray = field(default_factory=lambda: bytearray(RECV_BYTES))
    """One receive buffer for the socket's life: `recv(RECV_BYTES)` would allocate
    (and the allocator map and unmap) a megabyte for every ack of a batch."""

    @classmethod
    def open(cls) -> Wire:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RECV_BYTES)
        # Acks without a copy of each request: a thousand acks stay small.
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.settimeout(TIMEOUT_SECONDS)
        sock.bind((0, 0))
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    def _next(self) -> int:
        self.seq = (self.seq + 1) & 0x7FFFFFFF or 1
        return self.seq

    def _recv(self) -> bytes:
        return recv_datagram(self.sock, self.buf)

    def dump(self, kind: int, body: bytes) -> list[tuple[int, bytes]]:
        """(type, payload) of every answer of one dump request."""
        seq = self._next()
        self.sock.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP,
                                 seq, 0) + body)
        found: list[tuple[int, bytes]] = []
        interrupted = False
        while True:
            for mtype, flags, mseq, payload in messages(self._recv()):
                if mseq != seq:
                    continue  # a stale answer of an earlier, timed-out request
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                if mtype == NLMSG_DONE:
                    if interrupted:
                        raise DumpInterrupted
                    return found
                if mtype == NLMSG_ERROR:
                    code = -_ERR.unpack_from(payload, 0)[0]
                    raise WireError(code, "dump")
                found.append((mtype, payload))

    def get(self, kind: int, body: bytes) -> bytes | None:
        """The one answer of a GET request, None on ENODEV."""
        seq = self._next()
        self.sock.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST, seq, 0) + body)
        while True:
            for mtype, _flags, mseq, payload in messages(self._recv()):
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    code = -_ERR.unpack_from(payload, 0)[0]
                    if code in (errno.ENODEV, 0):
                        return None
                    raise WireError(code, "get")
                return payload

    def batch(self, requests: Sequence[tuple[int, int, bytes]]) -> list[int]:
        """Send every request (acked), many per write; the errno of each (0: done)."""
        results = [0] * len(requests)
        pos = 0
        while pos < len(requests):
            chunk = bytearray()
            pending: dict[int, int] = {}
            while pos < len(requests) and len(chunk) < CHUNK_BYTES:
                kind, flags, body = requests[pos]
                seq = self._next()
                pending[seq] = pos
                chunk += _HDR.pack(_HDR.size + len(body), kind,
                                   flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body
                pos += 1
            self.sock.send(bytes(chunk))
            while pending:
                for mtype, _flags, mseq, payload in messages(self._recv()):
                    if mtype == NLMSG_ERROR and mseq in pending:
                        results[pending.pop(mseq)] = -_ERR.unpack_from(payload, 0)[0]
        return results

    def request(self, kind: int, flags: int, body: bytes) -> None:
        code = self.batch([(kind, flags, body)])[0]
        if code:
            raise WireError(code, "request")


def link_get_body(index: int) -> bytes:
    return _IFINFO.pack(0, 0, index, 0, 0)


def fdb_dump_body(index: int) -> bytes:
    # An ifinfomsg (not an ndmsg): the kernel's FDB dump reads its ifindex as the
    # port filter, so only this device's rows (its own and the bridge's) come back.
    return _IFINFO.pack(AF_BRIDGE, 0, index, 0, 0)


def neigh_dump_body(index: int) -> bytes:
    # AF_UNSPEC: ARP and ND tables in one dump, filtered by device in the kernel.
    return _NDMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr_u32(NDA_IFINDEX, index)


def addr_dump_body() -> bytes:
    return rtnl.IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)


def fdb_rows(answers: list[tuple[int, bytes]], index: int) -> list[FdbEntry]:
    rows = []
    for mtype, payload in answers:
        if mtype != RTM_NEWNEIGH:
            continue
        family, ifindex, state, flags, dst, mac = parse_neigh(payload)
        if family != AF_BRIDGE or ifindex != index or not flags & NTF_SELF or mac is None:
            continue
        rows.append(FdbEntry(mac=mac, dst=dst, state=state, flags=flags))
    return rows


def neigh_rows(answers: list[tuple[int, bytes]], index: int) -> list[NeighEntry]:
    rows = []
    for mtype, payload in answers:
        if mtype != RTM_NEWNEIGH:
            continue
        family, ifindex, state, flags, dst, mac = parse_neigh(payload)
        if family not in (socket.AF_INET, socket.AF_INET6) or ifindex != index or dst is None:
            continue
        rows.append(NeighEntry(ip=dst, mac=mac, state=state, flags=flags))
    return rows


RTNLGRP_NEIGH = 3


def open_neigh_monitor() -> socket.socket:
    """A non-blocking socket subscribed to FDB and neighbour notifications (call it on a
    thread inside the target namespace: the socket keeps that namespace)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         socket.NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BYTES)
    bpf.attach(sock, bpf.bridge_fdb_filter())  # the bridges' own FDB churn: never read
    sock.bind((0, 1 << (RTNLGRP_NEIGH - 1)))
    sock.setblocking(False)
    return sock


@dataclass(frozen=True, slots=True)
class NeighNotice:
    """One FDB or neighbour notification of a device, in the overlay's terms."""

    deleted: bool
    index: int
    table: str
    """"remotes", "fdb" or "neighbours"."""
    key: str
    value: str | None
    owned: bool


def notice_index(payload: bytes) -> int:
    """The device index of a neighbour message, read before decoding the rest."""
    return int(_NDMSG.unpack_from(payload, 0)[1]) if len(payload) >= _NDMSG.size else 0


def parse_notice(mtype: int, payload: bytes) -> NeighNotice | None:
    """An RTM_NEWNEIGH/RTM_DELNEIGH -> NeighNotice; None for what the overlay ignores
    (the bridge's own FDB, entries without an address)."""
    if mtype not in (RTM_NEWNEIGH, RTM_DELNEIGH):
        return None
    family, index, state, flags, dst, mac = parse_neigh(payload)
    deleted = mtype == RTM_DELNEIGH
    if family == AF_BRIDGE:
        if not flags & NTF_SELF or mac is None:
            return None
        row = FdbEntry(mac=mac, dst=dst, state=state, flags=flags)
        if row.flood:
            return NeighNotice(deleted, index, "remotes", dst or "", None, row.owned)
        return NeighNotice(deleted, index, "fdb", mac, dst, row.owned)
    if family in (socket.AF_INET, socket.AF_INET6) and dst is not None:
        n = NeighEntry(ip=dst, mac=mac, state=state, flags=flags)
        return NeighNotice(deleted, index, "neighbours", dst, mac, n.owned)
    return None
