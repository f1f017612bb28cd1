"""Domain events that concern networking: which guest NIC a vnetd TAP or bridge carries.

libvirt tells the watcher when a domain starts or stops and when a device is added to or
removed from a running one (its device-added/removed events name the device's alias).
For the NICs that concern vnetd (an interface on a network vnetd defined, on a bridge
vnetd owns, directly or through a libvirt network, or on a TAP vnetd owns: Nova's
pre-made one) this publishes, with the watcher's sequence and epoch:

    domain.started            {name, uuid, reason, interfaces: [interface...]}
    domain.stopped            {name, uuid, reason, interfaces: [interface...]}
    domain.interface.added    {name, uuid, interface}
    domain.interface.removed  {name, uuid, interface}

where an interface is {alias, mac, type, target (the TAP/macvtap), network, bridge,
source_dev}. Domains with no such NIC are tracked (a NIC may be plugged into vnetd's
world later) but produce no events. A stopped domain's or removed NIC's facts come from
what was seen while it ran: libvirt has forgotten them by then.

Callbacks only enqueue; one task handles the queue in order, reading each domain's live
XML through the backend's thread pool. After a reconnect a resync marker in the same
queue rereads every domain and publishes the differences with `"resync": true`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from vnetd.handlers.context import Context
from vnetd.handlers.network import view
from vnetd.virt.backend import DomainInterface, DomainState, NetworkState, VirtBackend, VirtError

log = structlog.get_logger(__name__)

_EVENT_TYPES = {"started": "domain.started", "stopped": "domain.stopped",
                "added": "domain.interface.added", "removed": "domain.interface.removed"}
_RESYNC = "resync"


@dataclass
class Running:
    """A running domain as last seen: every NIC by key, and the keys that concern vnetd."""

    name: str
    uuid: str
    interfaces: dict[str, DomainInterface] = field(default_factory=dict)
    ours: set[str] = field(default_factory=set)

    def ours_data(self) -> list[dict[str, str | None]]:
        return [self.interfaces[k].data() for k in sorted(self.ours)]


def key_of(iface: DomainInterface) -> str:
    """The alias (what device events name), else the MAC, else the host device."""
    return iface.alias or iface.mac or iface.target or iface.type


class DomainTracker:
    def __init__(self, ctx: Context, networks: Callable[[], Mapping[str, NetworkState]]) -> None:
        self.ctx = ctx
        self._networks = networks
        self.running: dict[str, Running] = {}
        self._queue: asyncio.Queue[tuple[str, str, str, str]] = asyncio.Queue()

    # ------------------------------------------------------------ input (event loop)
    def on_event(self, uuid: str, name: str, event: str, detail: str) -> None:
        self._queue.put_nowait((uuid, name, event, detail))

    def request_resync(self, *, emit: bool) -> None:
        """Reread every domain, in order with the events already queued."""
        self._queue.put_nowait(("", "", _RESYNC, "emit" if emit else ""))

    async def run(self, backend: VirtBackend) -> None:
        while True:
            uuid, name, event, detail = await self._queue.get()
            try:
                if event == _RESYNC:
                    await self.resync(await backend.list_domains(), emit=detail == "emit")
                else:
                    await self.handle(backend, uuid, name, event, detail)
            except VirtError as exc:  # connection going away: the resync after it catches up
                log.info("libvirt_domain_event_skipped", domain=name, event=event,
                         error=exc.message)
            except Exception:  # a broken sink or a surprise must not kill the watcher
                log.exception("libvirt_domain_event_failed", domain=name, event=event)

    # ------------------------------------------------------------ what concerns vnetd
    async def _owned_link(self, name: str) -> bool:
        try:
            link = await self.ctx.net.get_link(name)
        except Exception:  # unknown: not claimed as vnetd's
            log.warning("libvirt_domain_link_lookup_failed", link=name, exc_info=True)
            return False
        return link is not None and link.owned

    async def ours(self, iface: DomainInterface) -> bool:
        bridge = iface.bridge
        net = self._networks().get(iface.network) if iface.network else None
        if net is not None:
            summary = view(net)
            if summary.get("owned"):
                return True
            bridge = bridge or (str(summary["bridge"]) if summary.get("bridge") else None)
        for dev in (bridge, iface.target):
            if dev and await self._owned_link(dev):
                return True
        return False

    async def _running(self, state: DomainState) -> Running:
        r = Running(state.name, state.uuid)
        for iface in state.interfaces:
            k = key_of(iface)
            r.interfaces[k] = iface
            if await self.ours(iface):
                r.ours.add(k)
        return r

    # ------------------------------------------------------------ events
    def _emit(self, kind: str, r: Running, **data: Any) -> None:
        self.ctx.events.emit(_EVENT_TYPES[kind], r.name, {"name": r.name, "uuid": r.uuid,
                                                          **data})

    async def handle(self, backend: VirtBackend, uuid: str, name: str, event: str,
                     detail: str) -> None:
        if event == "started":
            await self._started(backend, uuid, detail)
        elif event == "stopped":
            gone = self.running.pop(uuid, None)
            if gone is not None and gone.ours:
                self._emit("stopped", gone, reason=detail, interfaces=gone.ours_data())
        elif event == "device-added":
            await self._added(backend, uuid, detail)
        elif event == "device-removed":
            self._removed(uuid, detail)

    async def _started(self, backend: VirtBackend, uuid: str, reason: str) -> None:
        state = await backend.get_domain(uuid)
        if state is None or not state.active:
            return  # gone again already: its stopped event finds nothing to report
        r = self.running[uuid] = await self._running(state)
        if r.ours:
            self._emit("started", r, reason=reason, interfaces=r.ours_data())

    async def _added(self, backend: VirtBackend, uuid: str, alias: str) -> None:
        state = await backend.get_domain(uuid)
        if state is None or not state.active:
            return
        iface = next((i for i in state.interfaces if i.alias == alias), None)
        known = self.running.get(uuid)
        if known is None:  # not seen starting (e.g. just reconnected): take it as it is now
            known = self.running[uuid] = await self._running(state)
            if iface is not None and key_of(iface) in known.ours:
                self._emit("added", known, interface=iface.data())
            return
        if iface is None:
            return  # not a NIC (a disk, a controller...)
        k = key_of(iface)
        known.interfaces[k] = iface
        if await self.ours(iface):
            known.ours.add(k)
            self._emit("added", known, interface=iface.data())

    def _removed(self, uuid: str, alias: str) -> None:
        known = self.running.get(uuid)
        if known is None or alias not in known.interfaces:
            return
        iface = known.interfaces.pop(alias)
        if alias in known.ours:
            known.ours.discard(alias)
            self._emit("removed", known, interface=iface.data())

    async def resync(self, states: list[DomainState], *, emit: bool) -> None:
        """Replace what is known; with `emit`, publish every difference."""
        now = {s.uuid: await self._running(s) for s in states if s.active}
        before, self.running = self.running, now
        if not emit:
            return
        for uuid, gone in before.items():
            if uuid not in now and gone.ours:
                self._emit("stopped", gone, reason="unknown", interfaces=gone.ours_data(),
                           resync=True)
        for uuid, r in now.items():
            old = before.get(uuid)
            if old is None:
                if r.ours:
                    self._emit("started", r, reason="unknown", interfaces=r.ours_data(),
                               resync=True)
                continue
            for k in sorted(old.ours):
                if k not in r.ours or r.interfaces[k] != old.interfaces[k]:
                    self._emit("removed", old, interface=old.interfaces[k].data(), resync=True)
            for k in sorted(r.ours):
                if k not in old.ours or r.interfaces[k] != old.interfaces[k]:
                    self._emit("added", r, interface=r.interfaces[k].data(), resync=True)

    # ------------------------------------------------------------ host.snapshot
    def snapshot(self) -> list[dict[str, Any]]:
        """Running domains with NICs on vnetd's networks, bridges or TAPs, as last seen."""
        return [{"name": r.name, "uuid": r.uuid, "interfaces": r.ours_data()}
                for r in sorted(self.running.values(), key=lambda r: r.name) if r.ours]
