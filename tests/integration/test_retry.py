"""Temporary failures are retried later, never acked and dropped (reliability guide item 10).

A `network.define` without reply_to sent while libvirtd is down meets `unavailable`;
it waits in the host's retry queue, comes back, and takes effect once libvirtd is up
again. A job that runs out of attempts is in vnetd.dead with the reason. A job with
reply_to is answered `unavailable` at once, exactly once.

Its own private libvirtd (module fixture), since the test stops it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aio_pika
import pytest

from tests.conftest import StartDaemon
from tests.integration.test_libvirt import routed, uniq
from tests.integration.test_libvirt_restart import wait_health
from tests.support.daemon import DaemonProcess
from tests.support.libvirtd import PrivateLibvirtd
from tests.support.queues import take_dead_letter
from tests.support.rpc import RawRpc

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]


async def wait_for(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (got := await asyncio.to_thread(check)):
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def retries_logged(d: DaemonProcess, message_id: str) -> list[int]:
    attempts = []
    for line in d.log_text().splitlines():
        if "job_retry_later" in line and message_id in line:
            attempts.append(int(json.loads(line)["attempt"]))
    return attempts


async def take_dead(amqp_url: str, message_id: str, timeout: float = 15.0
                    ) -> aio_pika.abc.AbstractIncomingMessage:
    """The message with `message_id` from vnetd.dead (others are put back)."""
    msg = await take_dead_letter(amqp_url, message_id, timeout)
    if msg is None:
        raise AssertionError(f"{message_id} never reached vnetd.dead")
    return msg


async def test_a_job_without_reply_to_takes_effect_once_libvirtd_is_back(
        start_daemon: StartDaemon, libvirtd: PrivateLibvirtd, rpc: RawRpc,
        amqp_url: str) -> None:
    lv = {"enabled": True, "uri": libvirtd.uri, "reconnect_max_seconds": 0.5}
    d = await start_daemon(netns=libvirtd.netns, libvirt=lv,
                           amqp={"retry_delay_seconds": 0.3, "retry_attempts": 200})
    short = await start_daemon(netns=libvirtd.netns, libvirt=lv,
                               amqp={"retry_delay_seconds": 0.2, "retry_attempts": 3})
    await wait_health(rpc, d.host_id, "connected", "healthy")
    await wait_health(rpc, short.host_id, "connected", "healthy")
    name, doomed = uniq("retry"), uniq("doom")
    try:
        await asyncio.to_thread(libvirtd.kill)
        await wait_health(rpc, d.host_id, "degraded", "degraded")
        await wait_health(rpc, short.host_id, "degraded", "degraded")

        # With reply_to: answered unavailable at once (the caller retries), nothing queued.
        asked = await rpc.call(d.host_id, "network.list", {}, timeout=10)
        assert asked["ok"] is False and asked["error"]["code"] == "unavailable"

        # Without reply_to: retried while libvirtd is away.
        job = str(uuid.uuid4())
        await rpc.publish_no_reply(d.host_id, "network.define", {
            "name": name, "spec": routed("isolated", 170, f"vb{name}"[:15], dhcp=False)},
            message_id=job)
        # Wait until it has come back from the retry queue at least twice: the proof
        # that it was neither dropped nor answered into the void.
        await wait_for(lambda: max(retries_logged(d, job), default=0) >= 3,
                       "the job to come back from the retry queue twice")
        assert libvirtd.virsh("net-info", name, check=False).returncode != 0  # not yet

        # Out of attempts: in vnetd.dead with the reason.
        lost = str(uuid.uuid4())
        await rpc.publish_no_reply(short.host_id, "network.define", {
            "name": doomed, "spec": routed("isolated", 171, f"vb{doomed}"[:15], dhcp=False)},
            message_id=lost)
        dead = await take_dead(amqp_url, lost)
        headers = dead.headers or {}
        assert headers["x-vnetd-attempt"] == 3
        assert str(headers["x-vnetd-reason"]).startswith("unavailable: ")
        assert "after 3 attempts" in str(headers["x-vnetd-reason"])
        assert json.loads(dead.body)["args"]["name"] == doomed

        await asyncio.to_thread(libvirtd.start)
        await wait_for(lambda: libvirtd.virsh("net-info", name, check=False).returncode == 0,
                       f"network {name} to be defined once libvirtd is back")
        listed = await rpc.call(d.host_id, "network.list", {}, timeout=10)
        mine = [n for n in listed["result"]["networks"] if n["name"] == name]
        assert mine and mine[0]["owned"] is True
        assert libvirtd.virsh("net-info", doomed, check=False).returncode != 0
    finally:
        if not libvirtd.running:
            await asyncio.to_thread(libvirtd.start)
        for n in (name, doomed):
            libvirtd.virsh("net-undefine", n, check=False)
