"""A small raw rtnetlink client for the hot link operations, on the event loop.

Why not pyroute2 here: decoding one RTM_NEWLINK into pyroute2's message objects
costs about 0.6 ms of Python, several times the kernel's own work, and every
request waits for its answer before the next one is sent. This module sends
the few requests vnetd's hot path needs (get, set, delete, dump of links),
encoded and decoded by `rtnl.py` (the codec the event monitor shares), and keeps
many requests in flight on one socket: each is sent at once (the kernel runs rtnetlink
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
from collections.abc import Sequence
from dataclasses import dataclass, field

from vnetd.net import rtnl
from vnetd.net.linkcache import LinkDecoder
from vnetd.net.model import Link, LinkChange
from vnetd.net.rtnl import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_NEWLINK,
    S32,
)

MAX_IN_FLIGHT = 256
"""Requests sent but not answered yet. Answers queue in our receive buffer until
the loop reads them; bounding them keeps that buffer from overflowing (ENOBUFS)."""
RCVBUF_BYTES = 8 * 1024 * 1024
RECV_BYTES = 256 * 1024


class NetlinkRequestError(OSError):
    """The kernel answered a request with an error (errno is set)."""


class DumpInterrupted(Exception):
    """The link table changed during a dump (NLM_F_DUMP_INTR): take it again.
    `links` is what that dump read (possibly missing or doubling a changed link)."""

    def __init__(self, links: list[Link]) -> None:
        super().__init__("link dump interrupted by a concurrent change")
        self.links = links


def blocking_request(sock: socket.socket, msg_type: int, flags: int, body: bytes) -> None:
    """Send one request on a blocking socket and wait for its acknowledgement.

    For requests that hold the kernel for long (a device deletion waits for an RCU
    grace period, ~18 ms): run on a worker thread, they do not stall the event loop.
    """
    sock.send(rtnl.header(16 + len(body), msg_type, flags | NLM_F_REQUEST | NLM_F_ACK, 1) + body)
    while True:
        data = sock.recv(RECV_BYTES)
        pos = 0
        while pos + 16 <= len(data):
            length, kind, _flags, seq, _pid = NLMSGHDR.unpack_from(data, pos)
            if length < 16:
                break
            if kind == NLMSG_ERROR and seq == 1:
                code = -S32.unpack_from(data, pos + 16)[0]
                if code:
                    raise NetlinkRequestError(code, os.strerror(code))
                return
            pos += (length + 3) & ~3


def change_messages(change: LinkChange, *, index: int = 0, name: str | None = None,
                    no_ipv6_link_local: bool = False,
                    new: bool = False) -> list[tuple[int, int, bytes]]:
    """The requests of a change with its read back, for one write: the RTM_NEWLINK set
    (the link by index, or by name with index 0), then a GET of the result; the last
    two answers are the set's and the link's.

    `new`: the link was created a moment ago; a GET goes first, and its answer is
    dropped. rtnl_getlink runs the link's pending linkwatch event
    (linkwatch_sync_dev), so a new TAP's operstate is "down" rather than the
    "unknown" it is born with when the change brings it up. With "unknown" the
    kernel takes it for a port that is up: br_add_if (or NETDEV_UP in the bridge)
    enables its STP port at once, which queues an urgent linkwatch run; that run
    walks every device with a pending link event on the machine under RTNL, and
    the daemon's next requests spin on RTNL meanwhile. Measured with 11,000 TAPs
    in another namespace: 1.57 -> 0.97 ms of daemon CPU per plug (and 0.91x with
    none); `ip tuntap add` then `ip link set` in two requests does not hit it
    (docs/benchmark.md)."""
    get = rtnl.get_by_index_body(index) if index else rtnl.get_by_name_body(name or "")
    return [*([(RTM_GETLINK, 0, get)] if new else []),
            (RTM_NEWLINK, NLM_F_ACK, rtnl.change_body(
                index, change, name=None if index else name,
                no_ipv6_link_local=no_ipv6_link_local)),
            (RTM_GETLINK, 0, get)]


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
        sock.setsockopt(rtnl.SOL_NETLINK, rtnl.NETLINK_CAP_ACK, 1)
        sock.bind((0, 0))
        self._pid = sock.getsockname()[0]
        self._seq = 0
        self._pending: dict[int, _Pending] = {}
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        # The kernel runs one dump per socket at a time and answers a second one
        # with EBUSY (netlink_dump_start): concurrent callers take turns.
        self._dump_turn = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._links = LinkDecoder(remember=False)
        """Answers and dumps decoded through shared layouts (net/linkcache.py)."""

    @staticmethod
    def open_socket() -> socket.socket:
        """Create the rtnetlink socket (call it on a thread inside the namespace)."""
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)

    def _attach(self) -> asyncio.AbstractEventLoop:
        """Bind to the running loop on first use (later calls cost one attribute read:
        a future of this loop awaited on another one fails in asyncio itself)."""
        loop = self._loop = asyncio.get_running_loop()
        loop.add_reader(self._sock.fileno(), self._on_readable)
        return loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop this socket answers on (get_running_loop() costs a getpid() on 3.11)."""
        return self._loop or self._attach()

    async def request(self, msg_type: int, flags: int, body: bytes) -> list[Link] | None:
        """Send one request; returns the links answered (GET, dump) or None (ack)."""
        if self._closed:
            raise NetlinkRequestError(errno.EBADF, "netlink socket closed")
        loop = self._loop or self._attach()
        async with self._slots:
            self._seq = seq = (self._seq + 1) & 0xFFFFFFFF or 1
            dump = (flags & NLM_F_DUMP) == NLM_F_DUMP and msg_type == RTM_GETLINK
            pending = _Pending(loop.create_future(), dump)
            self._pending[seq] = pending
            try:
                self._sock.send(rtnl.header(16 + len(body), msg_type, flags | NLM_F_REQUEST,
                                            seq) + body)
            except OSError:
                del self._pending[seq]
                raise
            # The kernel has already done the work; the answer waits in our buffer.
            if not dump:  # (a dump's later parts are made as they are read: the reader's)
                self._drain(pending.future)
            try:
                return await pending.future
            finally:
                self._pending.pop(seq, None)

    async def exchange(self, msgs: Sequence[tuple[int, int, bytes]]
                       ) -> list[list[Link] | NetlinkRequestError | None]:
        """Send several requests (no dumps) in ONE write and return their answers in
        order, an error in place of the answer of a request that failed.

        The kernel runs the messages of one write one after the other, each as if
        sent alone (netlink_rcv_skb), so a GET after a SET answers with the state the
        SET left: one round trip instead of two.
        """
        if self._closed:
            raise NetlinkRequestError(errno.EBADF, "netlink socket closed")
        if len(msgs) > MAX_IN_FLIGHT:
            raise ValueError(f"at most {MAX_IN_FLIGHT} requests in one exchange")
        loop = self._loop or self._attach()
        for _ in msgs:
            await self._slots.acquire()
        seqs: list[int] = []
        try:
            futures = []
            chunks = []
            for msg_type, flags, body in msgs:
                self._seq = seq = (self._seq + 1) & 0xFFFFFFFF or 1
                pending = _Pending(loop.create_future(), dump=False)
                self._pending[seq] = pending
                seqs.append(seq)
                futures.append(pending.future)
                chunks.append(rtnl.header(16 + len(body), msg_type, flags | NLM_F_REQUEST, seq))
                chunks.append(body)
            self._sock.send(b"".join(chunks))
            self._drain(futures[-1])
            out: list[list[Link] | NetlinkRequestError | None] = []
            for future in futures:
                try:
                    out.append(await future)
                except NetlinkRequestError as exc:
                    out.append(exc)
            return out
        finally:
            for seq in seqs:
                self._pending.pop(seq, None)
            for _ in msgs:
                self._slots.release()

    def _drain(self, last: asyncio.Future[list[Link] | None]) -> None:
        """Read the answers now, up to `last`'s: rtnetlink runs a request inside the
        send() that carries it, so they are in our buffer already. Reading them here
        saves a trip through the event loop (a wake-up, a poll, a callback) per
        request; the reader callback stays for whatever is not there yet."""
        while not last.done() and self._read_once():
            pass

    def _fail_all(self, exc: BaseException) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(exc)
        self._pending.clear()

    def _on_readable(self) -> None:
        while self._read_once():
            pass

    def _read_once(self) -> bool:
        """One datagram from the socket, dispatched; False when there was none."""
        try:
            data = self._sock.recv(RECV_BYTES)
        except BlockingIOError:
            return False
        except OSError as exc:
            # ENOBUFS: answers were dropped; nobody can tell which. Fail all
            # requests in flight (temporary errors: the jobs can be resent).
            self._fail_all(NetlinkRequestError(exc.errno or errno.EIO,
                                               f"netlink socket: {exc.strerror}"))
            return exc.errno == errno.ENOBUFS
        self._dispatch(data)
        return True

    def _dispatch(self, data: bytes) -> None:
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos + 16 <= end:
            length, msg_type, flags, seq, _pid = NLMSGHDR.unpack_from(view, pos)
            if length < 16:
                break
            pending = self._pending.get(seq)
            if pending is not None and not pending.future.done():
                self._one(pending, view, pos, length, msg_type, flags, self._links)
            pos += (length + 3) & ~3

    @staticmethod
    def _one(pending: _Pending, view: memoryview, pos: int, length: int, msg_type: int,
             flags: int, links: LinkDecoder) -> None:
        if flags & NLM_F_DUMP_INTR:
            pending.interrupted = True
        if msg_type == NLMSG_ERROR:
            code = -S32.unpack_from(view, pos + 16)[0]
            if code:
                pending.future.set_exception(NetlinkRequestError(code, os.strerror(code)))
            else:
                pending.future.set_result(pending.links if pending.dump else None)
        elif msg_type == NLMSG_DONE:
            if pending.interrupted:
                pending.future.set_exception(DumpInterrupted(pending.links))
            else:
                pending.future.set_result(pending.links)
        elif msg_type == RTM_NEWLINK:
            pending.links.append(links.decode(view, pos, pos + length))
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
        return _one_link(await self.request(RTM_GETLINK, 0, rtnl.get_by_name_body(name)))

    async def get_link_by_index(self, index: int) -> Link:
        return _one_link(await self.request(RTM_GETLINK, 0, rtnl.get_by_index_body(index)))

    async def get_links(self, names: Sequence[str]) -> list[Link | None]:
        """The links called `names` (None where there is none), in one round trip."""
        answers = await self.exchange([(RTM_GETLINK, 0, rtnl.get_by_name_body(name))
                                       for name in names])
        out: list[Link | None] = []
        for answer in answers:
            if isinstance(answer, NetlinkRequestError):
                if answer.errno != errno.ENODEV:
                    raise answer
                out.append(None)
            else:
                out.append(_one_link(answer))
        return out

    async def change_link(self, change: LinkChange, *, index: int = 0, name: str | None = None,
                          no_ipv6_link_local: bool = False, new: bool = False) -> Link:
        """Apply `change` to the link (by index, or by name with index 0) and return its
        state after it, read by a GET in the same write: one round trip.

        (NLM_F_ECHO would be the kernel's own answer, but on a link that exists the
        kernel sends its RTM_NEWLINK to the listeners only, not back to the requester:
        checked on 6.18, an echoed set is answered by the ack alone.)

        `new`: the link was created a moment ago (see `change_messages`)."""
        *_, done, got = await self.exchange(change_messages(
            change, index=index, name=name, no_ipv6_link_local=no_ipv6_link_local, new=new))
        if isinstance(done, NetlinkRequestError):
            raise done
        if isinstance(got, NetlinkRequestError):
            raise got
        return _one_link(got)

    async def dump_links(self) -> list[Link]:
        async with self._dump_turn:
            return await self.request(RTM_GETLINK, NLM_F_DUMP, rtnl.dump_body()) or []

    async def set_link(self, index: int, change: LinkChange) -> None:
        await self.request(RTM_NEWLINK, NLM_F_ACK, rtnl.change_body(index, change))

    async def set_link_by_name(self, name: str, change: LinkChange, *,
                               no_ipv6_link_local: bool = False) -> None:
        await self.request(RTM_NEWLINK, NLM_F_ACK, rtnl.change_body(
            0, change, name=name, no_ipv6_link_local=no_ipv6_link_local))

    async def create(self, body: bytes) -> None:
        """RTM_NEWLINK with NLM_F_CREATE | NLM_F_EXCL: EEXIST when the name is taken."""
        await self.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    async def delete_link(self, index: int) -> None:
        await self.request(RTM_DELLINK, NLM_F_ACK, rtnl.ifinfo(index))

    async def set_group(self, index: int, group: int) -> None:
        await self.request(RTM_NEWLINK, NLM_F_ACK, rtnl.group_body(index, group))


def _one_link(links: list[Link] | None) -> Link:
    if not links:  # a GET answered by an ack alone: the kernel never does that
        raise NetlinkRequestError(errno.EPROTO, "netlink GET answered without a link")
    return links[0]
