"""Supervised tasks in a real daemon: a background task that dies is logged and reported.

A failure is injected into a named task (VNETD_FAILPOINT_CRASH_TASK, on SIGUSR2):
- the heartbeat (policy: degrade, restart): logged with its exception, restarted
  with backoff, and heartbeats resume;
- the watchdog probe (policy: critical): logged, host.health says degraded with
  the task and why, and the watchdog pings stop, so systemd would restart us.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import pytest

from tests.conftest import StartDaemon
from tests.integration.events_subscriber import Subscriber
from tests.support.daemon import DaemonProcess
from tests.support.env import Lab
from tests.support.rpc import RawRpc
from tests.support.sdnotify import NotifyListener, short_socket_path
from tests.support.wait import until

pytestmark = pytest.mark.integration


def log_events(d: DaemonProcess, event: str) -> list[dict[str, Any]]:
    out = []
    for line in d.log_text().splitlines():
        if f'"{event}"' in line:
            record = json.loads(line)
            if record.get("event") == event:
                out.append(record)
    return out


async def test_a_dead_heartbeat_task_is_logged_restarted_and_beats_again(
        start_daemon: StartDaemon, lab: Lab, netns: str, amqp_url: str) -> None:
    host = DaemonProcess.new_host_id(lab.suffix)
    task = "events.lifecycle/heartbeat"
    async with Subscriber(amqp_url, host) as sub:
        d = await start_daemon(netns=netns, host_id=host, events={"heartbeat_seconds": 0.2},
                               env={"VNETD_FAILPOINT_CRASH_TASK": task})
        await sub.wait_type("host.heartbeat")
        d.send_signal(signal.SIGUSR2)
        await until(lambda: log_events(d, "task_restarted"), "the restart", timeout=15,
                    poll=0.1)
        [failed] = log_events(d, "task_failed")
        assert failed["task"] == task and failed["policy"] == "degraded"
        assert "InjectedFailure" in failed["error"]
        assert "InjectedFailure" in failed.get("exception", json.dumps(failed))
        restarted_at = len(sub.received)
        await sub.wait_type("host.heartbeat", start=restarted_at, timeout=10)
    async with RawRpc(amqp_url) as rpc:
        health = (await rpc.call(host, "host.health", timeout=10))["result"]
    assert task not in health["components"] and health["status"] == "healthy", health


async def test_a_dead_critical_task_stops_the_watchdog_and_says_why(
        start_daemon: StartDaemon, lab: Lab, netns: str, amqp_url: str) -> None:
    path = short_socket_path(lab.dir, f"notify-{os.getpid()}-sup.sock")
    task = "watchdog/probe"
    async with NotifyListener(path) as sd, RawRpc(amqp_url) as rpc:
        d = await start_daemon(netns, env={
            "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000",
            "VNETD_FAILPOINT_CRASH_TASK": task})
        await sd.wait_for("WATCHDOG", "1", count=2, timeout=15)
        d.send_signal(signal.SIGUSR2)
        crashed_at = time.monotonic()

        async def health() -> dict[str, Any]:
            return (await rpc.call(d.host_id, "host.health", timeout=10))["result"]

        deadline = time.monotonic() + 15
        while task not in (h := await health())["components"]:
            assert time.monotonic() < deadline, h
            await asyncio.sleep(0.1)
        assert h["status"] == "degraded"
        assert h["components"][task].startswith(
            "failed: ended with InjectedFailure: failure injected into watchdog/probe"), h
        # systemd would kill us after WatchdogSec (1 s) without a ping: none comes.
        await asyncio.sleep(2.0)
        late = [m.at for m in sd.with_key("WATCHDOG", "1") if m.at > crashed_at + 0.1]
        assert late == [], late
        assert d.running  # jobs still answered: restarting is systemd's call, not ours
        [failed] = log_events(d, "task_failed")
        assert failed["task"] == task and failed["policy"] == "critical"
