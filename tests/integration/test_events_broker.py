"""Broker outage: changes made while RabbitMQ is down reach the subscriber afterwards,
or a host.resync tells it what it missed; nothing is lost silently."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.events_subscriber import LinkFollower, Subscriber
from tests.support import netns as netns_mod
from tests.support.broker import LabBroker
from tests.support.daemon import DaemonProcess
from tests.support.env import Lab
from tests.support.rpc import RawRpc

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def snapshot(amqp_url: str, host: str) -> dict[str, object]:
    async with RawRpc(amqp_url) as rpc:
        for _ in range(200):
            try:
                reply = await rpc.call(host, "host.snapshot", {}, timeout=5)
            except TimeoutError:
                continue
            if reply["ok"]:
                return reply["result"]
            await asyncio.sleep(0.1)
    raise AssertionError("no snapshot")


@pytest.mark.parametrize("buffer_size", [100_000, 20])
async def test_broker_outage_loses_nothing_silently(start_daemon, lab: Lab, netns: str,
                                                    amqp_url: str, lab_broker: LabBroker,
                                                    buffer_size: int) -> None:
    host = DaemonProcess.new_host_id(lab.suffix)
    queue = f"test.events.{host}"
    async with Subscriber(amqp_url, host, queue_name=queue) as sub:
        await start_daemon(netns=netns, host_id=host, events={"buffer_size": buffer_size})
        await sub.wait_type("host.started")
        follower = LinkFollower()
        follower.load_snapshot(await snapshot(amqp_url, host))
        netns_mod._run(["ip", "-n", netns, "tuntap", "add", "before0", "mode", "tap"])
        await sub.wait_type("link.added", "before0")

        await lab_broker.astop()
        try:
            batch = "".join(f"tuntap add dev out{i} mode tap\n" for i in range(60))
            batch += "".join(f"link set out{i} up\n" for i in range(0, 60, 2))
            batch += "".join(f"link del out{i}\n" for i in range(0, 60, 3))
            batch += "link del before0\n"
            await asyncio.to_thread(netns_mod._run, ["ip", "-n", netns, "-batch", "-"],
                                    input=batch)
            await asyncio.sleep(1.0)
        finally:
            await lab_broker.astart()

        last_before = sub.received[-1].seq
        await sub.wait_for(lambda r: r.seq > last_before, timeout=90)
        await sub.quiet(2.0)
        reasons = [r.data["reason"] for r in sub.received if r.type == "host.resync"]
        if buffer_size >= 1000:
            assert "broker_reconnect" in reasons
            await sub.wait_type("link.removed", "before0", timeout=5)
        else:
            assert "buffer_overflow" in reasons

        applied_gap = False
        for r in sub.received:
            follower.apply(r.event)
            if follower.needs_snapshot:
                applied_gap = True
                follower.load_snapshot(await snapshot(amqp_url, host))
        seqs = sorted({r.seq for r in sub.received})
        missing = set(range(seqs[0], seqs[-1] + 1)) - set(seqs)
        reported = set()
        for r in sub.received:
            if r.type == "host.resync" and "lost" in r.data:
                lost = r.data["lost"]
                reported |= set(range(lost["first"], lost["last"] + 1))
        # every sequence number missing at the subscriber is reported as lost
        assert missing <= reported, sorted(missing - reported)
        if buffer_size >= 1000:
            assert not missing  # the buffer was big enough: every event arrived
            assert not applied_gap
        else:
            assert reported and applied_gap  # overflow: reported, then a new snapshot
        kernel = {e["ifindex"]: e["ifname"] for e in netns_mod.ip_json(netns, "link", "show")}
        assert {i: v["name"] for i, v in follower.links.items()} == kernel
