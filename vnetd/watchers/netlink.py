"""The netlink watcher: the kernel's links and addresses as events.

Keeps a view of every link and address of the target namespace, fed by its
own subscribed netlink socket (net/monitor.py). Each notification is compared
with the view: one event per real change, in the kernel's order, and none for
the kernel's duplicate notifications of an unchanged state (they coalesce).
`link.changed` carries what changed and the previous values.

Loss: on ENOBUFS (or a broker reconnect, or an explicit request) the watcher
reopens its socket, dumps links and addresses on it (the answers arrive in
order with the notifications, so applying everything in order gives an exact
table), diffs against the view, emits the missing changes as ordinary events
and then `host.resync`.

Only the socket's readable callback and one resync task do any work; emit
never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from vnetd import metrics
from vnetd.contract.errors import Unavailable
from vnetd.contract.events import EventSink
from vnetd.handlers.views import link_view
from vnetd.net.model import Link
from vnetd.net.monitor import (
    Address,
    AddressEvent,
    Control,
    LinkEvent,
    Message,
    Overrun,
    Superseded,
)
from vnetd.supervisor import TaskTree

log = structlog.get_logger("vnetd.watchers.netlink")

AddrKey = tuple[int, str, str, int]
SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
# (Link attribute, name in the event's data); order = order of `changes`.
TRACKED = (("name", "name"), ("kind", "kind"), ("up", "state"), ("oper_state", "oper_state"),
           ("carrier", "carrier"), ("mtu", "mtu"), ("mac", "mac"), ("master", "master"),
           ("alias", "alias"), ("bridge", "bridge"), ("tun", "tap"))
MAX_DATAGRAMS_PER_WAKEUP = 2048
"""Most datagrams in one read (one batch). It was 256: with a loop cycle of 10-50 ms
on a loaded 2-core machine, one read per cycle took at most 256 of the 150-1,000
notifications that arrived meanwhile at 15,000-20,000 changes/s, so the socket filled
(ENOBUFS) while the daemon had CPU to spare. 2,048 TAP notifications are about 2.3 MB
of payload (4.7 MB of the socket's 8 MB buffer); superseded ones are not decoded
(net/monitor.py), so a big read costs about its number of distinct links."""
READ_PAUSE = 0.001
"""Seconds the socket rests after each read, so notifications arrive in batches."""
BACKLOG_FREE = 256
"""Events waiting in the bus that add no rest: what the publisher takes in one go."""
BACKLOG_PAUSE_PER_EVENT = 1e-5
"""Extra rest per event waiting in the bus beyond BACKLOG_FREE: while the broker is the
limit, reads grow and merge more changes of each link into one event (no more events
than the broker takes, instead of a backlog that grows)."""
MAX_PAUSE = 0.05
"""The longest rest: at 20,000 TAP changes/s about 2.3 MB of the socket's buffer."""
START_TIMEOUT = 60.0
"""Seconds the first dump may take before the daemon gives up starting."""
SNAPSHOT_TIMEOUT = 10.0
"""Seconds host.snapshot waits for the watcher's view before answering `unavailable`."""


class _Quiet:
    """Swallows events while a batch is applied; the batch's diff is emitted after."""

    def emit(self, type: str, subject: str | None, data: dict[str, Any]) -> None:
        return None


_QUIET = _Quiet()
SNAPSHOT = "snapshot"
_NO_NAMES: dict[int, str] = {}


class Monitor(Protocol):
    """What the watcher needs of its socket (net.monitor.MonitorSocket)."""

    async def open(self) -> int: ...
    def request_dump(self, what: Any) -> int: ...
    def read(self, max_datagrams: int = ...) -> list[Message]: ...
    def close(self) -> None: ...


def address_data(addr: Address, interface: str | None) -> dict[str, Any]:
    return {
        "interface": interface,
        "index": addr.index,
        "family": addr.family,
        "address": addr.address,
        "prefixlen": addr.prefixlen,
        "scope": SCOPES.get(addr.scope, str(addr.scope)),
    }


_TRACKED_VALUES = operator.attrgetter(*(attr for attr, _ in TRACKED))
_TRACKED_KEYS = tuple(key for _, key in TRACKED)


def link_changes(before: Link, after: Link) -> list[str]:
    old, new = _TRACKED_VALUES(before), _TRACKED_VALUES(after)
    changes = [] if old == new else [
        key for key, a, b in zip(_TRACKED_KEYS, old, new, strict=True) if a != b]
    if before.owned != after.owned:
        changes.append("owned")
    return changes


class NetlinkWatcher:
    name = "watcher.netlink"

    def __init__(self, monitor: Monitor, sink: EventSink, *,
                 loop_reader: bool = True, backlog: Callable[[], int] | None = None) -> None:
        self.monitor = monitor
        self.sink = sink
        self.backlog = backlog
        """Events emitted and not yet taken by the publisher (the bus's `pending`)."""
        self.links: dict[int, Link] = {}
        self._owned: Counter[str] = Counter()
        """Owned links in `links` by kind, kept as the view changes (metrics read it)."""
        self.addrs: dict[AddrKey, Address] = {}
        self.overruns = 0
        self.resyncs = 0
        self.state = "stopped"
        self._loop_reader = loop_reader
        self._fd: int | None = None
        self._synced = asyncio.Event()
        self._resync_reason: str | None = None
        self.tasks = TaskTree(self.name)
        self.snapshot_timeout = SNAPSHOT_TIMEOUT
        self._dump_seq: int | None = None
        self._dump_what: str | None = None
        self._dump_interrupted = False
        self._next_links: dict[int, Link] = {}
        self._next_addrs: dict[AddrKey, Address] = {}
        self._resync_started = 0.0
        self._first_sync = True

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open, dump, fill the view (no events for what already exists)."""
        self.request_resync("start")
        try:
            await asyncio.wait_for(self.wait_synced(), START_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(
                f"the netlink watcher's first dump did not finish in {START_TIMEOUT:g}s") from None

    async def stop(self) -> None:
        self.state = "stopped"
        await self.tasks.stop()
        self._remove_reader()
        self.monitor.close()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def owned_counts(self) -> dict[str, int]:
        """Links vnetd owns, by kind, in the current view: O(kinds), not O(links)."""
        return {kind: n for kind, n in self._owned.items() if n > 0}

    # ------------------------------------------------------------ resync
    def request_resync(self, reason: str) -> None:
        """Reopen the socket, dump, diff, publish the differences and host.resync."""
        if self.state == "stopped" and reason != "start":
            return
        if self._resync_reason is not None:
            if self._resync_reason == SNAPSHOT:
                self._resync_reason = reason  # it will report host.resync for this one
            return  # one is already under way (its dump starts after this loss)
        self._resync_reason = reason
        self._synced.clear()
        self.state = "resyncing"
        # Ends once the socket is open and the dump asked for; one that fails is run
        # again (with backoff) so the watcher is not left without a socket.
        self.tasks.spawn("resync", self._reopen, oneshot=True, restart=True, replace=True)

    async def _reopen(self) -> None:
        self._remove_reader()
        while True:
            try:
                fd = await self.monitor.open()
                break
            except OSError as exc:
                log.warning("netlink_watcher_open_failed", error=str(exc))
                await asyncio.sleep(1.0)
        self._fd = fd
        self._resync_started = time.perf_counter()
        self._begin_dump("link")
        if self._loop_reader:
            asyncio.get_running_loop().add_reader(fd, self.on_readable)

    def _begin_dump(self, what: str) -> None:
        if what == "link":
            self._next_links, self._next_addrs = {}, {}
        self._dump_what = what
        self._dump_interrupted = False
        self._dump_seq = self.monitor.request_dump(what)

    def _remove_reader(self) -> None:
        if self._fd is not None and self._loop_reader:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._fd)
        self._fd = None

    # ------------------------------------------------------------ reading
    def on_readable(self) -> None:
        """The socket has data: read what is there, apply, emit. Never raises.

        Then the socket rests for READ_PAUSE: what the kernel says meanwhile waits
        in its buffer and is read, and merged, in one go (see feed_batch). Under
        load this turns the several notifications of each job into one event at
        the cost of at most READ_PAUSE of latency; a dump is never paused. While
        events wait for the publisher (the broker is slower than the kernel) the
        rest grows with their number, up to MAX_PAUSE: those events are late
        anyway, and the longer reads merge more.
        """
        self._read_once()
        fd = self._fd
        if self._loop_reader and fd is not None and self._dump_seq is None and READ_PAUSE:
            loop = asyncio.get_running_loop()
            loop.remove_reader(fd)
            loop.call_later(self.pause(), self._resume_reading, fd)

    def pause(self) -> float:
        """How long the socket rests after a read: READ_PAUSE, longer while the bus
        holds more than BACKLOG_FREE events for the publisher (at most MAX_PAUSE)."""
        excess = self.backlog() - BACKLOG_FREE if self.backlog is not None else 0
        if excess <= 0:
            return READ_PAUSE
        return min(MAX_PAUSE, READ_PAUSE + excess * BACKLOG_PAUSE_PER_EVENT)

    def _resume_reading(self, fd: int) -> None:
        if self._fd == fd:  # not closed or reopened meanwhile
            asyncio.get_running_loop().add_reader(fd, self.on_readable)

    def _read_once(self) -> int:
        """One read-and-apply round; returns how many messages it handled (-1: lost)."""
        try:
            msgs = self.monitor.read(MAX_DATAGRAMS_PER_WAKEUP)
        except Overrun:
            self.overruns += 1
            metrics.NETLINK_OVERRUNS.inc()
            log.warning("netlink_overrun", overruns=self.overruns,
                        during_resync=self._dump_seq is not None)
            self._restart_resync("netlink_overrun")
            return -1
        except OSError as exc:
            log.warning("netlink_watcher_read_failed", error=str(exc))
            self._restart_resync("netlink_error")
            return -1
        try:
            self.feed_batch(msgs)
        except Exception:
            log.exception("netlink_watcher_failed")
            self._restart_resync("watcher_error")
            return -1
        return len(msgs)

    def _restart_resync(self, reason: str) -> None:
        # Whatever this socket still held is lost with it: the dump that follows
        # re-reads the kernel, and the diff against the view publishes the rest.
        self._dump_seq = None
        self._resync_reason = None
        if self._first_sync:
            reason = "start"
        self.request_resync(reason)

    def feed_batch(self, msgs: list[Message]) -> None:
        """Apply one read's worth of notifications, one event per object that changed.

        The kernel announces a TAP being created, marked, attached and brought up
        as several notifications within microseconds; what was read in one go is
        compared as a whole with the view, so a subscriber gets the net change
        (`link.added` with the final state, one `link.changed` listing every field
        that changed). At low load a read holds one notification and nothing is
        merged; under load reads grow and the event stream shrinks with them.
        A `Superseded` notification (not decoded: a later one of the read tells
        the link's state) only keeps the link's place in the order of the events.
        """
        if self._dump_seq is not None or len(msgs) < 2:
            self.feed(msgs)
            return
        before_links: dict[int, Link | None] = {}
        before_addrs: dict[AddrKey, Address | None] = {}
        names: dict[int, str] = {}
        # The addresses of each link in the batch: one pass over the view's addresses
        # (not one per link: a read holds up to MAX_DATAGRAMS_PER_WAKEUP links).
        by_link: dict[int, list[AddrKey]] = {}
        for key in self.addrs:
            by_link.setdefault(key[0], []).append(key)
        for msg in msgs:
            if isinstance(msg, LinkEvent | Superseded):
                idx = msg.link.index if isinstance(msg, LinkEvent) else msg.index
                if idx not in before_links:
                    before_links[idx] = self.links.get(idx)
                    old = before_links[idx]
                    if old is not None:
                        names[idx] = old.name
                    for key in by_link.get(idx, ()):
                        before_addrs.setdefault(key, self.addrs[key])
            elif isinstance(msg, AddressEvent):
                before_addrs.setdefault(msg.address.key, self.addrs.get(msg.address.key))
        sink, self.sink = self.sink, _QUIET
        try:
            self.feed(msgs)
        finally:
            self.sink = sink
        self._emit_diff(before_links, before_addrs, names)

    def feed(self, msgs: list[Message]) -> None:
        """Apply decoded messages in order, one event per message that changes the view."""
        for msg in msgs:
            if self._dump_seq is not None:
                self._feed_resync(msg)
            elif isinstance(msg, LinkEvent):
                self._apply_link(msg)
            elif isinstance(msg, AddressEvent):
                self._apply_addr(msg)

    # ------------------------------------------------------------ live updates
    # Each notification is compared with the view at once: one event per real
    # change, none for the kernel's repeats of the same state.
    def _apply_link(self, msg: LinkEvent) -> None:
        link = msg.link
        idx = link.index
        before = self.links.get(idx)
        if before is link and not msg.deleted:
            return  # the decoder's answer to a repeat of the last state (net/linkcache.py)
        if before is not None and before.owned:
            self._owned[before.kind] -= 1
        # Inside a batch (feed_batch) only the view changes: the batch's diff makes the
        # events, so building them here would be thrown away.
        quiet = self.sink is _QUIET
        if msg.deleted:
            if before is None:
                return
            del self.links[idx]
            names = {idx: before.name}
            for key in [k for k in self.addrs if k[0] == idx]:
                gone = self.addrs.pop(key)
                if not quiet:
                    self.sink.emit("address.removed", before.name,
                                   address_data(gone, before.name))
            if not quiet:
                self.sink.emit("link.removed", before.name, self._view(before, names))
            return
        self.links[idx] = link
        if link.owned:
            self._owned[link.kind] += 1
        if quiet:
            return
        if before is None:
            self.sink.emit("link.added", link.name, self._view(link, _NO_NAMES))
            return
        self._emit_changed(before, link, _NO_NAMES)

    def _apply_addr(self, msg: AddressEvent) -> None:
        addr = msg.address
        key = addr.key
        quiet = self.sink is _QUIET
        if msg.deleted:
            if self.addrs.pop(key, None) is None or quiet:
                return
            name = self._name(addr.index, _NO_NAMES)
            self.sink.emit("address.removed", name, address_data(addr, name))
        elif addr.index in self.links and key not in self.addrs:
            self.addrs[key] = addr
            if quiet:
                return
            name = self._name(addr.index, _NO_NAMES)
            self.sink.emit("address.added", name, address_data(addr, name))
        elif addr.index in self.links:
            self.addrs[key] = addr  # same address, other flags: not a change we report

    def _emit_changed(self, before: Link, after: Link, names: dict[int, str]) -> bool:
        changes = link_changes(before, after)
        if not changes:
            return False
        data = self._view(after, names)
        old = self._view(before, names)
        data["changes"] = changes
        data["previous"] = {k: old[k] for k in changes if k in old}
        self.sink.emit("link.changed", after.name, data)
        return True

    def _name(self, index: int | None, names: dict[int, str]) -> str | None:
        if index is None:
            return None
        link = self.links.get(index)
        return link.name if link is not None else names.get(index)

    def _view(self, link: Link, names: dict[int, str]) -> dict[str, Any]:
        return link_view(link, self._name(link.master, names))

    def _emit_diff(self, links: dict[int, Link | None], addrs: dict[AddrKey, Address | None],
                   names: dict[int, str]) -> int:
        """Events for every object whose state differs from `links`/`addrs` (before)."""
        emit = self.sink.emit
        count = 0
        removed: list[Link] = []
        for idx, before in links.items():
            after = self.links.get(idx)
            if after is None:
                if before is not None:
                    removed.append(before)
                continue
            if before is None:
                emit("link.added", after.name, self._view(after, names))
                count += 1
                continue
            if self._emit_changed(before, after, names):
                count += 1
        for key, prev in addrs.items():
            now = self.addrs.get(key)
            if (now is None) == (prev is None):
                continue  # unchanged, or came and went within the batch
            addr = now or prev
            if addr is None:  # both None was skipped just above
                continue
            name = self._name(addr.index, names)
            emit("address.added" if now is not None else "address.removed", name,
                 address_data(addr, name))
            count += 1
        for before in removed:
            emit("link.removed", before.name, self._view(before, names))
            count += 1
        return count

    # ------------------------------------------------------------ resync (dump) mode
    def _feed_resync(self, msg: Message) -> None:
        if isinstance(msg, LinkEvent):
            if msg.deleted:
                self._next_links.pop(msg.link.index, None)
                for key in [k for k in self._next_addrs if k[0] == msg.link.index]:
                    del self._next_addrs[key]
            else:
                self._next_links[msg.link.index] = msg.link
        elif isinstance(msg, AddressEvent):
            if msg.deleted:
                self._next_addrs.pop(msg.address.key, None)
            else:
                self._next_addrs[msg.address.key] = msg.address
        elif isinstance(msg, Control) and msg.seq == self._dump_seq:
            if msg.kind == "interrupted":
                self._dump_interrupted = True
            elif msg.kind == "error":
                log.warning("netlink_dump_failed", what=self._dump_what, errno=msg.error)
                self._begin_dump("link")
            elif msg.interrupted or self._dump_interrupted:
                # NLM_F_DUMP_INTR: the table changed while it was dumped; take it again.
                self._begin_dump("link")
            elif self._dump_what == "link":
                self._begin_dump("addr")
            else:
                self._finish_resync()

    def _finish_resync(self) -> None:
        reason = self._resync_reason or "unknown"
        self._dump_seq = None
        self._resync_reason = None
        before_links: dict[int, Link | None] = dict(self.links)
        before_addrs: dict[AddrKey, Address | None] = dict(self.addrs)
        names = {idx: link.name for idx, link in self.links.items()}
        self.links = self._next_links
        self._owned = Counter(link.kind for link in self.links.values() if link.owned)
        self.addrs = {k: a for k, a in self._next_addrs.items() if k[0] in self.links}
        self._next_links, self._next_addrs = {}, {}
        for idx in self.links:
            before_links.setdefault(idx, None)
        for key in self.addrs:
            before_addrs.setdefault(key, None)
        took = time.perf_counter() - self._resync_started
        if self._first_sync:
            self._first_sync = False
            changes = 0
        elif reason == SNAPSHOT:
            changes = self._emit_diff(dict(sorted(before_links.items())), before_addrs, names)
        else:
            ordered = dict(sorted(before_links.items()))
            changes = self._emit_diff(ordered, before_addrs, names)
            self.resyncs += 1
            metrics.RESYNCS.labels(reason=reason).inc()
            self.sink.emit("host.resync", None, {
                "reason": reason,
                "changes": changes,
                "links": len(self.links),
                "addresses": len(self.addrs),
                "overruns": self.overruns,
                "message": "state re-read from the kernel; the events before this one "
                           "brought the view up to date",
            })
        self.state = "synced"
        self._synced.set()
        (log.debug if reason == SNAPSHOT else log.info)(
            "netlink_synced", reason=reason, changes=changes, links=len(self.links),
                 addresses=len(self.addrs), took_ms=round(took * 1000, 1))

    # ------------------------------------------------------------ snapshot
    async def refresh(self) -> None:
        """Dump on the watcher's own socket and publish any difference.

        Some kernel state changes without a notification (a TAP's carrier while it
        is down, TUNSETPERSIST/TUNSETOWNER after creation): a dump finds them.
        """
        await self.wait_synced()
        if self._resync_reason is None and self._fd is not None:
            self._resync_reason = SNAPSHOT
            self._synced.clear()
            self.state = "resyncing"
            self._resync_started = time.perf_counter()
            self._begin_dump("link")
        await self.wait_synced()

    def snapshot_provider(self, position: Callable[[], dict[str, Any]]
                          ) -> Callable[[], Awaitable[dict[str, Any]]]:
        """For host.snapshot: links and addresses from the view, with the stream position.

        A dump on the watcher's socket brings the view up to date (differences
        become ordinary events first); the view and the position are then read
        together on the event loop, so every event up to `sequence` is in the
        view and every later change comes with a larger sequence.
        """
        async def provide() -> dict[str, Any]:
            try:
                await asyncio.wait_for(self.refresh(), self.snapshot_timeout)
            except TimeoutError:
                raise Unavailable(
                    f"the event watcher's view of the kernel was not up to date within "
                    f"{self.snapshot_timeout:g}s (state {self.state}); try again",
                    state=self.state) from None
            names: dict[int, str] = {}
            return {
                "links": [self._view(link, names) for _, link in sorted(self.links.items())],
                "addresses": [address_data(a, self._name(a.index, names))
                              for _, a in sorted(self.addrs.items())],
                "events": position(),
            }
        return provide
