"""What every handler is given: the backends, the policy and the host's facts.

Components the daemon runs (the event bus, the watchers, cleanup) are handed to
handlers through the typed fields below, set by the daemon's wiring
(vnetd.service.daemon, vnetd.service.events) before the first job; a field left
at its default means that part is not running.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from vnetd.contract.events import EventSink, NullSink
from vnetd.handlers.overlay_state import OverlayState
from vnetd.handlers.policy import Policy
from vnetd.net.backend import NetBackend
from vnetd.ovs.backend import OvsBackend, OvsOptions
from vnetd.virt.backend import VirtBackend

SnapshotPart = Callable[[], Awaitable[dict[str, Any]]]
"""Adds keys to host.snapshot's reply: the links at an event stream position (the
netlink watcher), the networks (the libvirt watcher)."""


class CleanupSweep(Protocol):
    """The sweep cleanup.run runs now (handlers.cleanup.Sweeper)."""

    async def sweep(self, dry_run: bool) -> dict[str, Any]: ...


@dataclass
class Context:
    host_id: str
    net: NetBackend
    policy: Policy
    version: str
    events: EventSink = field(default_factory=NullSink)
    components: Callable[[], dict[str, str]] = field(default=lambda: {})
    """Connection state of the daemon's dependencies (broker, libvirt), for host.health."""
    component_details: Callable[[], dict[str, dict[str, object]]] = field(default=lambda: {})
    """Per component: since when in its state and its last error (host.health's reasons)."""
    broker_node: Callable[[], str | None] = field(default=lambda: None)
    """host:port of the broker node the daemon is connected to now (host.health)."""
    virt: VirtBackend | None = None
    """libvirt networks; None when `[libvirt] enabled = false` (network ops: unavailable)."""
    ovs: OvsBackend | None = None
    """Open vSwitch; None when `[ovs] enabled = false` (ovs ops: unsupported)."""
    ovs_options: OvsOptions = field(default_factory=OvsOptions)
    snapshot_parts: tuple[SnapshotPart, ...] = ()
    """What host.snapshot adds to the host id (when none gives `links`, it dumps them)."""
    cleanup: CleanupSweep | None = None
    """The daemon's cleanup sweep; None when it is not set up (cleanup.run: unavailable)."""
    overlay: OverlayState = field(default_factory=OverlayState)
    """What fdb.converge last wrote to each VXLAN device (the daemon's one copy)."""
