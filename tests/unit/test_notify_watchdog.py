"""Notifier and Watchdog on a recording send function (no systemd, no sockets)."""

from __future__ import annotations

import os

from tests.support.wait import until
from vnetd.service.notify import Notifier, watchdog_usec
from vnetd.service.watchdog import Watchdog


def _notifier(usec: int | None = 200_000) -> tuple[Notifier, list[str]]:
    sent: list[str] = []
    env = {"NOTIFY_SOCKET": "/run/x"}
    if usec is not None:
        env["WATCHDOG_USEC"] = str(usec)
    return Notifier(env, send=sent.append), sent


def test_silent_without_notify_socket() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_usec is None
    n.ready("ready")  # no socket, no import of systemd, no error
    n.watchdog()
    n.stopping()


def test_watchdog_usec_honours_watchdog_pid() -> None:
    assert watchdog_usec({"WATCHDOG_USEC": "5000000"}) == 5_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}) == 5e6
    assert watchdog_usec({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_usec({"WATCHDOG_USEC": "x"}) is None
    assert watchdog_usec({"WATCHDOG_USEC": "0"}) is None


def test_messages_and_status_deduplication() -> None:
    n, sent = _notifier()
    n.status("starting")
    n.status("starting")
    n.ready("ready: 3 owned devices")
    n.stopping()
    assert sent == ["STATUS=starting", "READY=1\nSTATUS=ready: 3 owned devices",
                    "STOPPING=1\nSTATUS=stopping: draining jobs in flight"]


async def test_pings_only_while_healthy() -> None:
    n, sent = _notifier(200_000)  # ping every 0.1 s
    states = {"broker": "connected", "libvirt": "disabled"}
    alive: list[bool | None] = [True]
    n.ready("ready")
    wd = Watchdog(n, lambda: dict(states), lambda: alive[0])
    await wd.start()
    try:
        await until(lambda: sent.count("WATCHDOG=1") >= 3, "three pings while healthy",
                    poll=0.02)
        # A dependency down is degraded, not dead: pings go on, STATUS says why.
        states["broker"] = "reconnecting"
        alive[0] = False  # the consumer's channel is closed while the broker is away
        await until(lambda: any(s.startswith("STATUS=degraded: broker unreachable")
                                for s in sent), "the degraded STATUS line", poll=0.02)
        sent.clear()
        await until(lambda: "WATCHDOG=1" in sent, "a ping while degraded", poll=0.02)
        assert wd.health().ok
        assert wd.degraded() == ("broker unreachable (reconnecting)",)
        # Connected again, but the consumer did not come back: that is dead.
        states["broker"] = "connected"
        alive[0] = False
        await until(lambda: any(s.startswith("STATUS=degraded: job consumer stopped")
                                for s in sent), "the STATUS line naming the consumer",
                    poll=0.02)
        sent.clear()
        skipped = wd.skipped
        await until(lambda: wd.skipped >= skipped + 2, "two skipped pings", poll=0.02)
        assert "WATCHDOG=1" not in sent
        alive[0] = True
        await until(lambda: "WATCHDOG=1" in sent, "the pings to resume", poll=0.02)
        await until(lambda: "STATUS=ready" in sent, "the ready STATUS line again", poll=0.02)
    finally:
        await wd.stop()


async def test_a_lagging_loop_skips_the_ping() -> None:
    import time
    n, sent = _notifier(400_000)  # ping every 0.2 s, lag limit 0.1 s
    wd = Watchdog(n, dict, lambda: True)
    await wd.start()
    try:
        await until(lambda: "WATCHDOG=1" in sent, "a first ping", poll=0.02)
        sent.clear()
        pings = wd.pings
        time.sleep(0.5)  # block the loop
        await until(lambda: wd.skipped >= 1, "the ping after the lag to be skipped", poll=0.01)
        assert wd.pings == pings and "WATCHDOG=1" not in sent
        await until(lambda: "WATCHDOG=1" in sent, "the pings to resume", poll=0.02)
    finally:
        await wd.stop()
