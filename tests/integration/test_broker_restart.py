"""A broker restart under load: every job completes with a reply or is redelivered."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import pytest

from tests.support import netns as ns
from tests.support.broker import LabBroker
from tests.support.daemon import DaemonProcess
from tests.support.rpc import RawRpc, RpcTimeoutError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS = 300


async def test_jobs_survive_a_broker_restart_under_load(
        start_daemon: Any, netns: str, amqp_url: str, lab_broker: LabBroker) -> None:
    d: DaemonProcess = await start_daemon(netns=netns)
    async with RawRpc(amqp_url) as rpc:
        assert (await rpc.call(d.host_id, "bridge.ensure", {"name": "br0"}))["ok"]
    # Each job has a fixed message_id: a client that got no reply resends the same job,
    # as the contract says, and must get the same answer without the work being redone.
    jobs = {str(uuid.uuid4()): {"name": f"r{i}", "bridge": "br0"} for i in range(JOBS)}
    replies: dict[str, dict[str, Any]] = {}

    async def send_all(rpc: RawRpc, limit: float) -> None:
        sem = asyncio.Semaphore(32)

        async def one(mid: str, args: dict[str, Any]) -> None:
            async with sem:
                # No reply (timeout, or the connection died under it): resent later.
                with contextlib.suppress(RpcTimeoutError, Exception):
                    replies[mid] = await rpc.call(d.host_id, "tap.ensure", args,
                                                  message_id=mid, timeout=limit)
        await asyncio.gather(*(one(m, a) for m, a in jobs.items() if m not in replies))

    async with RawRpc(amqp_url) as rpc:
        sender = asyncio.create_task(send_all(rpc, limit=15))
        while len(replies) < JOBS // 4:
            await asyncio.sleep(0.01)
        await lab_broker.arestart()  # graceful stop + start, with jobs in flight
        restarted = time.monotonic()
        await sender
    answered_before = len(replies)
    assert answered_before < JOBS, "the restart came too late to test anything"

    # Consumers come back by themselves within seconds.
    async with RawRpc(amqp_url) as rpc:
        await rpc.wait_ok(d.host_id, timeout=30)
        back_after = time.monotonic() - restarted
        for _ in range(5):
            if len(replies) == JOBS:
                break
            await send_all(rpc, limit=20)
    assert len(replies) == JOBS
    assert back_after < 30
    failed = {m: r for m, r in replies.items() if not r["ok"]}
    assert failed == {}
    links = ns.links(netns)
    assert sorted(n for n in links if n.startswith("r")) == sorted(a["name"] for a in jobs.values())
    assert all(links[a["name"]]["master"] == "br0" for a in jobs.values())
    assert d.running
