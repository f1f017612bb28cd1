"""Serves vnetd.metrics.REGISTRY over HTTP and keeps the state gauges current.

The HTTP server is prometheus-client's (a thread; it reads the registry, never
the daemon's state). Counters are moved where things happen (here: the job
observer); gauges that describe state (connections, owned devices) are
refreshed by a small task, only when metrics are enabled: every tick it copies
the connection states and the owned-device counts that the netlink watcher
keeps as its view changes. Nothing here reads the kernel: no work that grows
with the number of links on the host runs on a timer (a link dump every two
seconds once blocked the loop ~27 ms per 1,000 links).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from vnetd import metrics as m
from vnetd.amqp.consumer import JobRecord
from vnetd.contract.commands import is_read_only
from vnetd.supervisor import TaskTree

log = structlog.get_logger("vnetd.metrics")

TICK_SECONDS = 1.0


class JobMetrics:
    """JobObserver: one count and one duration per finished job.

    `on_change` is called after a job that may change which devices vnetd owns
    (nothing in the daemon needs it since the counts come from the watcher's view).
    """

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


class MetricsServer:
    """Component: the HTTP endpoint and the gauge refresher (both only when enabled)."""

    name = "metrics"

    def __init__(self, *, enabled: bool, address: str, port: int,
                 states: Callable[[], dict[str, str]],
                 owned: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.enabled = enabled
        self.address = address
        self.port = port
        self.states = states
        self.owned = owned
        """Owned devices by kind, from the netlink watcher's view (cheap: O(kinds))."""
        self.observer = JobMetrics()
        self._kinds: set[str] = set()
        self._server: Any = None
        self._thread: Any = None
        self.tasks = TaskTree(self.name)

    async def start(self) -> None:
        if not self.enabled:
            return  # nobody can scrape: keep nothing current
        from prometheus_client import start_http_server
        self._server, self._thread = start_http_server(
            self.port, addr=self.address, registry=m.REGISTRY)
        log.info("metrics_listening", address=self.address,
                 port=self._server.server_address[1])
        self.refresh()
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

    def refresh(self) -> None:
        self.refresh_connections()
        self.refresh_owned()

    def refresh_connections(self) -> None:
        for dependency, state in self.states().items():
            if state == "disabled":
                with contextlib.suppress(KeyError):
                    m.CONNECTION_UP.remove(dependency)
                continue
            m.CONNECTION_UP.labels(dependency=dependency).set(1 if state == "connected" else 0)

    def refresh_owned(self) -> None:
        if self.owned is None:
            return
        counts = self.owned()
        for kind in self._kinds - counts.keys():
            m.OWNED_DEVICES.labels(kind=kind).set(0)
        for kind, n in counts.items():
            m.OWNED_DEVICES.labels(kind=kind).set(n)
        self._kinds |= counts.keys()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.refresh()
