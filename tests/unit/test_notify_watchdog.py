"""Notifier and Watchdog on a recording send function (no systemd, no sockets)."""

from __future__ import annotations

import asyncio
import os

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
        await asyncio.sleep(0.5)
        healthy = sent.count("WATCHDOG=1")
        assert healthy >= 3
        # A dependency down is degraded, not dead: pings go on, STATUS says why.
        states["broker"] = "reconnecting"
        alive[0] = False  # the consumer's channel is closed while the broker is away
        await asyncio.sleep(0.25)
        assert any(s.startswith("STATUS=degraded: broker unreachable") for s in sent)
        sent.clear()
        await asyncio.sleep(0.4)
        assert "WATCHDOG=1" in sent
        assert wd.health().ok
        assert wd.degraded() == ("broker unreachable (reconnecting)",)
        sent.clear()
        # Connected again, but the consumer did not come back: that is dead.
        states["broker"] = "connected"
        alive[0] = False
        await asyncio.sleep(0.4)
        assert "WATCHDOG=1" not in sent
        assert any(s.startswith("STATUS=degraded: job consumer stopped") for s in sent)
        alive[0] = True
        await asyncio.sleep(0.4)
        assert "WATCHDOG=1" in sent
        assert sent[-1] == "WATCHDOG=1" or "STATUS=ready" in sent
    finally:
        await wd.stop()


async def test_a_lagging_loop_skips_the_ping() -> None:
    import time
    n, sent = _notifier(400_000)  # ping every 0.2 s, lag limit 0.1 s
    wd = Watchdog(n, dict, lambda: True)
    await wd.start()
    try:
        await asyncio.sleep(0.3)
        sent.clear()
        time.sleep(0.5)  # block the loop
        await asyncio.sleep(0.05)
        assert "WATCHDOG=1" not in sent
        assert wd.skipped >= 1 or wd.worst_lag > wd.max_lag
        await asyncio.sleep(0.5)
        assert "WATCHDOG=1" in sent
    finally:
        await wd.stop()
