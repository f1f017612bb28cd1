"""Netlink flood with a small watcher receive buffer: the overrun is counted, and a
subscriber following the documented algorithm still ends equal to `ip -j link`."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.events_subscriber import LinkFollower, Subscriber
from tests.support import netns as netns_mod
from tests.support.daemon import DaemonProcess
from tests.support.env import Lab
from tests.support.rpc import RawRpc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAIRS = 2100
KEEP = 100


def kernel_view(ns: str) -> dict[int, dict[str, object]]:
    links = netns_mod.ip_json(ns, "link", "show")
    names = {e["ifindex"]: e["ifname"] for e in links}
    return {e["ifindex"]: {"name": e["ifname"], "mtu": e["mtu"],
                           "state": "up" if "UP" in e["flags"] else "down",
                           "master": e.get("master"),
                           "mac": e.get("address")} for e in links if e["ifindex"] in names}


def follower_view(f: LinkFollower) -> dict[int, dict[str, object]]:
    return {i: {"name": v["name"], "mtu": v["mtu"], "state": v["state"],
                "master": v["master"], "mac": v["mac"]} for i, v in f.links.items()}


async def snapshot(rpc: RawRpc, host: str) -> dict[str, object]:
    for _ in range(200):
        reply = await rpc.call(host, "host.snapshot", {}, timeout=30)
        if reply["ok"]:
            return reply["result"]
        assert reply["error"]["code"] == "unavailable", reply
        await asyncio.sleep(0.05)
    raise AssertionError("host.snapshot kept failing")


async def test_flood_with_small_rcvbuf_ends_exact(start_daemon, lab: Lab, netns: str,
                                                  amqp_url: str, rpc: RawRpc) -> None:
    host = DaemonProcess.new_host_id(lab.suffix)
    async with Subscriber(amqp_url, host) as sub:
        await start_daemon(netns=netns, host_id=host, netlink={"rcvbuf_bytes": 32 * 1024})
        await sub.wait_type("host.started")
        follower = LinkFollower()
        follower.load_snapshot(await snapshot(rpc, host))

        adds = "".join(f"link add fa{i} type veth peer name fb{i}\n" for i in range(PAIRS))
        ups = "".join(f"link set fa{i} up\n" for i in range(0, PAIRS, 7))
        dels = "".join(f"link del fa{i}\n" for i in range(KEEP, PAIRS))
        t0 = time.perf_counter()
        await asyncio.to_thread(netns_mod._run, ["ip", "-n", netns, "-batch", "-"],
                                input=adds + ups + dels, timeout=300)
        took = time.perf_counter() - t0
        changes = PAIRS * 2 * 2 + len(ups.splitlines())
        print(f"\nflood: {changes} kernel link changes in {took:.2f}s "
              f"({changes / took:.0f}/s) by ip -batch")

        resync = await sub.wait_for(
            lambda r: r.type == "host.resync" and r.data["reason"] == "netlink_overrun",
            timeout=120)
        assert resync.data["overruns"] >= 1
        await sub.quiet(1.0, timeout=180)

        resnapshots = 0
        for r in sub.received:
            follower.apply(r.event)
            if follower.needs_snapshot:
                resnapshots += 1
                follower.load_snapshot(await snapshot(rpc, host))
        print(f"flood: {len(sub.received)} events received, "
              f"{len(follower.resyncs)} host.resync, {resnapshots} re-snapshots, "
              f"overruns reported {max(r['overruns'] for r in follower.resyncs)}")
        assert not follower.gaps, follower.gaps
        kernel = kernel_view(netns)
        assert len(kernel) == 1 + 2 * KEEP
        mine = follower_view(follower)
        assert mine == kernel, {i: (mine.get(i), kernel.get(i))
                                for i in set(mine) | set(kernel) if mine.get(i) != kernel.get(i)}
        seqs = [r.seq for r in sub.received]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
