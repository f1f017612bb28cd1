"""A libvirtd restart survived: health degraded then healthy, state resynced (what
changed while libvirtd was away is published), lifecycle events resume.

Its own private libvirtd (module fixture), since the test restarts it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aio_pika
import pytest

from tests.conftest import StartDaemon
from tests.integration.test_libvirt import (
    err,
    ok,
    routed,
    uniq,
)
from tests.support import netns as netns_mod
from tests.support.libvirtd import PrivateLibvirtd
from tests.support.rpc import RawRpc

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]




class Events:
    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []

    def keys_for(self, name: str) -> list[str]:
        return [k.split(".", 1)[1] for k, body in self.got if name in json.dumps(body)]

    async def wait(self, name: str, want: list[str], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.keys_for(name) != want and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert self.keys_for(name) == want, self.got


async def wait_health(rpc: RawRpc, host_id: str, libvirt_state: str, status: str,
                      timeout: float = 30.0) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    last: Any = None
    while time.monotonic() - t0 < timeout:
        reply = await rpc.call(host_id, "host.health", {}, timeout=5)
        last = reply
        if reply.get("ok") and reply["result"]["components"].get("libvirt") == libvirt_state \
                and reply["result"]["status"] == status:
            return reply["result"], time.monotonic() - t0
        await asyncio.sleep(0.1)
    raise AssertionError(f"health never reached libvirt={libvirt_state} status={status}: {last}")


async def test_libvirtd_restart_survived(start_daemon: StartDaemon, libvirtd: PrivateLibvirtd,
                                         rpc: RawRpc, amqp_url: str) -> None:
    d = await start_daemon(netns=libvirtd.netns, libvirt={
        "enabled": True, "uri": libvirtd.uri, "reconnect_max_seconds": 1.0})
    keep, gone, new, after = uniq("keep"), uniq("gone"), uniq("new"), uniq("aft")
    n = 150
    ev = Events()
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel()
        ex = await ch.declare_exchange("vnetd.events", aio_pika.ExchangeType.TOPIC, durable=True)
        q = await ch.declare_queue("", exclusive=True)
        await q.bind(ex, routing_key=f"{d.host_id}.network.*")

        async def on(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            ev.got.append((message.routing_key or "", json.loads(message.body)))

        await q.consume(on, no_ack=True)
        await ok(rpc, d, "network.define", name=keep, spec=routed("nat", n, f"vb{keep}"[:15]),
                 start=True)
        await ok(rpc, d, "network.define", name=gone,
                 spec=routed("isolated", n + 1, f"vb{gone}"[:15], dhcp=False))
        await ev.wait(keep, ["network.defined", "network.started"])
        await ev.wait(gone, ["network.defined"])
        await wait_health(rpc, d.host_id, "connected", "healthy")

        # libvirtd goes away.
        await asyncio.to_thread(libvirtd.kill)
        _, took_degraded = await wait_health(rpc, d.host_id, "degraded", "degraded")
        e = await err(rpc, d, "network.list")
        assert e["code"] == "unavailable"
        # While it is away, its configuration changes: one network is gone, one is new.
        nets = libvirtd.root / "etc" / "qemu" / "networks"
        (nets / f"{gone}.xml").unlink()
        (nets / f"{new}.xml").write_text(
            f"<network><name>{new}</name><uuid>5b2c8a0e-1111-4222-8333-{n:012d}</uuid>"
            f"<bridge name='vb{new}'/></network>"[:400])
        await asyncio.to_thread(libvirtd.start)
        _, took_healthy = await wait_health(rpc, d.host_id, "connected", "healthy")
        print("RESTART", json.dumps({"degraded_after_s": took_degraded,
                                     "healthy_after_restart_s": took_healthy}))

        # Resync: what changed while away is published, marked as a resync.
        await ev.wait(gone, ["network.defined", "network.undefined"])
        await ev.wait(new, ["network.defined"])
        resynced = [b for k, b in ev.got if name_in(b, gone) and k.endswith(".undefined")]
        assert '"resync": true' in json.dumps(resynced[0])
        listed = {x["name"]: x for x in (await ok(rpc, d, "network.list"))["networks"]}
        assert listed[keep]["active"] is True  # survived the restart, bridge untouched
        assert gone not in listed
        assert listed[new]["owned"] is False
        assert netns_mod.link(libvirtd.netns, f"vb{keep}"[:15]) is not None
        assert ev.keys_for(keep) == ["network.defined", "network.started"]  # no spurious events

        # Events resume through the re-registered callbacks.
        await ok(rpc, d, "network.define", name=after,
                 spec=routed("isolated", n + 2, f"vb{after}"[:15], dhcp=False), start=True)
        await ev.wait(after, ["network.defined", "network.started"])
        for name in (keep, after):
            await ok(rpc, d, "network.destroy", name=name)
            await ok(rpc, d, "network.undefine", name=name)
        libvirtd.virsh("net-undefine", new, check=False)


def name_in(body: dict[str, Any], name: str) -> bool:
    return name in json.dumps(body)
