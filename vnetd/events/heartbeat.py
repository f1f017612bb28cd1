"""host.started, host.heartbeat (every `[events] heartbeat_seconds`) and host.stopping.

The heartbeat carries a small health summary so a control plane can list live
hosts and see which are degraded without calling each one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from vnetd.events.bus import EventBus
from vnetd.supervisor import TaskTree


class HostLifecycle:
    name = "events.lifecycle"

    def __init__(self, bus: EventBus, interval: float, version: str,
                 health: Callable[[], dict[str, Any]]) -> None:
        self.bus = bus
        self.interval = interval
        self.version = version
        self.health = health
        self.started = time.monotonic()
        self.tasks = TaskTree(self.name)

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "version": self.version,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "heartbeat_seconds": self.interval,
            "events": {"buffered": self.bus.buffered, "dropped": self.bus.dropped_total,
                       "published": self.bus.published_total},
        }
        data.update(self.health())
        return data

    async def start(self) -> None:
        self.started = time.monotonic()
        self.bus.emit("host.started", None, self.summary())
        self.tasks.spawn("heartbeat", self._beat, restart=True)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.bus.emit("host.heartbeat", None, self.summary())

    async def stop(self) -> None:
        await self.tasks.stop()
        self.bus.emit("host.stopping", None, self.summary())
