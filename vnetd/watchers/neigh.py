"""The FDB/neighbour watcher: entries vnetd owns, changed outside vnetd, as events.

A control plane that sends full state repairs drift by re-sending; it needs to
know *when*. This watcher listens to RTNLGRP_NEIGH (FDB rows and ARP/ND entries)
and compares every notification about a VXLAN device vnetd manages with what
vnetd last wrote there (`handlers.overlay_state`, recorded by `fdb.converge`
before it writes). vnetd's own changes match that record and stay silent;
anything else is published:

- `fdb.changed` (table "remotes" or "fdb") and `neighbour.changed`, with
  `change` = "removed" (someone deleted an entry vnetd wrote), "changed" (it
  now points elsewhere) or "added" (an entry with vnetd's marker that vnetd did
  not write).

A removal is published a moment later, once the device is known to still
exist: deleting a VXLAN device deletes all its entries, and that is one
`link.removed`, not a removal of every entry.

On start (and after a receive overrun) it reads the owned devices' tables:
after a restart the kernel's owned entries are what vnetd wrote, and an
overrun's losses are found by comparing the record with the kernel.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

import structlog

from vnetd.contract.events import EventSink
from vnetd.handlers.context import Context
from vnetd.handlers.overlay_state import OverlayState, State
from vnetd.net import overlay_wire as w
from vnetd.supervisor import TaskTree

log = structlog.get_logger("vnetd.watchers.neigh")
MAX_DATAGRAMS_PER_WAKEUP = 256
REMOVAL_DELAY = 0.1
"""Seconds a removal waits, so a whole device's deletion is seen as that."""
_EVENT_TYPES = {"remotes": "fdb.changed", "fdb": "fdb.changed", "neighbours": "neighbour.changed"}


async def owned_state(ctx: Context, index: int) -> State:
    """What the kernel holds of vnetd's on device `index` (every table)."""
    overlay = ctx.net.overlay()
    state: State = {}
    for row in await overlay.fdb_entries(index):
        if row.owned and row.dst is not None:
            state[("remotes", row.dst) if row.flood else ("fdb", row.mac)] = \
                None if row.flood else row.dst
    for n in await overlay.neigh_entries(index):
        if n.owned:
            state[("neighbours", n.ip)] = n.mac
    return state


class NeighWatcher:
    name = "watcher.neigh"

    def __init__(self, ctx: Context, sink: EventSink,
                 open_socket: Callable[[], socket.socket]) -> None:
        self.ctx = ctx
        self.sink = sink
        self.state: OverlayState = ctx.overlay
        self._open = open_socket
        self._sock: socket.socket | None = None
        self._buf = bytearray(w.RECV_BYTES)
        """Reused for every datagram (one per notification): see overlay_wire.Wire.buf."""
        self._resync: asyncio.Task[None] | None = None
        self.overruns = 0
        self.reported = 0
        self._removals: list[tuple[int, str, str, str | None]] = []
        self._flush: asyncio.Task[None] | None = None
        self.tasks = TaskTree(self.name)
        """Its short tasks (a resync after an overrun, a delayed flush) are supervised too."""

    async def start(self) -> None:
        self._sock = self._open()
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._on_readable)
        await self._sync(report=False)

    async def stop(self) -> None:
        await self.tasks.stop()
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    async def _sync(self, *, report: bool) -> None:
        """Read every owned VXLAN device's table; with `report`, publish what is missing."""
        for link in await self.ctx.net.list_links():
            if link.kind != "vxlan" or not link.owned:
                continue
            have = await owned_state(self.ctx, link.index)
            expected = self.state.devices.get(link.index)
            if expected is None:
                self.state.set(link.index, link.name, have, {"remotes", "fdb", "neighbours"})
            elif report:
                for key, value in expected.items():
                    if key not in have:
                        self._emit(link.index, key[0], key[1], "removed", value, None)
                    elif have[key] != value:
                        self._emit(link.index, key[0], key[1], "changed", value, have[key])

    def _on_readable(self) -> None:
        if self._sock is None:
            return
        for _ in range(MAX_DATAGRAMS_PER_WAKEUP):
            try:
                data = w.recv_datagram(self._sock, self._buf)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # notifications lost: compare with the kernel
                    self.overruns += 1
                    if self._resync is None or self._resync.done():
                        # Run again (backoff) if it fails: the overrun's losses are
                        # found only by this comparison.
                        self._resync = self.tasks.spawn(
                            "resync", lambda: self._sync(report=True), oneshot=True, restart=True)
                    continue
                raise
            devices = self.state.devices
            for mtype, _flags, _seq, payload in w.messages(data):
                if w.notice_index(payload) not in devices:
                    continue  # the bridges' FDB churn, other devices: not decoded at all
                try:
                    notice = w.parse_notice(mtype, payload)
                except Exception:  # never let one odd message stop the watcher
                    log.exception("neigh_notice_unparsable", type=mtype)
                    continue
                if notice is not None:
                    self.feed(notice)

    def feed(self, n: w.NeighNotice) -> None:
        expected = self.state.devices.get(n.index)
        if expected is None:
            return  # not a device vnetd manages the tables of
        key = (n.table, n.key)
        if n.deleted:
            if n.table == "neighbours":
                # A deleted neighbour is first marked FAILED and loses its address: the
                # notice cannot show the marker. vnetd drops its own from the record
                # before deleting them, so a key still recorded was deleted by someone else.
                wrote = True
            else:
                # Only the row vnetd wrote: when vnetd moves a MAC it may delete an extra
                # row of it (another VTEP) first, and that is not drift.
                wrote = expected.get(key, "-") == n.value and (n.owned or n.table == "remotes")
            if key in expected and wrote:
                self._removals.append((n.index, n.table, n.key, expected[key]))
                if self._flush is None or self._flush.done():
                    self._flush = self.tasks.spawn("flush", lambda: self.flush(REMOVAL_DELAY),
                                                   oneshot=True)
        elif n.owned:
            if key not in expected:
                self._emit(n.index, n.table, n.key, "added", None, n.value)
            elif expected[key] != n.value:
                self._emit(n.index, n.table, n.key, "changed", expected[key], n.value)

    async def settle(self) -> None:
        """Wait until the removals seen so far are published (or dropped)."""
        while self._flush is not None and not self._flush.done():
            await self._flush

    async def flush(self, delay: float = 0.0) -> None:
        """Publish the removals gathered, except those of devices that are gone."""
        await asyncio.sleep(delay)
        todo, self._removals = self._removals, []
        alive: dict[int, bool] = {}
        for index, table, key, expected in todo:
            if index not in alive:
                link = await self.ctx.net.get_link_by_index(index)
                alive[index] = link is not None and link.kind == "vxlan"
                if not alive[index]:
                    self.state.forget(index)
            if alive[index]:
                self._emit(index, table, key, "removed", expected, None)

    def _emit(self, index: int, table: str, key: str, change: str, expected: str | None,
              current: str | None) -> None:
        self.reported += 1
        name = self.state.names.get(index)
        data: dict[str, Any] = {"interface": name, "index": index, "table": table,
                                "change": change, "outside_vnetd": True}
        if table == "remotes":
            data["dst"] = key
        elif table == "fdb":
            data.update(mac=key, expected_dst=expected, dst=current)
        else:
            data.update(ip=key, expected_mac=expected, mac=current)
        self.sink.emit(_EVENT_TYPES[table], name, data)
