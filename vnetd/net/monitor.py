"""The event watcher's netlink socket: link and address notifications, decoded cheaply.

A raw AF_NETLINK socket, opened inside the target namespace, bound to the link
and address multicast groups, separate from the command socket (net/netlink.py).
Messages are decoded by `rtnl.py`, the codec the command fast path uses too;
this module splits datagrams into events and owns the socket.

This module does no I/O policy: it reads what is there, never blocks, and
reports loss (ENOBUFS) to the caller, who decides to resync. It must not hide
loss (no NETLINK_NO_ENOBUFS).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from vnetd.net import bpf, rtnl
from vnetd.net.linkcache import LinkDecoder
from vnetd.net.model import Address, Link
from vnetd.net.netns import NamespaceWorker
from vnetd.net.rtnl import (
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
    S32,
)

SO_RCVBUFFORCE = 33
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR

__all__ = ["Address", "AddressEvent", "Control", "LinkEvent", "Message", "MonitorSocket",
           "Overrun", "Superseded", "decode", "superseded"]


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """RTM_NEWLINK / RTM_DELLINK: the link's full state as the kernel sent it."""

    deleted: bool
    link: Link


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


@dataclass(frozen=True, slots=True)
class Superseded:
    """A link notification left undecoded: a later one of the same read tells the
    link's state (see MonitorSocket.read). It keeps its place in the read's order."""

    index: int


Message = LinkEvent | AddressEvent | Control | Superseded


def decode(buf: rtnl.Buffer, size: int | None = None,
           links: LinkDecoder | None = None) -> list[Message]:
    """Every message of one netlink datagram that vnetd cares about, in order.

    With `links`, link messages go through that decoder (the same result as
    rtnl.decode_link, from remembered layouts: see net/linkcache.py)."""
    end_all = len(buf) if size is None else size
    out: list[Message] = []
    pos = 0
    while pos + NLMSGHDR.size <= end_all:
        length, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(buf, pos)
        if length < NLMSGHDR.size or pos + length > end_all:
            break
        body, end = pos + NLMSGHDR.size, pos + length
        if mtype in (RTM_NEWLINK, RTM_DELLINK):
            # AF_BRIDGE messages on the link group are bridge *port* notices (a port
            # joining or leaving a bridge sends RTM_DELLINK/AF_BRIDGE while the link
            # itself stays): the link's own AF_UNSPEC message tells its state.
            if buf[body] != socket.AF_BRIDGE:
                link = (links.decode(buf, pos, end) if links is not None
                        else rtnl.decode_link(buf, body, end))
                if mtype == RTM_DELLINK and links is not None:
                    links.forget(link.index)
                out.append(LinkEvent(mtype == RTM_DELLINK, link))
        elif mtype in (RTM_NEWADDR, RTM_DELADDR):
            addr = rtnl.decode_address(buf, body, end)
            if addr is not None:
                out.append(AddressEvent(mtype == RTM_DELADDR, addr))
        elif mtype == NLMSG_DONE:
            out.append(Control("done", seq, interrupted=bool(flags & NLM_F_DUMP_INTR)))
        elif mtype == NLMSG_ERROR:
            (code,) = S32.unpack_from(buf, body)
            if code != 0:
                out.append(Control("error", seq, error=-code))
        if flags & NLM_F_DUMP_INTR and mtype != NLMSG_DONE:
            out.append(Control("interrupted", seq, interrupted=True))
        pos += (length + 3) & ~3
    return out


_PEEK = struct.Struct("=IH")
_INDEX = struct.Struct("=i")
_LINK_TYPES = (RTM_NEWLINK, RTM_DELLINK)
_ADDR_TYPES = (RTM_NEWADDR, RTM_DELADDR)


def superseded(grams: Sequence[rtnl.Buffer]) -> set[int]:
    """Positions in `grams` (one read's datagrams, in order) of link notifications that
    a later link notification of the same read makes irrelevant to a batch diff.

    Only a datagram holding exactly one RTM_NEWLINK (AF_UNSPEC family, as notifications
    are) can be skipped, and only for a later RTM_NEWLINK or RTM_DELLINK datagram of the
    same index (a deletion itself is always decoded); never when the read holds an
    address message of that index (the watcher keeps an address only while its link is
    in the view, so their order matters), and nothing at all when it holds any other
    message (a dump's answers, an error, anything unknown). ifinfomsg and ifaddrmsg
    both keep the index at byte 4 of the body.
    """
    last: dict[int, int] = {}
    addressed: set[int] = set()
    skip: set[int] = set()
    for pos, gram in enumerate(grams):
        if len(gram) < 24:
            return set()
        if not _one_message(gram, len(gram)):
            return set()  # several messages: a dump's answers
        (_, mtype) = _PEEK.unpack_from(gram, 0)
        (index,) = _INDEX.unpack_from(gram, 20)
        if mtype in _LINK_TYPES:
            if gram[16] != socket.AF_UNSPEC:
                return set()
            prev = last.pop(index, None)
            if prev is not None:
                skip.add(prev)
            if mtype == RTM_NEWLINK:  # a deletion is always decoded (and forgets the link)
                last[index] = pos
        elif mtype in _ADDR_TYPES:
            addressed.add(index)
        else:
            return set()
    if addressed:
        skip = {pos for pos in skip if _INDEX.unpack_from(grams[pos], 20)[0] not in addressed}
    return skip


def _one_message(buf: rtnl.Buffer, size: int) -> bool:
    """The datagram holds one message (a notification; a dump's answers come several
    to a datagram)."""
    if size < 16:
        return False
    length: int = rtnl.U32.unpack_from(buf, 0)[0]
    return length == size or (length + 3) & ~3 == size


class Overrun(Exception):
    """The kernel dropped notifications for this socket (ENOBUFS): resync."""


def _open(rcvbuf: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         rtnl.NETLINK_ROUTE)
    try:
        try:  # FORCE (CAP_NET_ADMIN) lets the size exceed net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        bpf.attach(sock, bpf.bridge_port_filter())  # bridge port notices: never read
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
        self._links = LinkDecoder()
        self.skipped = 0
        """Link notifications not decoded because a later one of their read superseded them."""

    async def open(self) -> int:
        """(Re)open the socket inside the namespace; returns its file descriptor."""
        self.close_socket()
        # The socket keeps the namespace of the thread that created it.
        self._sock = await self._worker.run(_open, self.rcvbuf)
        return self._sock.fileno()

    def _open_sock(self) -> socket.socket:
        if self._sock is None:
            raise RuntimeError("monitor socket is not open")
        return self._sock

    @property
    def fileno(self) -> int:
        return self._open_sock().fileno()

    @property
    def effective_rcvbuf(self) -> int:
        return int(self._open_sock().getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def request_dump(self, what: Literal["link", "addr"]) -> int:
        """Send a dump request on this socket; its answers arrive in order with notifications."""
        sock = self._open_sock()
        self._seq += 1
        sock.send(rtnl.dump_request(RTM_GETLINK if what == "link" else RTM_GETADDR, self._seq))
        return self._seq

    def read(self, max_datagrams: int = 256) -> list[Message]:
        """What is queued now (up to max_datagrams datagrams); never blocks.

        A link notification that a later one of the same read supersedes (same
        index, both alone in their datagram, no address message of that index in
        the read, no dump answer in it) is not decoded but given as `Superseded`:
        the watcher applies a read as one batch and diffs its view before and after
        (watchers/netlink.py feed_batch), so only each link's last state counts,
        and the place of its first notification (the order of the events). Under
        load a read holds several changes of each busy link, and decoding was the
        largest part of the daemon's CPU per change (see `superseded`).

        Raises Overrun when the kernel reports lost notifications.
        """
        sock = self._open_sock()
        buf = self._buf
        links = self._links
        grams: list[bytearray] = []
        """Datagrams of one notification each, not decoded yet (any may be superseded)."""
        out: list[Message] = []
        mixed = False
        """The read holds another kind of datagram (a dump's answers): nothing is skipped."""
        for _ in range(max_datagrams):
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise Overrun(os.strerror(exc.errno)) from exc
                raise
            if n == 0:
                break
            if not mixed and _one_message(buf, n):
                grams.append(buf[:n])
                continue
            if not mixed:
                mixed = True
                for gram in grams:
                    out.extend(decode(gram, len(gram), links))
                grams = []
            # Decoded from the buffer itself: a resync's dump (15 MB at 10,000 links)
            # is never held as copies, which the allocator kept as resident memory.
            out.extend(decode(buf, n, links))
        if len(grams) == 1:
            return decode(grams[0], len(grams[0]), links)
        skip = superseded(grams)
        for i, gram in enumerate(grams):
            if i in skip:
                out.append(Superseded(_INDEX.unpack_from(gram, 20)[0]))
            else:
                out.extend(decode(gram, len(gram), links))
        self.skipped += len(skip)
        return out

    def close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        self.close_socket()
        self._worker.close()
