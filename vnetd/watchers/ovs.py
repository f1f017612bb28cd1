"""The OVS watcher: owns the OVSDB client, its events and its health.

It starts the IDL thread (vnetd.ovs.idl), gives handlers `ctx.ovs`, keeps
`states["ovs"]` (connecting / connected / degraded) for host.health and the
watchdog's STATUS line, and turns the IDL monitor's changes into events: each
new picture of the database is compared with the last one, bridge by bridge
and port by port, and every difference becomes one event:

- `ovs.bridge.added` / `ovs.bridge.removed` / `ovs.bridge.changed`
  (datapath type or ownership; a port joining is a port event, not a bridge change);
- `ovs.port.added` / `ovs.port.removed` / `ovs.port.changed` (VLANs, ownership,
  and its interface: ofport, link state, MAC, error, as ovs-vswitchd fills them in);
  a bridge's own internal port has no events of its own.

The first picture after start is the baseline (no events: host.snapshot gives
it). After a reconnect the IDL rereads the whole database; the differences
with the last picture before the loss are emitted with `"resync": true`, so a
subscriber converges whatever happened while vnetd was not looking. Callbacks
only run on the loop and never block; emit never fails the watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from vnetd import metrics
from vnetd.handlers import ovs as views
from vnetd.handlers.context import Context
from vnetd.ovs.backend import OvsBridge, OvsOptions, OvsPort, OvsState
from vnetd.ovs.idl import IdlBackend
from vnetd.supervisor import TaskTree

log = structlog.get_logger(__name__)

STATE_KEY = "ovs"
_EVENT_TYPES = {
    ("bridge", "added"): "ovs.bridge.added",
    ("bridge", "removed"): "ovs.bridge.removed",
    ("bridge", "changed"): "ovs.bridge.changed",
    ("port", "added"): "ovs.port.added",
    ("port", "removed"): "ovs.port.removed",
    ("port", "changed"): "ovs.port.changed",
}
FIRST_CONNECT_WAIT = 3.0
"""Seconds start() waits for the first connection before READY (not fatal)."""


def _bridge_facts(b: OvsBridge) -> dict[str, Any]:
    view = views.bridge_view(b)
    return {k: view[k] for k in ("datapath_type", "owned")}


def _port_facts(p: OvsPort) -> dict[str, Any]:
    return views.port_view(p)


class OvsWatcher:
    name = "ovs"

    def __init__(self, backend: IdlBackend, ctx: Context, states: dict[str, str],
                 options: OvsOptions) -> None:
        self.backend = backend
        self.ctx = ctx
        self.states = states
        self.options = options
        self.known: OvsState | None = None
        self.resyncs = 0
        self._connected = asyncio.Event()
        self.tasks = TaskTree(self.name)

    # ------------------------------------------------------------ Component
    async def start(self) -> None:
        self.ctx.ovs = self.backend
        self.ctx.ovs_options = self.options
        self._set_state("connecting")
        self.backend.listen(self._on_picture)
        self.backend.listen_state(self._on_state)
        # The IDL thread lives as long as this task; if it dies it is restarted (with
        # backoff) and the daemon is degraded meanwhile (host.health names `ovs/idl`).
        self.tasks.spawn("idl", self.backend.run, restart=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), FIRST_CONNECT_WAIT)
        self._set_state(self.backend.state)
        if self.backend.state != "connected":
            log.warning("ovsdb_not_connected", remote=self.backend.remote,
                        error=self.backend.last_error)

    async def stop(self) -> None:
        await self.tasks.stop()
        self.backend.close()
        self._set_state("stopped")

    # ------------------------------------------------------------ state
    def _set_state(self, state: str) -> None:
        self.states[STATE_KEY] = state
        metrics.CONNECTION_UP.labels(dependency="ovsdb").set(1 if state == "connected" else 0)

    def _on_state(self, state: str, error: str | None) -> None:
        if state == "connected":
            self._connected.set()
        else:
            self._connected.clear()
            if state == "degraded":
                log.warning("ovsdb_connection_lost", remote=self.backend.remote, error=error)
        self._set_state(state)

    # ------------------------------------------------------------ events
    def _on_picture(self, picture: OvsState, reconnected: bool) -> None:
        before, self.known = self.known, picture
        if before is None:
            return  # the baseline: host.snapshot reports it
        if reconnected:
            self.resyncs += 1
            metrics.RESYNCS.labels(reason="ovsdb_reconnect").inc()
        try:
            self._diff(before, picture, resync=reconnected)
        except Exception:  # a broken sink must not kill the watcher
            log.exception("ovs_event_emit_failed")

    def _emit(self, what: str, change: str, subject: str, data: dict[str, Any],
              resync: bool) -> None:
        if resync:
            data = {**data, "resync": True}
        self.ctx.events.emit(_EVENT_TYPES[(what, change)], subject, data)

    def _diff(self, before: OvsState, after: OvsState, *, resync: bool) -> None:
        old_b = {b.name: b for b in before.bridges}
        new_b = {b.name: b for b in after.bridges}
        # A bridge's own internal port comes and goes with it: the bridge event says it.
        old_p = {p.name: p for b in before.bridges for p in b.guest_ports()}
        new_p = {p.name: p for b in after.bridges for p in b.guest_ports()}
        # Removals first (ports before their bridge), then additions (bridge before ports).
        for name, port in old_p.items():
            if name not in new_p or new_p[name].uuid != port.uuid:
                self._emit("port", "removed", name,
                           {"name": name, "bridge": port.bridge, "owned": port.owned}, resync)
        for name, br in old_b.items():
            if name not in new_b or new_b[name].uuid != br.uuid:
                self._emit("bridge", "removed", name, {"name": name, "owned": br.owned}, resync)
        for name, br in new_b.items():
            was = old_b.get(name)
            if was is None or was.uuid != br.uuid:
                self._emit("bridge", "added", name, views.bridge_view(br), resync)
            elif was != br and _bridge_facts(was) != _bridge_facts(br):
                self._emit("bridge", "changed", name,
                           {**views.bridge_view(br), **_changes(_bridge_facts(was),
                                                                _bridge_facts(br))}, resync)
        for name, port in new_p.items():
            was_p = old_p.get(name)
            if was_p is None or was_p.uuid != port.uuid:
                self._emit("port", "added", name, views.port_view(port), resync)
            elif was_p != port and _port_facts(was_p) != _port_facts(port):
                self._emit("port", "changed", name,
                           {**views.port_view(port), **_changes(_port_facts(was_p),
                                                                _port_facts(port))}, resync)


def _changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    changed = [k for k in new if old.get(k) != new[k]]
    return {"changes": changed, "previous": {k: old.get(k) for k in changed}}
