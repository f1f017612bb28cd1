"""Crashes: kill -9 between side effect and ack, inside device creation, and a poison
message that kills every time.

The daemon SIGKILLs itself at an exact step through VNETD_FAILPOINTS (see
vnetd/amqp/failpoints.py), so each test hits the window it means to.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aio_pika
import pytest

from tests.support import netns as ns
from tests.support.daemon import DaemonProcess
from tests.support.rpc import RawRpc
from vnetd.net.model import CREATING_GROUP, OWNER_ALIAS

pytestmark = pytest.mark.integration


async def _wait_dead(d: DaemonProcess, timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if not d.running:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"daemon {d.host_id} did not die")


@pytest.mark.parametrize("point", ["after_effect", "before_ack"])
async def test_kill9_between_effect_and_ack_converges_on_redelivery(
        rpc: RawRpc, start_daemon: Any, netns: str, point: str) -> None:
    d: DaemonProcess = await start_daemon(
        netns=netns, env={"VNETD_FAILPOINTS": f"{point}:tap.ensure"})
    assert (await rpc.call(d.host_id, "bridge.ensure", {"name": "br0"}))["ok"]
    mid = str(uuid.uuid4())
    call = asyncio.create_task(rpc.call(d.host_id, "tap.ensure", {"name": "tap0", "bridge": "br0"},
                                        message_id=mid, timeout=60))
    await _wait_dead(d)
    assert d.returncode == -9
    # The effect happened before the crash: the TAP exists, marked, attached.
    k = ns.link(netns, "tap0")
    assert k is not None and k["master"] == "br0" and k["ifalias"].startswith("vnetd:")

    d.env.clear()
    await d.start()
    reply = await call  # after_effect: the only reply comes from the redelivery
    assert reply["ok"] is True, reply
    if point == "before_ack":
        # The first reply went out before the crash; the redelivery answers again.
        for _ in range(100):
            if rpc.stray_replies:
                break
            await asyncio.sleep(0.05)
        assert len(rpc.stray_replies) == 1
        again = rpc.stray_replies[0].json()
        assert again["ok"] is True and again["result"]["created"] is False
    else:
        assert reply["result"]["created"] is False  # converged on what the crash left
    taps = [n for n in ns.links(netns) if n.startswith("tap")]
    assert taps == ["tap0"]
    # Acked now: nothing is redelivered after another restart.
    await d.stop()
    await d.start()
    # A job on the same TAP after the restart: it takes the TAP's lock after any
    # redelivered tap0 job would have, so its reply comes after that one's.
    again = await rpc.call(d.host_id, "tap.ensure", {"name": "tap0", "bridge": "br0"})
    assert again["ok"] is True and again["result"]["created"] is False
    assert len(rpc.stray_replies) == (1 if point == "before_ack" else 0), rpc.stray_replies


def _no_unmarked_devices(netns: str) -> dict[str, dict[str, Any]]:
    links = ns.links(netns)
    unmarked = [n for n, e in links.items() if n != "lo" and e.get("ifalias") != OWNER_ALIAS]
    assert unmarked == [], links
    return links


@pytest.mark.parametrize("point", ["after_create", "after_mark"])
async def test_kill9_inside_tap_creation_leaves_no_tap_and_redelivery_creates_it(
        rpc: RawRpc, start_daemon: Any, netns: str, point: str) -> None:
    """A TAP is persistent only once marked: a kill before that closes its descriptor
    and the kernel removes it, so nothing unmarked is left for the redelivery."""
    d: DaemonProcess = await start_daemon(netns=netns, env={"VNETD_FAILPOINTS": f"{point}:tap"})
    assert (await rpc.call(d.host_id, "bridge.ensure", {"name": "br0"}))["ok"]
    call = asyncio.create_task(rpc.call(d.host_id, "tap.ensure", {"name": "tap0", "bridge": "br0"},
                                        message_id=str(uuid.uuid4()), timeout=60))
    await _wait_dead(d)
    assert d.returncode == -9
    assert ns.link(netns, "tap0") is None  # died with the daemon's descriptor
    assert set(_no_unmarked_devices(netns)) == {"lo", "br0"}

    d.env.clear()
    await d.start()
    reply = await call
    assert reply["ok"] is True, reply
    assert reply["result"]["created"] is True  # the redelivery made it, whole
    k = _no_unmarked_devices(netns)["tap0"]
    assert k["master"] == "br0" and k["linkinfo"]["info_data"]["persist"] is True
    assert k["inet6_addr_gen_mode"] == "none"  # IPv6 off (a bridge port: test_tap_ipv6.py)
    assert not any(a.get("addr_info") for a in ns.ip_json(netns, "-6", "addr", "show", "tap0"))
    assert [n for n in ns.links(netns) if n.startswith("tap")] == ["tap0"]


@pytest.mark.parametrize("point", ["after_create", "after_mark"])
async def test_kill9_inside_bridge_creation_is_finished_by_the_redelivery(
        rpc: RawRpc, start_daemon: Any, netns: str, point: str) -> None:
    """A bridge is born in CREATING_GROUP (the kernel ignores an alias in the creating
    request): what a kill leaves is recognisable as vnetd's, and the redelivery finishes it."""
    d: DaemonProcess = await start_daemon(netns=netns,
                                          env={"VNETD_FAILPOINTS": f"{point}:bridge"})
    call = asyncio.create_task(rpc.call(d.host_id, "bridge.ensure", {"name": "br0", "stp": True},
                                        message_id=str(uuid.uuid4()), timeout=60))
    await _wait_dead(d)
    assert d.returncode == -9
    left = ns.link(netns, "br0")
    assert left is not None and left["group"] == str(CREATING_GROUP)
    # after_create: not marked yet; after_mark: marked, still in the group.
    assert left.get("ifalias") == (OWNER_ALIAS if point == "after_mark" else None)

    d.env.clear()
    await d.start()
    reply = await call
    assert reply["ok"] is True, reply
    assert reply["result"]["created"] is True and reply["result"]["owned"] is True
    links = _no_unmarked_devices(netns)
    assert set(links) == {"lo", "br0"}  # finished in place: no second bridge
    br = links["br0"]
    assert br["group"] == "default" and "UP" in br["flags"]
    assert br["linkinfo"]["info_data"]["stp_state"] == 1
    again = await rpc.call(d.host_id, "bridge.ensure", {"name": "br0", "stp": True})
    assert again["ok"] is True and again["result"]["created"] is False


@pytest.mark.parametrize("point", ["after_create", "after_mark"])
async def test_kill9_inside_vxlan_creation_is_finished_by_the_redelivery(
        rpc: RawRpc, start_daemon: Any, netns: str, point: str) -> None:
    """Any netlink-created kind follows the bridge's rule: born in CREATING_GROUP."""
    for args in (("link", "add", "u0", "type", "veth", "peer", "name", "u1"),
                 ("addr", "add", "192.0.2.1/24", "dev", "u0"),
                 ("link", "set", "u0", "up"), ("link", "set", "u1", "up")):
        ns.run_in(netns, "ip", *args)
    d: DaemonProcess = await start_daemon(netns=netns,
                                          env={"VNETD_FAILPOINTS": f"{point}:vxlan"})
    args = {"name": "vx0", "vni": 7, "local": "192.0.2.1"}
    call = asyncio.create_task(rpc.call(d.host_id, "vxlan.ensure", args,
                                        message_id=str(uuid.uuid4()), timeout=60))
    await _wait_dead(d)
    assert d.returncode == -9
    left = ns.link(netns, "vx0")
    assert left is not None and left["group"] == str(CREATING_GROUP)
    assert left.get("ifalias") == (OWNER_ALIAS if point == "after_mark" else None)

    d.env.clear()
    await d.start()
    reply = await call
    assert reply["ok"] is True, reply
    assert reply["result"]["created"] is True and reply["result"]["owned"] is True
    links = ns.links(netns)
    assert set(links) == {"lo", "u0", "u1", "vx0"}  # finished in place, nothing else
    vx = links["vx0"]
    assert vx["ifalias"] == OWNER_ALIAS and vx["group"] == "default" and "UP" in vx["flags"]
    assert vx["linkinfo"]["info_data"]["id"] == 7
    again = await rpc.call(d.host_id, "vxlan.ensure", args)
    assert again["ok"] is True and again["result"]["created"] is False


async def test_poison_message_is_dead_lettered_while_other_jobs_flow(
        rpc: RawRpc, start_daemon: Any, netns: str, amqp_url: str) -> None:
    """A job that kills the daemon every time ends in vnetd.dead; the 20 jobs queued
    behind it, which die with it the first time, are all done: none is dead-lettered."""
    d: DaemonProcess = await start_daemon(
        netns=netns, env={"VNETD_FAILPOINTS": "after_effect:link.set"})
    assert (await rpc.call(d.host_id, "tap.ensure", {"name": "p0", "up": False}))["ok"]
    poison = str(uuid.uuid4())
    poison_reply = asyncio.create_task(rpc.call(
        d.host_id, "link.set", {"name": "p0", "up": True}, message_id=poison, timeout=90))
    await asyncio.sleep(0.05)
    others = [asyncio.create_task(rpc.call(d.host_id, "tap.ensure", {"name": f"ok{i}"},
                                           timeout=90)) for i in range(20)]
    restarts = 0

    async def supervise() -> None:  # what systemd's Restart=on-failure does
        nonlocal restarts
        while True:
            await asyncio.sleep(0.05)
            if not d.running:
                restarts += 1
                # Not waiting for ready: the redelivered poison may kill it first.
                await d.start(wait_ready=False)

    supervisor = asyncio.create_task(supervise())
    try:
        replies = await asyncio.wait_for(asyncio.gather(*others), 120)
        verdict = await asyncio.wait_for(poison_reply, 60)
        await asyncio.sleep(1.0)
        assert d.running
    finally:
        supervisor.cancel()
    assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]]
    assert all(ns.link(netns, f"ok{i}") is not None for i in range(20))
    # Crashed alone twice (threshold 2), plus once beside the others at most.
    assert restarts in (2, 3), restarts
    assert verdict["ok"] is False and verdict["error"]["code"] == "internal"
    assert "quarantined" in verdict["error"]["message"]
    # The failpoint fires after the effect: the link is up; only reply and ack died.
    assert "UP" in ns.link(netns, "p0")["flags"]  # type: ignore[index]
    conn = await aio_pika.connect(amqp_url)
    try:
        ch = await conn.channel()
        dead = await ch.declare_queue("vnetd.dead", passive=True)
        seen = []
        for _ in range(500):
            msg = await dead.get(fail=False, no_ack=False)
            if msg is None:
                break
            seen.append(msg.message_id)
            await (msg.ack() if msg.message_id == poison else msg.nack(requeue=True))
            if msg.message_id == poison:
                break
        assert poison in seen, "the poison message is not in vnetd.dead"
    finally:
        await conn.close()
