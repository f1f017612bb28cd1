"""A real QEMU guest on a VXLAN segment: it pings a guest on another host, and with
`proxy` no ARP crosses the underlay (the VXLAN devices answer from vnetd's entries).

QEMU (TCG here) boots the suite's guest image (tests/support/guest.py) on a TAP vnetd
made on host 1's segment bridge; the peer is a namespace guest on host 2.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.support import fleet as f
from tests.support.env import Lab
from tests.support.guest import Console, GuestImage, QemuGuest, mac_for
from tests.support.netns import NetnsFactory
from vnetd.client import VnetClient
from vnetd.fleet import Guest, Host, Segment, ensure_segment


@pytest.fixture
async def client(amqp_url: str) -> AsyncIterator[VnetClient]:
    async with VnetClient(amqp_url) as c:
        yield c


async def test_qemu_guest_pings_across_the_segment_with_arp_suppressed(
        netns_factory: NetnsFactory, start_daemon: Callable[..., Any], client: VnetClient,
        lab: Lab) -> None:
    image = GuestImage.locate()
    fl = f.Fleet(netns_factory)
    h1, h2 = fl.build(2)
    await fl.start_daemons(start_daemon)
    peer = fl.add_guest(h2, "10.4.0.2", "52:54:00:04:00:02")
    vm_mac = mac_for(f"vxq-{lab.suffix}")
    seg = Segment(vni=4000, bridge="br-q", vxlan="vx-q", proxy=True)
    hosts = [Host(h1.host_id, h1.address, guests=(Guest(vm_mac, "10.4.0.1"),)),
             Host(h2.host_id, h2.address, guests=(Guest(peer.mac, peer.ip),))]
    results = await ensure_segment(client, seg, hosts)
    assert all(r.ok for r in results), results
    tap = await client.call(h1.host_id, "tap.ensure", {"name": "vxqtap", "bridge": "br-q",
                                                        "owner_uid": 0, "vnet_hdr": True})
    assert tap.ok, tap.error
    assert tap.result["mtu"] == 1450  # the TAP takes its segment bridge's MTU
    attach = await client.call(h2.host_id, "port.attach", {"name": peer.port, "bridge": "br-q"})
    assert attach.ok, attach.error
    console = Console(lab.dir / f"vxlan-qemu-{os.getpid()}" / "vm.console")
    vm = QemuGuest(h1.netns, image, "vxqtap", vm_mac, console,
                   image.cmdline(ping=[peer.ip], static="10.4.0.1/24", wait=60), vnet_hdr=True)
    # What crosses the underlay, decoded by tcpdump (it knows VXLAN on port 4789).
    with f.Capture(fl.underlay, f"h{h1.index}", "udp port 4789") as wire:
        vm.start()
        try:
            verdict = await asyncio.to_thread(vm.verdict, 240)
        finally:
            vm.kill()
    assert verdict.pings == {peer.ip: "ok"}, console.text()[-2000:]
    inner = "\n".join(wire.lines)
    assert "ICMP echo request" in inner and "ICMP echo reply" in inner, inner[-2000:]
    assert "vni 4000" in inner
    assert "ARP" not in inner, [ln for ln in wire.lines if "ARP" in ln]
