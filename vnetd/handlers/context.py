"""What every handler is given: the backends, the policy and the host's facts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vnetd.contract.events import EventSink, NullSink
from vnetd.handlers.policy import Policy
from vnetd.net.backend import NetBackend
from vnetd.ovs.backend import OvsBackend, OvsOptions
from vnetd.virt.backend import VirtBackend


@dataclass
class Context:
    host_id: str
    net: NetBackend
    policy: Policy
    version: str
    events: EventSink = field(default_factory=NullSink)
    components: Callable[[], dict[str, str]] = field(default=lambda: {})
    """Connection state of the daemon's dependencies (broker, libvirt), for host.health."""
    virt: VirtBackend | None = None
    """libvirt networks; None when `[libvirt] enabled = false` (network ops: unavailable)."""
    ovs: OvsBackend | None = None
    """Open vSwitch; None when `[ovs] enabled = false` (ovs ops: unsupported)."""
    ovs_options: OvsOptions = field(default_factory=OvsOptions)
    extras: dict[str, Any] = field(default_factory=dict)
    """Services that later layers add (libvirt backend, event sequence, leases)."""
