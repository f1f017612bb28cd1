"""NetBackend on the real kernel: pyroute2's AsyncIPRoute plus the namespace worker.

The only module of vnetd that imports pyroute2. The hot rtnetlink requests go
through `fastlink.FastLink` (a raw socket opened inside the target namespace
once at start); route dumps through pyroute2's AsyncIPRoute, opened on first
use; TAP creation and sysctls through the namespace worker thread.

Creation and ownership (docs/contract.md, "Ownership and policy"): a device
must never outlive the daemon unmarked. A TAP is created non-persistent on a
descriptor we hold, marked, then made persistent (a kill before that closes
the descriptor and the kernel removes the TAP). A device created over netlink
(a bridge) is born in `CREATING_GROUP` (the kernel applies IFLA_GROUP in the
creating request but ignores IFLA_IFALIAS there), marked, then leaves the
group; the next ensure of its name finishes one a kill left in the group.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vnetd import failpoints
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
from vnetd.net import fastlink, ipv6conf, rtnl, tun
from vnetd.net.fastlink import DumpInterrupted, FastLink, NetlinkRequestError
from vnetd.net.model import (
    CREATING_GROUP,
    OWNER_ALIAS,
    BridgeOptions,
    Ipv6State,
    Link,
    LinkChange,
    TapSpec,
)
from vnetd.net.netns import NamespaceWorker
from vnetd.net.vxlan import VxlanNetlink

T = TypeVar("T")
DUMP_RETRIES = 5
TUN_FDS_AHEAD = 64
"""/dev/net/tun descriptors the worker opens in one go, ahead of need."""
TUN_FDS_LOW = 32
"""Below this many left, the next ones are opened in the background."""


def error_from_errno(code: int, what: str) -> VnetdError:
    """Name a kernel errno in the contract's terms (EEXIST is a conflict, and so on)."""
    text = f"{what}: {os.strerror(code)}"
    if code in (errno.ENODEV, errno.ENOENT, errno.ENXIO):
        return NotFound(text, errno=code)
    # EXFULL: the bridge already has its 1,023 ports (BR_MAX_PORTS), a state, not a bug
    if code in (errno.EEXIST, errno.EBUSY, errno.ELOOP, errno.ENOTEMPTY, errno.EXFULL):
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


def _rtnl_dgram_fd() -> int:
    """An rtnetlink socket of the calling thread's namespace (SOCK_DGRAM: asyncio's
    datagram endpoint insists on it; netlink treats RAW and DGRAM alike)."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0).detach()


class NetlinkBackend:
    """NetBackend for the kernel, working inside `netns` (None: our own namespace).

    Hot operations (get/set/delete/dump of links, bridge creation) go through
    `fastlink.FastLink`, a raw rtnetlink socket opened inside the namespace;
    rare ones (route dump) through pyroute2, opened on first use.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns or None
        self._worker = NamespaceWorker(self.netns)
        self._link = FastLink(self._worker.call(FastLink.open_socket))
        self._ipr: Any = None
        self._tun_fds: list[int] = []
        self._tun_refill = asyncio.Lock()
        self._tun_ahead: asyncio.Task[None] | None = None
        self._del_sock: socket.socket | None = None
        self._deletes: list[tuple[int, asyncio.Future[None]]] = []
        self._deleting: asyncio.Task[None] | None = None
        self._overlay = VxlanNetlink(self._worker, error_from_errno)

    def overlay(self) -> VxlanNetlink:
        return self._overlay

    def _pyroute2(self) -> Any:
        if self._ipr is None:
            # Not AsyncIPRoute(netns=...): that forks a helper process, and a forked
            # child shares asyncio's signal wakeup fd, so its SIGTERM reaches our loop
            # as if the daemon had been told to stop. The worker thread is in the
            # namespace already: the socket it opens stays there.
            self._ipr = AsyncIPRoute(fileno=self._worker.call(_rtnl_dgram_fd))
        return self._ipr

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except (NetlinkError, NetlinkRequestError) as exc:
            code = exc.code if isinstance(exc, NetlinkError) else (exc.errno or errno.EIO)
            raise error_from_errno(code, what) from exc

    async def _worker_call(self, what: str, fn: Callable[..., T], *args: object) -> T:
        try:
            return await self._worker.run(fn, *args)
        except OSError as exc:
            if exc.errno is None:
                raise
            raise error_from_errno(exc.errno, what) from exc

    async def get_link(self, name: str) -> Link | None:
        try:
            return await self._link.get_link(name)
        except NetlinkRequestError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise error_from_errno(exc.errno or errno.EIO, f"get link {name}") from exc

    async def get_link_by_index(self, index: int) -> Link | None:
        try:
            return await self._link.get_link_by_index(index)
        except NetlinkRequestError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise error_from_errno(exc.errno or errno.EIO, f"get link #{index}") from exc

    async def list_links(self, *, exact: bool = True) -> list[Link]:
        last: list[Link] = []
        for _ in range(DUMP_RETRIES):
            try:
                return await self._link.dump_links()
            except DumpInterrupted as exc:
                last = exc.links  # the table changed under the dump: take it again
            except NetlinkRequestError as exc:
                raise error_from_errno(exc.errno or errno.EIO, "dump links") from exc
        if not exact:
            return last
        raise Unavailable("link dump kept being interrupted by concurrent changes")

    async def add_bridge(self, name: str, mtu: int | None, mac: str | None,
                         options: BridgeOptions, *, ipv6: bool = False) -> None:
        """IPv6 off (OSSN-0069, for bridges): the bridge is born down, the request that
        marks it also sets address generation none (the kernel ignores IFLA_AF_SPEC in
        a creating request), then disable_ipv6 is written, all before anything brings
        it up. Mode none alone is not enough on a bridge: its IPv6 takes what the
        guests on its ports send, and a router advertisement from one gives it a SLAAC
        address (tests/integration/test_bridge_ipv6.py); only disable_ipv6 stops that."""
        await self._create_marked("bridge", name, rtnl.new_bridge_body(
            name, mtu, mac, options, group=CREATING_GROUP),
            no_ipv6=not ipv6 and (mtu is None or mtu >= rtnl.IPV6_MIN_MTU))

    async def _create_marked(self, kind: str, name: str, body: bytes, *,
                             no_ipv6: bool = False) -> None:
        """Create a device over netlink, then mark it ours; no unmarked device can
        outlive a crash unrecognised.

        The kernel ignores IFLA_IFALIAS in a creating RTM_NEWLINK (it applies it
        only to an existing device), but it does apply IFLA_GROUP: the device is
        born in CREATING_GROUP, which says "vnetd's, creation unfinished", then
        is marked, then leaves the group. The next ensure of the name finishes a
        device a crash left in the group (`finish_creation`).
        """
        await self._call(f"create {kind} {name}", lambda: self._link.create(body))
        failpoints.hit("after_create", kind)
        await self._call(f"mark {kind} {name}", lambda: self._link.set_link_by_name(
            name, LinkChange(alias=OWNER_ALIAS), no_ipv6_link_local=no_ipv6))
        if no_ipv6:
            await self.disable_ipv6(name)
        failpoints.hit("after_mark", kind)
        await self._call(f"finish {kind} {name}", lambda: self._link.set_link_by_name(
            name, LinkChange(group=0)))

    async def finish_creation(self, link: Link) -> None:
        if not link.owned:
            await self.set_link(link.index, LinkChange(alias=OWNER_ALIAS))
            failpoints.hit("after_mark", link.kind)  # the creation paths of the handlers
        await self.set_link(link.index, LinkChange(group=0))

    async def add_tap(self, spec: TapSpec, change: LinkChange) -> Link:
        """Create the TAP non-persistent on a descriptor we hold, mark it and configure
        it (`change`, IPv6 off when asked) in one request, and only then make it
        persistent and close the descriptor: if the daemon dies before, the kernel
        removes the TAP with the descriptor, so no unmarked TAP can outlive it.

        IPv6 (OSSN-0069: no IPv6 address on the host side of a TAP, ever). The
        request that marks the TAP also sets its address generation mode to none:
        no link-local address when it comes up, when a reader gives it carrier, or
        when it joins a bridge (tests/integration/test_tap_ipv6.py). The TAP is
        created without carrier (tun.IFF_NO_CARRIER) because the kernel brings the
        link up before it reads the mode, within the same request. That is the
        whole answer for a bridge port: the bridge takes every frame the guest
        sends, the port's own IPv6 never sees one. It is not for a TAP without a
        bridge: there the host's IPv6 takes the guest's frames, and a router
        advertisement from the guest still gives the TAP a SLAAC address (seen on
        6.18 with addrgenmode none), and packets to the host's other addresses are
        accepted. Only the per-device disable_ipv6 sysctl stops that, and there is
        no netlink request for it: for those TAPs only, it is written as before (a
        write the kernel makes spin while RTNL is busy, addrconf_disable_ipv6).
        """
        (fd,) = await self._take_tun_fds(1)
        no_ll = _no_link_local(spec, change)
        try:
            _tun_call(f"create tap {spec.name}", tun.create_transient, fd, spec)
            failpoints.hit("after_create", "tap")
            link = await self._call(f"mark tap {spec.name}", lambda: self._link.change_link(
                dataclasses.replace(change, alias=OWNER_ALIAS), name=spec.name,
                no_ipv6_link_local=no_ll, new=True))
            if not spec.ipv6 and not change.master:
                await self.disable_ipv6(spec.name)  # no bridge: see above
            failpoints.hit("after_mark", "tap")
            _tun_call(f"make tap {spec.name} persistent", tun.make_persistent, fd)
        finally:
            os.close(fd)  # before TUNSETPERSIST (an error, a cancellation) this removes it
        return _persistent(link)

    async def add_taps(self, items: Sequence[tuple[TapSpec, LinkChange]],
                       stop_on_error: bool) -> list[Link | VnetdError | None]:
        """`add_tap` for many TAPs, pipelined: the creations back to back, every
        marking request between a GET that settles the new TAP and its read back
        (fastlink.change_messages, `new`), all in one write, then TUNSETPERSIST for each.

        The same crash design as add_tap: each TAP is on a descriptor we hold until
        it is marked and persistent. With `stop_on_error`, nothing after the first
        failure is kept: those TAPs are not persistent yet, and closing their
        descriptors removes them (None in the answer), so the result is that of
        running the creations one by one and stopping at the first failure."""
        out: list[Link | VnetdError | None] = [None] * len(items)
        fds = await self._take_tun_fds(len(items))
        try:
            made: list[int] = []
            for i, (spec, _) in enumerate(items):
                try:
                    _tun_call(f"create tap {spec.name}", tun.create_transient, fds[i], spec)
                except VnetdError as exc:
                    out[i] = exc
                    if stop_on_error:
                        break
                    continue
                made.append(i)
            failpoints.hit("after_create", "tap")
            msgs: list[tuple[int, int, bytes]] = []
            ends = []  # where each TAP's answers end: its set's and its read back are last
            for i in made:
                spec, change = items[i]
                msgs += fastlink.change_messages(
                    dataclasses.replace(change, alias=OWNER_ALIAS), name=spec.name,
                    no_ipv6_link_local=_no_link_local(spec, change), new=True)
                ends.append(len(msgs))
            answers = await self._link.exchange(msgs) if msgs else []
            marked = []
            for end, i in zip(ends, made, strict=True):
                done, got = answers[end - 2], answers[end - 1]
                failed = next((a for a in (done, got) if isinstance(a, NetlinkRequestError)),
                              None)
                if failed is not None:
                    out[i] = error_from_errno(failed.errno or errno.EIO,
                                              f"mark tap {items[i][0].name}")
                elif isinstance(got, list) and got:
                    out[i] = got[0]
                    marked.append(i)
            lone = [items[i][0].name for i in marked
                    if not items[i][0].ipv6 and not items[i][1].master]
            if lone:  # no bridge: see add_tap
                await self._worker_call("disable IPv6", tun.disable_ipv6_many, lone)
            failpoints.hit("after_mark", "tap")
            first_error = next((i for i, r in enumerate(out) if isinstance(r, VnetdError)),
                               len(items)) if stop_on_error else len(items)
            for i in marked:
                link = out[i]
                if i > first_error or not isinstance(link, Link):
                    out[i] = None  # not persistent: gone when its descriptor closes
                    continue
                try:
                    _tun_call(f"make tap {link.name} persistent", tun.make_persistent, fds[i])
                except VnetdError as exc:
                    out[i] = exc
                    if stop_on_error:
                        first_error = min(first_error, i)
                    continue
                out[i] = _persistent(link)
        finally:
            for fd in fds:
                os.close(fd)
        return out

    async def _take_tun_fds(self, count: int) -> list[int]:
        """`count` /dev/net/tun descriptors of the namespace, opened ahead by the worker.

        Opening them needs the worker thread (a descriptor belongs to the namespace of
        the thread that opens it); on a busy machine a hop to a thread waits for the
        scheduler for milliseconds, so the next ones are opened in the background
        while these are used."""
        while len(self._tun_fds) < count:
            # One refill at a time: concurrent callers wait for it instead of each
            # opening (and overwriting) a set of their own.
            async with self._tun_refill:
                if len(self._tun_fds) < count:
                    self._tun_fds.extend(await self._worker_call(
                        "open /dev/net/tun", tun.open_tun_fds,
                        max(TUN_FDS_AHEAD, count - len(self._tun_fds))))
        fds = self._tun_fds[len(self._tun_fds) - count:]
        del self._tun_fds[len(self._tun_fds) - count:]
        if len(self._tun_fds) < TUN_FDS_LOW and (self._tun_ahead is None
                                                 or self._tun_ahead.done()):
            self._tun_ahead = asyncio.create_task(self._open_ahead(), name="vnetd-tun-ahead")
        return fds

    async def _open_ahead(self) -> None:
        async with self._tun_refill:
            if len(self._tun_fds) < TUN_FDS_LOW:
                try:
                    self._tun_fds.extend(await self._worker_call(
                        "open /dev/net/tun", tun.open_tun_fds, TUN_FDS_AHEAD))
                except VnetdError:
                    return  # the next creation opens its own and reports the error

    async def set_tap_owner(self, spec: TapSpec) -> None:
        await self._worker_call(f"set owner of tap {spec.name}", tun.set_owner, spec)

    async def set_link(self, index: int, change: LinkChange) -> None:
        await self._call(f"set link #{index}", lambda: self._link.set_link(index, change))

    async def change_link(self, index: int, change: LinkChange) -> Link:
        return await self._call(f"set link #{index}",
                                lambda: self._link.change_link(change, index=index))

    async def get_links(self, names: Sequence[str]) -> list[Link | None]:
        try:
            return await self._link.get_links(names)
        except NetlinkRequestError as exc:
            raise error_from_errno(exc.errno or errno.EIO, f"get links {', '.join(names)}") from exc

    async def delete_link(self, index: int) -> None:
        """Delete one link; deletions that arrive together share one RTM_DELLINK.

        Unregistering a device waits for an RCU grace period (about 18 ms here)
        under the RTNL lock, so one-by-one deletion is capped near 50/s whatever
        the caller does. Deletions requested while one is running are gathered:
        each device is moved to a fresh random interface group, then the group
        is deleted in one request (one grace period for all of them).
        """
        future: asyncio.Future[None] = self._link.loop.create_future()
        self._deletes.append((index, future))
        if self._deleting is None or self._deleting.done():
            self._deleting = asyncio.create_task(self._run_deletes(), name="vnetd-deletes")
        await asyncio.shield(future)

    async def _run_deletes(self) -> None:
        while self._deletes:
            todo, self._deletes = self._deletes, []
            try:
                if len(todo) == 1:
                    await self._delete_one(*todo[0])
                else:
                    await self._delete_many(todo)
            except BaseException as exc:  # never leave a caller waiting forever
                for _, future in todo:
                    _settle(future, exc if isinstance(exc, Exception) else Unavailable(
                        "link deletion interrupted"))
                raise

    async def _blocking(self, what: str, msg_type: int, body: bytes) -> None:
        """A long request (a deletion) on the worker's own socket, off the event loop:
        while the kernel waits for a grace period, jobs go on and the next deletions
        gather into one batch."""
        if self._del_sock is None:
            self._del_sock = await self._worker.run(FastLink.open_socket)
        sock = self._del_sock
        try:
            await self._worker.run(fastlink.blocking_request, sock, msg_type, 0, body)
        except NetlinkRequestError as exc:
            raise error_from_errno(exc.errno or errno.EIO, what) from exc

    async def _delete_one(self, index: int, future: asyncio.Future[None]) -> None:
        try:
            await self._blocking(f"delete link #{index}", rtnl.RTM_DELLINK,
                                 rtnl.ifinfo(index))
        except VnetdError as exc:
            _settle(future, exc)
        else:
            _settle(future, None)

    async def _set_group(self, index: int, group: int) -> None:
        await self._call(f"delete link #{index}", lambda: self._link.set_group(index, group))

    async def _delete_many(self, todo: list[tuple[int, asyncio.Future[None]]]) -> None:
        group = CREATING_GROUP
        while group == CREATING_GROUP:  # 0 is the default group, CREATING_GROUP is taken
            group = secrets.randbelow(0x7FFFFF00) + 0x100
        moved = await asyncio.gather(*(self._set_group(index, group) for index, _ in todo),
                                     return_exceptions=True)
        members = []
        for (index, future), result in zip(todo, moved, strict=True):
            if isinstance(result, BaseException):
                _settle(future, result)
            else:
                members.append((index, future))
        if not members:
            return
        try:
            await self._blocking(f"delete group {group}", rtnl.RTM_DELLINK,
                                 rtnl.delete_group_body(group))
        except VnetdError:
            for index, future in members:  # e.g. a device kind without dellink: one by one
                await self._delete_one(index, future)
            return
        for _, future in members:
            _settle(future, None)

    async def disable_ipv6(self, name: str) -> None:
        await self._worker_call(f"disable IPv6 on {name}", tun.disable_ipv6, name)

    async def ipv6_states(self, names: Sequence[str]) -> list[Ipv6State | None]:
        return await self._worker_call("read IPv6 sysctls", ipv6conf.read_states, list(names))

    async def set_ipv6(self, link: Link, enabled: bool) -> None:
        """Off: disable_ipv6 first (it removes the addresses there are), then mode none.
        On: mode eui64 first, so that the link-local address the kernel makes when
        disable_ipv6 goes to 0 on a running link is generated at all."""
        if link.mtu < rtnl.IPV6_MIN_MTU:
            raise Unsupported(f"{link.name}: no IPv6 on a link with an MTU under "
                              f"{rtnl.IPV6_MIN_MTU} (the kernel keeps no IPv6 state for it)",
                              name=link.name, mtu=link.mtu)
        what = f"{'enable' if enabled else 'disable'} IPv6 on {link.name}"
        mode = rtnl.IN6_ADDR_GEN_MODE_EUI64 if enabled else rtnl.IN6_ADDR_GEN_MODE_NONE
        if not enabled:
            await self._worker_call(what, ipv6conf.write_disabled, link.name, True)
        await self._call(what, lambda: self._link.request(
            rtnl.RTM_NEWLINK, rtnl.NLM_F_ACK, rtnl.addr_gen_mode_body(link.index, mode)))
        if enabled:
            await self._worker_call(what, ipv6conf.write_disabled, link.name, False)

    async def default_route_interfaces(self) -> set[str]:
        indexes: set[int] = set()
        for family in (2, 10):  # AF_INET, AF_INET6
            try:
                async for route in await self._pyroute2().route("dump", family=family, dst_len=0):
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
        if self._tun_ahead is not None:
            await asyncio.gather(self._tun_ahead, return_exceptions=True)
        for fd in self._tun_fds:
            os.close(fd)
        self._tun_fds.clear()
        self._link.close()
        if self._del_sock is not None:
            self._del_sock.close()
        if self._ipr is not None:
            self._ipr.close()
        await self._worker.run(self._overlay.close)  # its socket lives on the worker
        self._worker.close()


def _no_link_local(spec: TapSpec, change: LinkChange) -> bool:
    # Under IPV6_MIN_MTU the kernel drops the device's IPv6 state when the MTU is
    # set, and the AF_INET6 part would fail the request (EAFNOSUPPORT).
    return not spec.ipv6 and (change.mtu is None or change.mtu >= rtnl.IPV6_MIN_MTU)


def _persistent(link: Link) -> Link:
    """A TAP read back before TUNSETPERSIST, which has just succeeded."""
    if link.tun is None:
        return link
    return dataclasses.replace(link, tun=dataclasses.replace(link.tun, persistent=True))


def _tun_call(what: str, fn: Callable[..., None], *args: object) -> None:
    try:
        fn(*args)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise error_from_errno(exc.errno, what) from exc


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
