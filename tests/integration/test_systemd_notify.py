"""The daemon under a stand-in systemd: READY, STATUS, WATCHDOG, STOPPING over NOTIFY_SOCKET.

The test owns the notify socket (tests/support/sdnotify.py) and runs the real
daemon against the lab broker, doing its netlink work in a test namespace.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time

import pytest

from tests.conftest import StartDaemon
from tests.support import netns as netns_mod
from tests.support.env import Lab
from tests.support.queues import queue_counts
from tests.support.rpc import RawRpc
from tests.support.sdnotify import NotifyListener, short_socket_path

pytestmark = pytest.mark.integration

WATCHDOG_USEC = 1_000_000  # systemd's WatchdogSec=1s: pings expected every 0.5 s


async def test_ready_only_with_a_consumer_then_watchdog_status_and_stopping(
        lab: Lab, amqp_url: str, start_daemon: StartDaemon, netns: str) -> None:
    path = short_socket_path(lab.dir, f"notify-{os.getpid()}-1.sock")
    frozen: list[int] = []
    daemon_pid: list[int] = []

    def freeze() -> None:  # the moment READY=1 arrives: stop the daemon where it is
        os.kill(daemon_pid[0], signal.SIGSTOP)
        frozen.append(daemon_pid[0])

    async with NotifyListener(path, on_ready=freeze) as sd:
        d = await start_daemon(netns, wait_ready=False, env={
            "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        daemon_pid.append(d.pid)
        try:
            await sd.wait_for("READY", "1", timeout=30)
            assert frozen, "READY arrived but the daemon was not frozen"
            # Frozen right after READY: the consumer must already be registered.
            _, consumers = await queue_counts(amqp_url, d.host_id)
            assert consumers == 1
        finally:
            os.kill(d.pid, signal.SIGCONT)
        ready = sd.with_key("READY", "1")[0]
        before_ready = [m.fields["STATUS"] for m in sd.messages if m.at < ready.at
                        and "STATUS" in m.fields]
        assert any("connecting" in s for s in before_ready), before_ready
        assert "owned devices" in ready.fields["STATUS"]
        assert len(sd.with_key("READY")) == 1

        # Periodic watchdog pings, every WATCHDOG_USEC/2.
        t0 = time.monotonic()
        before = len(sd.with_key("WATCHDOG", "1"))
        await sd.wait_for("WATCHDOG", "1", count=before + 6, timeout=10)
        pings = [m.at for m in sd.with_key("WATCHDOG", "1") if m.at >= t0]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert len(gaps) >= 4 and max(gaps) < 0.9, gaps
        assert min(gaps) > 0.2, gaps  # every WATCHDOG_USEC/2, not faster

        # The job path works while systemd watches.
        async with RawRpc(amqp_url) as rpc:
            reply = await rpc.call(d.host_id, "host.health", timeout=10)
        assert reply["ok"] is True

        # SIGTERM: STOPPING=1, then a clean exit.
        stop_sent = time.monotonic()
        code = await d.stop(timeout=30)
        assert code == 0, d.log_tail()
        stopping = sd.with_key("STOPPING", "1")
        assert len(stopping) == 1 and stopping[0].at >= stop_sent
        assert "stopping" in stopping[0].fields.get("STATUS", "")


async def test_sigterm_finishes_and_acks_the_job_in_flight(
        lab: Lab, amqp_url: str, start_daemon: StartDaemon, netns: str) -> None:
    path = short_socket_path(lab.dir, f"notify-{os.getpid()}-2.sock")
    count = 1500
    async with NotifyListener(path) as sd:
        # The drain bound is not under test here (a job in flight is): give it room,
        # so a loaded machine's slower batch is not cut by the 20 s default.
        d = await start_daemon(netns, env={"NOTIFY_SOCKET": str(path),
                                           "WATCHDOG_USEC": str(WATCHDOG_USEC),
                                           "VNETD_AMQP__DRAIN_TIMEOUT_SECONDS": "120"})
        await sd.wait_for("READY", "1", timeout=10)
        batch = {"commands": [{"op": "tap.ensure", "args": {"name": f"sig{i}"}}
                              for i in range(count)]}
        async with RawRpc(amqp_url) as rpc:
            call = asyncio.create_task(rpc.call(d.host_id, "batch", batch, timeout=120))
            # Wait until the batch is visibly under way in the kernel, then stop.
            deadline = time.monotonic() + 30
            while len(await netns_mod.aip_json(netns, "link", "show")) < 50:
                assert time.monotonic() < deadline, d.log_tail()
                assert not call.done(), "the batch finished before SIGTERM: make it bigger"
            d.send_signal(signal.SIGTERM)
            await sd.wait_for("STOPPING", "1", timeout=10)
            assert not call.done(), "reply before STOPPING: the job was not in flight"
            reply = await call
        code = await asyncio.to_thread(d.proc.wait, 60)  # type: ignore[union-attr]
        assert code == 0, d.log_tail()
        assert reply["ok"] is True, reply
        assert reply["result"]["completed"] == count and reply["result"]["failed"] == 0
        names = {e["ifname"] for e in await netns_mod.aip_json(netns, "link", "show")}
        assert {f"sig{i}" for i in range(count)} <= names
        # Acked: nothing is left in the queue for redelivery.
        ready_msgs, consumers = await queue_counts(amqp_url, d.host_id)
        assert (ready_msgs, consumers) == (0, 0)
        assert '"event": "drain_timeout"' not in d.log_text()


async def test_a_blocked_event_loop_stops_the_watchdog(
        lab: Lab, amqp_url: str, start_daemon: StartDaemon, netns: str) -> None:
    path = short_socket_path(lab.dir, f"notify-{os.getpid()}-3.sock")
    block = 3.0
    async with NotifyListener(path) as sd:
        d = await start_daemon(netns, env={
            "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": str(WATCHDOG_USEC),
            "VNETD_FAILPOINT_BLOCK_LOOP": str(block)})
        await sd.wait_for("READY", "1", timeout=10)
        await sd.wait_for("WATCHDOG", "1", count=3, timeout=10)
        blocked_at = time.monotonic()
        d.send_signal(signal.SIGUSR1)
        # Wait for the event under test: the first ping once the block is over.
        seen = len(sd.with_key("WATCHDOG", "1"))
        while not any(m.at > blocked_at + block for m in sd.with_key("WATCHDOG", "1")):
            seen += 1
            await sd.wait_for("WATCHDOG", "1", count=seen, timeout=block + 10)
        pings = [m.at for m in sd.with_key("WATCHDOG", "1")]
        during = [t for t in pings if blocked_at + 0.3 < t < blocked_at + block]
        assert during == [], f"pinged while the loop was blocked: {during}"
        after = [t for t in pings if t > blocked_at]
        assert after, "pings did not resume once the loop was free"
        # The first check after the block sees the lag and skips (or is too late).
        assert after[0] - blocked_at > block, (after[0] - blocked_at)
        assert any(s.startswith("degraded: event loop lagged") for s in sd.statuses()), \
            sd.statuses()
        assert d.running
        assert '"event": "failpoint_block_loop"' in d.log_text()


async def test_without_notify_socket_the_daemon_runs_silently(
        start_daemon: StartDaemon, netns: str, amqp_url: str) -> None:
    d = await start_daemon(netns, env={"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    async with RawRpc(amqp_url) as rpc:
        assert (await rpc.call(d.host_id, "host.health", timeout=10))["ok"] is True
    assert await d.stop() == 0
    text = d.log_text()
    assert "sd_notify_failed" not in text and "Traceback" not in text
