"""A real guest's life as vnetd's domain events tell it, and a NIC hot-plugged in and out.

One guest under the private libvirtd with two NICs that concern vnetd: one on a NAT
network vnetd defined (libvirt makes its vnetN) and one on a TAP vnetd made (Nova's way).
It starts, gets a third NIC hot-plugged (`virsh attach-interface`, on the same network),
which the guest sees, brings up and gets a lease on; the NIC is unplugged again
(`virsh detach-interface`: the guest's kernel ejects it); libvirtd restarts under the
running guest (vnetd reconnects, rereads, publishes nothing: nothing changed); and the
guest is stopped. A
subscriber of the documented event contract sees `domain.started`,
`domain.interface.added`, `domain.interface.removed`, `domain.stopped`, each with the
TAP and MAC libvirt reports for that NIC, in one epoch with contiguous sequence numbers.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import pytest

from tests.conftest import StartDaemon
from tests.integration.events_subscriber import Received, Subscriber
from tests.support import netns as netns_mod
from tests.support.env import Lab
from tests.support.guest import (
    Console,
    GuestImage,
    LibvirtGuest,
    domain_xml,
    ethernet_iface,
    mac_for,
    network_iface,
)
from tests.support.libvirtd import PrivateLibvirtd
from tests.support.rpc import RawRpc

pytestmark = [pytest.mark.integration, pytest.mark.libvirt, pytest.mark.timeout(400)]
_ids = itertools.count(1)


async def ok(rpc: RawRpc, host: str, op: str, **args: Any) -> dict[str, Any]:
    reply = await rpc.call(host, op, args, timeout=60)
    assert reply["ok"] is True, f"{op} {args}: {reply}"
    result: dict[str, Any] = reply["result"]
    return result


async def wait_libvirt(rpc: RawRpc, host: str, state: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        health = await ok(rpc, host, "host.health")
        if health["components"].get("libvirt") == state:
            return
        assert loop.time() < deadline, f"libvirt never {state}: {health}"
        await asyncio.sleep(0.1)


def by_mac(ifaces: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(i["mac"]): i for i in ifaces}


async def test_domain_events_start_hotplug_unplug_stop(
        start_daemon: StartDaemon, libvirtd: PrivateLibvirtd, rpc: RawRpc, lab: Lab,
        amqp_url: str) -> None:
    image = GuestImage.locate()
    n = next(_ids)
    sfx = f"{lab.suffix[:3]}{n}"
    net, tap, name = f"gev{sfx}", f"vgev{sfx}", f"gev{sfx}-vm"
    d = await start_daemon(netns=libvirtd.netns, libvirt={
        "enabled": True, "uri": libvirtd.uri, "reconnect_max_seconds": 1.0})
    await wait_libvirt(rpc, d.host_id, "connected")
    spec = {"kind": "nat", "bridge": {"name": f"vgb{sfx}", "stp": False},
            "ipv4": {"address": "10.180.0.1", "prefix": 24, "dhcp": {
                "ranges": [{"start": "10.180.0.100", "end": "10.180.0.150"}]}}}
    await ok(rpc, d.host_id, "network.define", name=net, spec=spec, start=True)
    await ok(rpc, d.host_id, "tap.ensure", name=tap, owner_uid=0, vnet_hdr=True)
    mac0, mac1, mac2 = (mac_for(name, i) for i in range(3))
    console = Console(lab.dir / f"guests-{os.getpid()}" / f"{name}.console")
    xml = domain_xml(name, image, console.path,
                     [network_iface(net, mac0), ethernet_iface(tap, mac1)],
                     cmdline=image.cmdline(ping=["10.180.0.1"], hold=300, wait=60))
    guest = LibvirtGuest(libvirtd, name, xml, console)

    async def virsh(*args: str) -> str:
        return (await asyncio.to_thread(libvirtd.virsh, *args)).stdout

    try:
        async with Subscriber(amqp_url, d.host_id) as sub:
            def domain_event(kind: str) -> Any:
                return lambda r: r.type == kind and r.event.get("subject") == name

            await asyncio.to_thread(guest.start)
            started = await sub.wait_for(domain_event("domain.started"), timeout=60)
            live = await asyncio.to_thread(guest.interfaces)  # MAC -> target, from libvirt
            ifaces = by_mac(started.data["interfaces"])
            assert set(ifaces) == {mac0, mac1}
            assert ifaces[mac0]["target"] == live[mac0] and live[mac0].startswith("vnet")
            assert (ifaces[mac0]["network"], ifaces[mac0]["type"]) == (net, "network")
            assert (ifaces[mac1]["target"], ifaces[mac1]["type"]) == (tap, "ethernet")
            assert started.data["uuid"] == (await virsh("domuuid", name)).strip()
            assert started.data["reason"] == "booted"
            snap = await ok(rpc, d.host_id, "host.snapshot")
            assert [x["name"] for x in snap["domains"]] == [name]

            # The guest is up (its verdict printed) before a NIC is hot-plugged.
            v = await console.averdict(timeout=240)
            assert v.lease is not None and v.pings == {"10.180.0.1": "ok"}, v

            await virsh("attach-interface", name, "network", net, "--mac", mac2,
                        "--model", "virtio", "--live")
            added = await sub.wait_for(domain_event("domain.interface.added"), timeout=60)
            live = await asyncio.to_thread(guest.interfaces)
            assert added.data["interface"]["mac"] == mac2
            assert added.data["interface"]["target"] == live[mac2]
            assert added.data["interface"]["network"] == net
            # The guest found the new NIC and got a lease on it.
            plugged = await console.await_(lambda ln: "hotplug" in ln.words, 120, "hotplug")
            nic = plugged.fields["nic"]
            leased = await console.await_(
                lambda ln: ln.get("nic") == nic and ln.get("mac") == mac2, 120, "eth1 lease")
            assert leased.get("lease") not in (None, "none"), leased.text

            await virsh("detach-interface", name, "network", "--mac", mac2, "--live")
            removed = await sub.wait_for(domain_event("domain.interface.removed"), timeout=120)
            assert removed.data["interface"] == added.data["interface"]
            await console.await_(lambda ln: "unplug" in ln.words and ln.get("nic") == nic,
                                 60, "unplug")
            assert mac2 not in await asyncio.to_thread(guest.interfaces)

            # libvirtd restarts under the running guest: vnetd reconnects and rereads
            # every domain; nothing changed, so nothing is published, and the stop below
            # comes through the new connection's callbacks.
            mark = len(sub.received)
            await asyncio.to_thread(libvirtd.kill)
            await wait_libvirt(rpc, d.host_id, "degraded")
            await asyncio.to_thread(libvirtd.start)
            await wait_libvirt(rpc, d.host_id, "connected")
            assert (await virsh("domstate", name)).strip() == "running"
            snap = await ok(rpc, d.host_id, "host.snapshot")
            assert [(x["name"], sorted(by_mac(x["interfaces"]))) for x in snap["domains"]] == [
                (name, sorted(ifaces))]
            assert not [r.type for r in sub.received[mark:] if r.type.startswith("domain.")]

            await asyncio.to_thread(guest.destroy)
            stopped = await sub.wait_for(domain_event("domain.stopped"), timeout=60)
            assert stopped.data["reason"] == "destroyed"
            assert by_mac(stopped.data["interfaces"]) == ifaces  # as they were at the start
            assert (await ok(rpc, d.host_id, "host.snapshot"))["domains"] == []
            # Nova's TAP outlives the guest; libvirt's vnetN does not.
            links = netns_mod.links(libvirtd.netns)
            assert tap in links and live[mac0] not in links

            ours: list[Received] = [started, added, removed, stopped]
            assert len({r.event["epoch"] for r in ours}) == 1
            assert [r.seq for r in ours] == sorted(r.seq for r in ours)
            seqs = [r.seq for r in sub.received]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a sequence gap"
    finally:
        await asyncio.to_thread(guest.destroy)
        libvirtd.virsh("net-destroy", net, check=False)
        libvirtd.virsh("net-undefine", net, check=False)
