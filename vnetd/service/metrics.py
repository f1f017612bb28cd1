"""Serves vnetd.metrics.REGISTRY over HTTP and keeps the state gauges current.

The HTTP server is prometheus-client's (a thread; it reads the registry, never
the daemon's state). Counters are moved where things happen (here: the job
observer); gauges that describe state (connections, owned devices) are
refreshed by a small task: connections every tick, owned devices by one link
dump after jobs that may change them (debounced) and at least every minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from vnetd import metrics as m
from vnetd.amqp.consumer import JobRecord
from vnetd.contract.commands import is_read_only
from vnetd.contract.errors import VnetdError
from vnetd.supervisor import TaskTree

log = structlog.get_logger("vnetd.metrics")

TICK_SECONDS = 1.0
OWNED_REFRESH_SECONDS = 60.0
OWNED_DEBOUNCE_SECONDS = 2.0


class JobMetrics:
    """JobObserver: one count and one duration per finished job."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self.on_change = on_change

    def job_finished(self, record: JobRecord) -> None:
        if record.duplicate:
            m.JOBS_DUPLICATE.inc()
            return
        op = record.op if record.op != "?" else "invalid"
        outcome = "ok" if record.ok else (record.error_code or "error")
        m.JOBS.labels(op=op, outcome=outcome).inc()
        m.JOB_DURATION.labels(op=op).observe(record.duration)
        if not is_read_only(record.op):  # a read-only op cannot change which devices we own
            self.on_change()


def owned_by_kind(links: list[Any]) -> dict[str, int]:
    return dict(Tally(link.kind for link in links if link.owned))


class MetricsServer:
    """Component: the HTTP endpoint (when enabled) and the gauge refresher."""

    name = "metrics"

    def __init__(self, *, enabled: bool, address: str, port: int,
                 states: Callable[[], dict[str, str]],
                 list_links: Callable[[], Awaitable[list[Any]]]) -> None:
        self.enabled = enabled
        self.address = address
        self.port = port
        self.states = states
        self.list_links = list_links
        self.observer = JobMetrics(self._mark_dirty)
        self._dirty = True
        self._kinds: set[str] = set()
        self._server: Any = None
        self._thread: Any = None
        self.tasks = TaskTree(self.name)

    def _mark_dirty(self) -> None:
        self._dirty = True

    async def start(self) -> None:
        if self.enabled:
            from prometheus_client import start_http_server
            self._server, self._thread = start_http_server(
                self.port, addr=self.address, registry=m.REGISTRY)
            log.info("metrics_listening", address=self.address,
                     port=self._server.server_address[1])
        self.refresh_connections()
        await self.refresh_owned()
        self.tasks.spawn("refresh", self._run, restart=True)

    @property
    def bound_port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    async def stop(self) -> None:
        await self.tasks.stop()
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.shutdown)
            server.server_close()

    def refresh_connections(self) -> None:
        for dependency, state in self.states().items():
            if state == "disabled":
                with contextlib.suppress(KeyError):
                    m.CONNECTION_UP.remove(dependency)
                continue
            m.CONNECTION_UP.labels(dependency=dependency).set(1 if state == "connected" else 0)

    async def refresh_owned(self) -> None:
        self._dirty = False
        counts = owned_by_kind(await self.list_links())
        for kind in self._kinds - counts.keys():
            m.OWNED_DEVICES.labels(kind=kind).set(0)
        for kind, n in counts.items():
            m.OWNED_DEVICES.labels(kind=kind).set(n)
        self._kinds |= counts.keys()

    async def _run(self) -> None:
        last_owned = time.monotonic()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.refresh_connections()
            since = time.monotonic() - last_owned
            if (self._dirty and since >= OWNED_DEBOUNCE_SECONDS) or since >= OWNED_REFRESH_SECONDS:
                try:
                    await self.refresh_owned()
                except (OSError, VnetdError) as exc:  # must not end the refresher
                    log.warning("owned_devices_refresh_failed", error=str(exc))
                last_owned = time.monotonic()
