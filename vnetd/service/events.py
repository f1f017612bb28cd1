"""Wiring of the event stream: bus, publisher, netlink watcher, lifecycle, job events.

Called from build_components(); sets ctx.events so every producer (handlers,
libvirt watcher, cleanup) can `ctx.events.emit(type, subject, data)`, and adds
the watcher's links (at the stream position) to host.snapshot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vnetd.events.bus import EventBus
from vnetd.events.commands import CommandEvents
from vnetd.events.heartbeat import HostLifecycle
from vnetd.events.publisher import EventPublisher
from vnetd.net.monitor import MonitorSocket
from vnetd.net.vxlan import open_neigh_monitor
from vnetd.service.component import Component
from vnetd.watchers.neigh import NeighWatcher
from vnetd.watchers.netlink import NetlinkWatcher

if TYPE_CHECKING:
    from vnetd.service.daemon import Runtime


def event_components(rt: Runtime) -> list[Component]:
    s = rt.settings
    if not s.events.enabled:
        return []
    bus = EventBus(s.host_id, s.events.buffer_size)
    publisher = EventPublisher(bus, rt.connection, s.events.exchange)
    watcher = NetlinkWatcher(MonitorSocket(s.netlink.netns or None, s.netlink.rcvbuf_bytes), bus,
                             backlog=lambda: bus.pending)
    publisher.on_reconnect.append(lambda: watcher.request_resync("broker_reconnect"))

    def health() -> dict[str, Any]:
        components = rt.ctx.components()
        degraded = any(v not in ("connected", "disabled") for v in components.values())
        return {
            "status": "degraded" if degraded else "healthy",
            "components": components,
            "netlink": {"state": watcher.state, "links": len(watcher.links),
                        "overruns": watcher.overruns, "resyncs": watcher.resyncs},
        }

    lifecycle = HostLifecycle(bus, s.events.heartbeat_seconds, rt.ctx.version, health)
    rt.ctx.events = bus
    rt.ctx.snapshot_parts += (
        watcher.snapshot_provider(lambda: {"epoch": bus.epoch, "sequence": bus.sequence}),)
    rt.observers.append(CommandEvents(bus))
    neigh = NeighWatcher(rt.ctx, bus, lambda: open_neigh_monitor(s.netlink.netns or None))
    return [publisher, watcher, neigh, lifecycle]
