"""The systemd watchdog: WATCHDOG=1 only while a real health check passes.

A probe task wakes up often and measures how late the event loop runs it (loop
lag). Every half WATCHDOG_USEC the component pings systemd if, since the last
ping, the loop lag stayed under the limit and the job consumer is alive (once
started). A hung loop sends nothing (the probe cannot run); a slow one, or a
consumer the broker connection did not bring back, skips pings, and systemd
restarts the daemon after WatchdogSec.

A critical task of the task tree (vnetd.supervisor) that ended unexpectedly
skips pings too: the daemon cannot work without it, and a restart brings it
back. The probe itself is such a task: if it dies, nothing pings.

A dependency that is down (the broker reconnecting, libvirtd restarting), or a
task whose end only degrades the daemon (a watcher), makes the daemon
*degraded*, not dead: it keeps pinging and says so on its STATUS
line. Restarting it would not bring the broker back, and would throw away the
events it buffers meanwhile. Without WATCHDOG_USEC it only keeps STATUS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from vnetd.service import failpoints
from vnetd.service.notify import Notifier
from vnetd.supervisor import Policy, TaskTree

log = structlog.get_logger("vnetd.watchdog")

MAX_LAG_SECONDS = 2.0
PROBE_SECONDS = 0.25
STATUS_SECONDS = 5.0


@dataclass(frozen=True)
class Health:
    ok: bool
    problems: tuple[str, ...]


class Watchdog:
    name = "watchdog"

    def __init__(self, notifier: Notifier, states: Callable[[], dict[str, str]],
                 consumer_alive: Callable[[], bool | None],
                 critical: Callable[[], dict[str, str]] = dict) -> None:
        self.notifier = notifier
        self.states = states
        self.consumer_alive = consumer_alive
        self.critical = critical
        """Critical tasks that ended (path -> why): each one stops the pings."""
        self.tasks = TaskTree(self.name)
        usec = notifier.watchdog_usec
        self.ping_every = usec / 2e6 if usec else None
        ref = self.ping_every or STATUS_SECONDS
        self.max_lag = min(MAX_LAG_SECONDS, ref / 2)
        self.probe_every = min(PROBE_SECONDS, ref / 4)
        self.worst_lag = 0.0
        self.pings = 0
        self.skipped = 0
        self._failpoint = False

    def health(self) -> Health:
        """Whether to ping: the loop is responsive and the consumer works or is recovering."""
        problems: list[str] = []
        if self.worst_lag > self.max_lag:
            problems.append(f"event loop lagged {self.worst_lag:.1f}s")
        broker_up = self.states().get("broker") == "connected"
        if self.consumer_alive() is False and broker_up:
            # Connected but no consumer: the robust connection did not restore it.
            problems.append("job consumer stopped")
        problems.extend(f"task {path} {why}" for path, why in sorted(self.critical().items()))
        return Health(ok=not problems, problems=tuple(problems))

    def degraded(self) -> tuple[str, ...]:
        """Dependencies that are down: reported, not a reason to be restarted."""
        return tuple(f"{name} {_describe(state)}" for name, state in sorted(self.states().items())
                     if state not in ("connected", "disabled"))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._failpoint = failpoints.install(loop)
        self.tasks.spawn("probe", self._run, policy=Policy.CRITICAL)
        log.info("watchdog_started", ping_every=self.ping_every, max_lag=self.max_lag,
                 failpoint=self._failpoint or None)

    async def stop(self) -> None:
        if self._failpoint:
            failpoints.uninstall(asyncio.get_running_loop())
        await self.tasks.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.ping_every or STATUS_SECONDS
        next_beat = loop.time() + period
        was_ok = True
        while True:
            before = loop.time()
            await asyncio.sleep(self.probe_every)
            self.worst_lag = max(self.worst_lag, loop.time() - before - self.probe_every)
            if loop.time() < next_beat:
                continue
            next_beat = loop.time() + period
            health = self.health()
            self.worst_lag = 0.0
            if health.ok and self.ping_every is not None:
                self.notifier.watchdog()
                self.pings += 1
            elif not health.ok:
                self.skipped += 1
            self._report(health, self.degraded())
            if health.ok != was_ok:
                log.warning("health_changed", ok=health.ok, problems=list(health.problems))
                was_ok = health.ok


    def _report(self, health: Health, degraded: tuple[str, ...]) -> None:
        if self.notifier.is_stopping:
            return
        problems = (*health.problems, *degraded)
        if problems:
            self.notifier.status("degraded: " + ", ".join(problems))
        elif self.notifier.ready_status is not None:
            self.notifier.status(self.notifier.ready_status)


def _describe(state: str) -> str:
    return {"disconnected": "unreachable", "reconnecting": "unreachable (reconnecting)",
            "connecting": "connecting"}.get(state, state)
