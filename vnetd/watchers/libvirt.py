"""The libvirt watcher: owns the connection to libvirtd, its events and its health.

It opens the connection (libvirtaio registered first), subscribes to network
lifecycle events and turns them into `network.defined|undefined|started|stopped`
events with the network's state as data. libvirt drops callbacks when its
connection closes, so on loss (close callback, keepalive timeout, or a failed
open) it reports `degraded`, reconnects with exponential backoff, registers the
callbacks again, rereads the network list and emits what changed while it was
away (`"resync": true` in the data). It also adds `networks` to host.snapshot.
Domain events that concern networking (a guest's NIC on vnetd's networks, bridges
or TAPs) come through the same connection: see watchers/libvirt_domains.py; their
running domains are host.snapshot's `domains`.

Callbacks only enqueue; one task turns the queue into events in order. An event that
one of vnetd's own changes caused is published with the state that change led to (the
job read the network just before it; see LibvirtBackend.event_state): in a network's
define + start + destroy + undefine the watcher calls libvirtd not once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from vnetd import metrics
from vnetd.handlers.context import Context
from vnetd.handlers.host import note_error
from vnetd.handlers.network import view
from vnetd.supervisor import TaskTree
from vnetd.virt.backend import NetworkState, VirtError
from vnetd.virt.libvirt_backend import LibvirtBackend
from vnetd.watchers.libvirt_domains import DomainTracker

log = structlog.get_logger(__name__)

STATE_KEY = "libvirt"
SNAPSHOT_TIMEOUT = 10.0
"""Seconds host.snapshot waits for libvirtd's network list (a hung libvirtd)."""
_EVENT_TYPES = {"defined": "network.defined", "undefined": "network.undefined",
                "started": "network.started", "stopped": "network.stopped"}


class LibvirtWatcher:
    name = "libvirt"

    def __init__(self, backend: LibvirtBackend, ctx: Context, states: dict[str, str], *,
                 reconnect_max_seconds: float = 30.0, reconnect_min_seconds: float = 0.2) -> None:
        self.backend = backend
        self.ctx = ctx
        self.states = states
        self.max_delay = reconnect_max_seconds
        self.min_delay = min(reconnect_min_seconds, reconnect_max_seconds)
        self.known: dict[str, NetworkState] = {}
        self.connections = 0
        self._queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        self._lost = asyncio.Event()
        self.tasks = TaskTree(self.name)
        self.snapshot_timeout = SNAPSHOT_TIMEOUT
        self.domains = DomainTracker(ctx, lambda: self.known)

    # ------------------------------------------------------------ Component
    async def start(self) -> None:
        self._set_state("connecting")
        if not await self._connect_once(first=True):
            self._lost.set()  # not fatal: the supervisor keeps trying
        # Either one dying would freeze what host.health and the events say about
        # libvirt: both are restarted (with backoff), and degrade the daemon meanwhile.
        self.tasks.spawn("reconnect", self._supervise, restart=True)
        self.tasks.spawn("events", self._drain_events, restart=True)
        self.tasks.spawn("domains", lambda: self.domains.run(self.backend), restart=True)

    async def stop(self) -> None:
        await self.tasks.stop()
        with contextlib.suppress(Exception):
            await self.backend.close()
        self.backend.shutdown()
        self._set_state("stopped")

    # ------------------------------------------------------------ connection
    def _set_state(self, state: str) -> None:
        self.states[STATE_KEY] = state
        metrics.CONNECTION_UP.labels(dependency="libvirt").set(1 if state == "connected" else 0)

    def _on_event(self, name: str, event: str) -> None:
        self._queue.put_nowait((name, event))

    def _on_close(self, reason: str) -> None:
        log.warning("libvirt_connection_lost", reason=reason, uri=self.backend.uri)
        note_error(self.states, STATE_KEY, f"connection to {self.backend.uri} lost: {reason}")
        self._set_state("degraded")
        self._lost.set()

    async def _connect_once(self, *, first: bool = False) -> bool:
        try:
            await self.backend.open(self._on_event, self._on_close,
                                    on_domain=self.domains.on_event)
            states = await self.backend.list_networks()
        except VirtError as exc:
            log.warning("libvirt_connect_failed", uri=self.backend.uri, error=exc.message)
            note_error(self.states, STATE_KEY, f"cannot connect to {self.backend.uri}: "
                                               f"{exc.message}")
            await self.backend.close()
            self._set_state("degraded")
            return False
        self.connections += 1
        if not first or self.known:
            metrics.RESYNCS.labels(reason="libvirt_reconnect").inc()
        self._resync(states, emit=not first)
        self.domains.request_resync(emit=not first)
        self._set_state("connected")
        log.info("libvirt_connected", uri=self.backend.uri, networks=len(states))
        return True

    async def _supervise(self) -> None:
        while True:
            await self._lost.wait()
            self._set_state("degraded")
            await self.backend.close()
            delay = self.min_delay
            while not await self._connect_once():
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)
            self._lost.clear()

    # ------------------------------------------------------------ events
    def _emit(self, event: str, name: str, data: dict[str, Any]) -> None:
        self.ctx.events.emit(_EVENT_TYPES[event], name, data)

    def _data(self, name: str, state: NetworkState | None, **extra: Any) -> dict[str, Any]:
        if state is None:
            return {"name": name, "active": False, "persistent": False, **extra}
        return {**view(state), **extra}

    def _resync(self, states: list[NetworkState], *, emit: bool) -> None:
        """Replace the known list; with `emit`, report every difference as events."""
        now = {s.name: s for s in states}
        before = self.known
        self.known = now
        if not emit:
            return
        for name, gone in before.items():
            if name not in now:
                if gone.active:
                    self._emit("stopped", name, self._data(name, None, resync=True))
                if gone.persistent:
                    self._emit("undefined", name, self._data(name, None, resync=True))
        for name, new in now.items():
            old: NetworkState | None = before.get(name)
            if old is None or (new.persistent and not old.persistent) or old.uuid != new.uuid:
                if new.persistent:
                    self._emit("defined", name, self._data(name, new, resync=True))
            elif old.persistent and not new.persistent:
                self._emit("undefined", name, self._data(name, new, resync=True))
            if new.active and (old is None or not old.active or old.uuid != new.uuid):
                self._emit("started", name, self._data(name, new, resync=True))
            elif old is not None and old.active and not new.active:
                self._emit("stopped", name, self._data(name, new, resync=True))

    async def _drain_events(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            name, event = item
            state: NetworkState | None = None
            with contextlib.suppress(VirtError):  # connection going away: resync catches up
                # vnetd's own change: the state it led to (no call to libvirtd); else read.
                state = await self.backend.event_state(name, event)
            if state is None:
                self.known.pop(name, None)
            else:
                self.known[name] = state
            try:
                self._emit(event, name, self._data(name, state, event=event))
            except Exception:  # a broken sink must not kill the watcher
                log.exception("libvirt_event_emit_failed", network=name, event=event)

    # ------------------------------------------------------------ host.snapshot
    async def snapshot(self) -> dict[str, Any]:
        try:
            states = await asyncio.wait_for(self.backend.list_networks(), self.snapshot_timeout)
        except VirtError as exc:
            return {"networks": None, "networks_error": exc.message}
        except TimeoutError:
            return {"networks": None,
                    "networks_error": f"libvirtd did not answer within {self.snapshot_timeout:g}s"}
        return {"networks": sorted((view(s) for s in states), key=lambda v: str(v["name"])),
                "domains": self.domains.snapshot()}
