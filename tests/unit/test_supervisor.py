"""The task tree: named tasks, failures logged and reported, restarts with backoff,
critical failures stopping the watchdog, timeouts on the waits of host.snapshot."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.wait import until
from vnetd.contract.errors import Unavailable
from vnetd.events.bus import EventBus
from vnetd.events.heartbeat import HostLifecycle
from vnetd.service.daemon import task_states
from vnetd.service.notify import Notifier
from vnetd.service.watchdog import Watchdog
from vnetd.supervisor import Policy, TaskTree
from vnetd.watchers.netlink import NetlinkWatcher


class Boom(RuntimeError):
    pass


def tree() -> TaskTree:
    return TaskTree(backoff_min=0.01, backoff_max=0.04)


async def test_a_task_that_raises_is_logged_reported_and_restarted() -> None:
    root = tree()
    branch = root.branch("libvirt")
    runs: list[int] = []
    release = asyncio.Event()

    async def events() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise Boom("callback queue broken")
        await release.wait()
        await asyncio.Event().wait()  # runs until stopped

    with capture_logs() as logs:
        branch.spawn("events", events, restart=True)
        await until(lambda: root.get("libvirt/events").state == "restarting",  # type: ignore[union-attr]
                    "the failure to be seen")
        assert root.failures() == {
            "libvirt/events": "ended with Boom: callback queue broken; restart 1 in 0.01s"}
        assert root.degraded() == root.failures() and root.critical() == {}
        assert task_states(root) == {
            "libvirt/events": "restarting: ended with Boom: callback queue broken; "
                              "restart 1 in 0.01s"}
        await until(lambda: len(runs) == 2, "the restart")
    failed = [e for e in logs if e["event"] == "task_failed"]
    assert failed and failed[0]["task"] == "libvirt/events"
    assert isinstance(failed[0]["exc_info"], Boom)
    entry = root.get("libvirt/events")
    assert entry is not None and entry.state == "running" and entry.restarts == 1
    assert root.failures() == {} and task_states(root) == {}
    await root.stop()
    assert entry.task is not None and entry.task.cancelled()


async def test_a_forever_task_that_returns_is_a_failure_and_stays_failed() -> None:
    root = tree()

    async def quits() -> None:
        return None

    root.branch("metrics").spawn("refresh", quits)
    await until(root.failures, "the return to be seen")
    assert root.failures() == {"metrics/refresh": "returned, though it should run until stopped"}
    await asyncio.sleep(0.05)  # no restart without restart=True
    assert root.get("metrics/refresh").state == "failed"  # type: ignore[union-attr]
    await root.stop()


async def test_backoff_doubles_up_to_its_cap() -> None:
    root = tree()
    reasons: list[str] = []
    root.listeners.append(lambda e: reasons.append(e.reason or e.state))

    async def always_fails() -> None:
        raise Boom("no")

    root.spawn("flaky", always_fails, restart=True)
    await until(lambda: sum("restart" in r for r in reasons) >= 5, "five failures")
    await root.stop()
    delays = [r.rsplit(" in ", 1)[1] for r in reasons if "restart" in r][:5]
    assert delays == ["0.01s", "0.02s", "0.04s", "0.04s", "0.04s"]


async def test_a_oneshot_may_return_but_not_raise() -> None:
    root = tree()
    attempts: list[int] = []

    async def reopen() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise Boom("socket")

    root.spawn("resync", reopen, oneshot=True, restart=True)
    await until(lambda: root.get("resync").state == "done", "the retried oneshot")  # type: ignore[union-attr]
    assert len(attempts) == 2 and root.failures() == {}
    await root.stop()


async def test_cancelled_and_stopped_tasks_are_not_failures() -> None:
    root = tree()
    a = root.branch("a").spawn("x", asyncio.Event().wait, restart=True)
    root.branch("b").spawn("y", asyncio.Event().wait)
    a.cancel()
    await until(a.done, "the cancellation")
    await asyncio.sleep(0.03)
    assert root.failures() == {}
    assert root.get("a/x").state == "stopped"  # type: ignore[union-attr]
    await root.stop()
    assert all(e.task is not None and e.task.done() for e in root.entries())
    assert set(root.states().values()) == {"stopped"}


async def test_spawning_a_running_name_is_refused_unless_replacing() -> None:
    root = tree()
    first = root.spawn("t", asyncio.Event().wait)
    with pytest.raises(RuntimeError, match="already running"):
        root.spawn("t", asyncio.Event().wait)
    second = root.spawn("t", asyncio.Event().wait, replace=True)
    await until(first.done, "the replaced task to end")
    assert first.cancelled() and not second.done() and root.failures() == {}
    await root.stop()


def _notifier() -> tuple[Notifier, list[str]]:
    sent: list[str] = []
    return Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "200000"},
                    send=sent.append), sent


async def test_a_critical_task_that_dies_stops_the_watchdog_pings() -> None:
    n, sent = _notifier()  # a ping every 0.1 s while healthy
    n.ready("ready")
    root = tree()
    wd = Watchdog(n, dict, lambda: True, root.critical)
    root.adopt(wd.tasks)
    stop_it = asyncio.Event()

    async def consumer_guard() -> None:
        await stop_it.wait()
        raise Boom("the job pump is gone")

    root.spawn("jobs", consumer_guard, policy=Policy.CRITICAL, restart=True)  # never restarted
    await wd.start()
    try:
        await until(lambda: sent.count("WATCHDOG=1") >= 2, "pings while healthy", poll=0.02)
        stop_it.set()
        await until(lambda: any("task jobs ended with Boom" in s for s in sent),
                    "the STATUS line naming the task", poll=0.02)
        sent.clear()
        skipped = wd.skipped
        await until(lambda: wd.skipped >= skipped + 3, "three skipped pings", poll=0.02)
        assert "WATCHDOG=1" not in sent
        assert root.critical() == {"jobs": "ended with Boom: the job pump is gone"}
        assert root.get("jobs").state == "failed"  # type: ignore[union-attr]
    finally:
        await root.stop()


async def test_a_degraded_task_keeps_the_pings_and_says_why_on_the_status_line() -> None:
    n, sent = _notifier()
    n.ready("ready")
    root = tree()
    states = {"broker": "connected"}
    wd = Watchdog(n, lambda: {**states, **task_states(root)}, lambda: True, root.critical)
    root.adopt(wd.tasks)

    async def watcher() -> None:
        raise Boom("bad callback")

    root.branch("libvirt").spawn("events", watcher)
    await wd.start()
    try:
        await until(lambda: any(s.startswith("STATUS=degraded: libvirt/events failed: ended "
                                             "with Boom: bad callback") for s in sent),
                    "the STATUS line", poll=0.02)
        sent.clear()
        await until(lambda: "WATCHDOG=1" in sent, "a ping while degraded", poll=0.02)
    finally:
        await root.stop()


async def test_the_heartbeat_component_survives_a_failing_health_probe() -> None:
    bus = EventBus("hv1", 100)
    calls: list[int] = []

    def health() -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 2:  # the first beat's probe (the first call is host.started's)
            raise Boom("probe")
        return {"status": "healthy"}

    beat = HostLifecycle(bus, 0.01, "test", health)
    beat.tasks.backoff_min = 0.01
    await beat.start()
    try:
        await until(lambda: bus.sequence >= 3, "heartbeats after the failure")
        entry = beat.tasks.get("events.lifecycle/heartbeat")
        assert entry is not None and entry.restarts == 1 and entry.state == "running"
    finally:
        await beat.stop()


class StuckMonitor:
    """A monitor socket whose dumps never finish (the kernel never answers)."""

    def __init__(self) -> None:
        self.dumps = 0

    async def open(self) -> int:
        return 7

    def request_dump(self, what: Any) -> int:
        self.dumps += 1
        return self.dumps

    def read(self, max_datagrams: int = 256) -> list[Any]:
        return []

    def close(self) -> None:
        return None


async def test_host_snapshot_does_not_wait_forever_for_the_watcher() -> None:
    class Sink:
        def emit(self, type: str, subject: str | None, data: dict[str, Any]) -> None:
            return None

    w = NetlinkWatcher(StuckMonitor(), Sink(), loop_reader=False)
    w.request_resync("start")  # as start() does; its dump never completes
    w.snapshot_timeout = 0.05
    provide = w.snapshot_provider(lambda: {})
    with pytest.raises(Unavailable, match=r"not up to date within 0\.05s"):
        await provide()
    await w.stop()


async def test_host_snapshot_does_not_wait_forever_for_a_hung_libvirtd() -> None:
    from typing import cast

    from vnetd.handlers.context import Context
    from vnetd.virt.libvirt_backend import LibvirtBackend
    from vnetd.watchers.libvirt import LibvirtWatcher

    class HungBackend:
        async def list_networks(self) -> list[Any]:
            await asyncio.Event().wait()  # libvirtd stopped with SIGSTOP
            return []

    ctx = cast(Context, object())
    w = LibvirtWatcher(cast(LibvirtBackend, HungBackend()), ctx, {})
    w.snapshot_timeout = 0.05
    assert await w.snapshot() == {"networks": None,
                                  "networks_error": "libvirtd did not answer within 0.05s"}


async def test_an_injected_failure_is_handled_like_a_real_one() -> None:
    root = tree()
    root.branch("events.lifecycle").spawn("heartbeat", asyncio.Event().wait, restart=True)
    assert root.crash("events.lifecycle/heartbeat") is True
    assert root.crash("no/such") is False
    await until(lambda: root.get("events.lifecycle/heartbeat").restarts == 1,  # type: ignore[union-attr]
                "the restart after the injected failure")
    await root.stop()
    assert root.failures() == {}
