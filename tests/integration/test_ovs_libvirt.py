"""libvirt's `ovs` network kind end to end, with real QEMU guests.

One namespace holds a private ovsdb-server + ovs-vswitchd (userspace datapath) and
a private libvirtd. libvirt 9.0 plugs a guest into an `<virtualport
type='openvswitch'/>` network by running `ovs-vsctl --may-exist add-port BR vnetN
tag=T -- set Interface vnetN external-ids:...` itself; ovs-vsctl finds the database
at `$OVS_RUNDIR/db.sock`, and libvirtd's children inherit its environment, so
libvirtd is started with OVS_RUNDIR pointing at the private run directory (the
machine's /var/run/openvswitch is never used).

vnetd makes the OVS bridge (`ovs.bridge.ensure`), defines the network with two
VLAN portgroups (`network.define`, kind `ovs`), and attaches a DHCP server's veth
on VLAN 100 (`ovs.port.attach`). A guest on portgroup v100 gets a lease from it and
pings it; a guest on portgroup v200 (static address in the same subnet) cannot
reach it. libvirt's ports carry the portgroups' tags; vnetd reports them (events,
ovs.bridge.list) and refuses to touch them; cleanup keeps the bridge the network
references; the ports go when the guests do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.events_subscriber import Subscriber
from tests.support import netns as netns_mod
from tests.support.daemon import DaemonProcess
from tests.support.env import Lab
from tests.support.guest import (
    Console,
    Dnsmasq,
    GuestImage,
    LibvirtGuest,
    domain_xml,
    mac_for,
    network_iface,
)
from tests.support.libvirtd import PrivateLibvirtd
from tests.support.ovs import PrivateOvs
from tests.support.rpc import RawRpc

pytestmark = [pytest.mark.integration, pytest.mark.libvirt, pytest.mark.timeout(600)]

BRIDGE = "ovbr0"
NETWORK = "ovsnet"
PEER = "10.88.0.1"


class Site:
    """The namespace with OVS and libvirtd in it; always torn down."""

    def __init__(self, lab: Lab) -> None:
        self.ns = netns_mod.create()
        self.ovs = PrivateOvs(lab.dir / f"ovs-lv-{self.ns}", self.ns)
        self.libvirtd = PrivateLibvirtd(lab.dir / f"libvirtd-ovs-{os.getpid()}", self.ns)
        self.peer_ns: str | None = None
        self.dhcp: Dnsmasq | None = None

    def start(self) -> None:
        self.ovs.start()
        # libvirtd (and the ovs-vsctl it runs) inherit this: the private database.
        saved = {k: os.environ.get(k) for k in self.ovs.env}
        os.environ.update(self.ovs.env)
        try:
            self.libvirtd.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.dhcp is not None:
                self.dhcp.stop()
        try:
            self.libvirtd.kill()
        finally:
            try:
                self.ovs.stop()
            finally:
                if self.peer_ns:
                    netns_mod.delete(self.peer_ns)
                netns_mod.delete(self.ns)


@pytest.fixture
def site(lab: Lab) -> Iterator[Site]:
    s = Site(lab)
    try:
        s.start()
        yield s
    finally:
        s.stop()


async def ok(rpc: RawRpc, d: DaemonProcess, op: str, **args: Any) -> dict[str, Any]:
    reply = await rpc.call(d.host_id, op, args, timeout=60)
    assert reply["ok"] is True, reply
    return reply["result"]


def guest(site: Site, image: GuestImage, name: str, portgroup: str, **cmd: Any) -> LibvirtGuest:
    console = Console(site.libvirtd.root / "guests" / f"{name}.console")
    console.path.parent.mkdir(parents=True, exist_ok=True)
    xml = domain_xml(name, image, console.path,
                     [network_iface(NETWORK, mac_for(name), portgroup=portgroup)],
                     cmdline=image.cmdline(hold=600, **cmd))
    return LibvirtGuest(site.libvirtd, name, xml, console)


async def test_guests_on_an_ovs_network_with_vlan_portgroups(
        start_daemon: Any, lab: Lab, site: Site, amqp_url: str, rpc: RawRpc) -> None:
    image = GuestImage.locate()
    host = DaemonProcess.new_host_id(lab.suffix)
    async with Subscriber(amqp_url, host) as sub:
        d = await start_daemon(
            netns=site.ns, host_id=host,
            libvirt={"enabled": True, "uri": site.libvirtd.uri},
            ovs={"enabled": True, "db": site.ovs.remote, "datapath_type": "netdev"},
            policy={"attachable": ["ovpeer*"], "protected": ["lo"]},
            cleanup={"bridge_grace_seconds": 0, "lease_seconds": 1})
        await ok(rpc, d, "ovs.bridge.ensure", name=BRIDGE)
        spec = {"kind": "ovs", "bridge": BRIDGE, "portgroups": [
            {"name": "v100", "default": True, "vlan": {"tags": [100]}},
            {"name": "v200", "vlan": {"tags": [200]}}]}
        await ok(rpc, d, "network.define", name=NETWORK, spec=spec, start=True)

        # A DHCP server on VLAN 100, in a namespace of its own, on a vnetd-attached veth.
        site.peer_ns = netns_mod.create()
        netns_mod.run_in(site.ns, "ip", "link", "add", "ovpeer0", "type", "veth", "peer",
                         "name", "eth0")
        netns_mod.run_in(site.ns, "ip", "link", "set", "eth0", "netns", site.peer_ns)
        netns_mod.run_in(site.ns, "ip", "link", "set", "ovpeer0", "up")
        netns_mod.run_in(site.peer_ns, "ip", "addr", "add", f"{PEER}/24", "dev", "eth0")
        netns_mod.run_in(site.peer_ns, "ip", "link", "set", "eth0", "up")
        # The userspace datapath copies frames as they are: a veth's offloaded (not yet
        # computed) UDP checksums would reach the guest wrong, and it drops the offers.
        netns_mod.run_in(site.peer_ns, "ethtool", "-K", "eth0", "tx", "off")
        await ok(rpc, d, "ovs.port.attach", name="ovpeer0", bridge=BRIDGE, tag=100)
        site.dhcp = Dnsmasq(site.peer_ns, "eth0", "10.88.0.100", "10.88.0.150",
                            site.libvirtd.root).start()

        g100 = guest(site, image, f"gov1{lab.suffix[:4]}", "v100", ping=[PEER], wait=60)
        g200 = guest(site, image, f"gov2{lab.suffix[:4]}", "v200", ping=[PEER],
                     static="10.88.0.50/24")
        try:
            g100.start()
            g200.start()
            v100, v200 = await asyncio.gather(asyncio.to_thread(g100.verdict, 300),
                                              asyncio.to_thread(g200.verdict, 300))
            assert v100.lease is not None and v100.lease.startswith("10.88.0."), v100
            assert v100.pings == {PEER: "ok"}, v100
            assert v200.pings == {PEER: "fail"}, v200  # VLAN 200 does not reach VLAN 100

            # libvirt added each guest's port itself, with its portgroup's tag.
            vnet100 = g100.interfaces()[mac_for(g100.name)]
            vnet200 = g200.interfaces()[mac_for(g200.name)]
            o = site.ovs
            assert o.vsctl("port-to-br", vnet100).stdout.strip() == BRIDGE
            assert o.vsctl("get", "Port", vnet100, "tag").stdout.strip() == "100"
            assert o.vsctl("get", "Port", vnet200, "tag").stdout.strip() == "200"
            attached = o.vsctl("get", "Interface", vnet100, "external_ids:attached-mac")
            assert attached.stdout.strip().strip('"') == mac_for(g100.name)

            # vnetd sees them, as not its own, and leaves them alone.
            listed = {b["name"]: b for b in (await ok(rpc, d, "ovs.bridge.list"))["bridges"]}
            ports = {p["name"]: p for p in listed[BRIDGE]["ovs_ports"]}
            assert ports[vnet100]["tag"] == 100 and ports[vnet100]["owned"] is False
            assert ports["ovpeer0"]["owned"] is True
            added = await sub.wait_type("ovs.port.added", vnet100, timeout=30)
            assert added.data["tag"] == 100 and added.data["bridge"] == BRIDGE
            refused = await rpc.call(d.host_id, "ovs.port.detach", {"name": vnet100})
            assert refused["ok"] is False and refused["error"]["code"] == "forbidden"
            await asyncio.sleep(1.2)  # the leases of the jobs above run out
            sweep = await ok(rpc, d, "cleanup.run", dry_run=True)
            assert not any(c["name"] == BRIDGE for c in sweep["candidates"])  # has ports
        finally:
            g100.destroy()
            g200.destroy()
        await sub.wait_type("ovs.port.removed", vnet100, timeout=30)
        assert o.vsctl("port-to-br", vnet100, check=False).returncode != 0

        # Without guests the bridge still has vnetd's peer port; once that goes, the
        # network's reference keeps it.
        await ok(rpc, d, "ovs.port.detach", name="ovpeer0")
        await asyncio.sleep(1.2)
        sweep = await ok(rpc, d, "cleanup.run")
        entry = next(c for c in sweep["candidates"] if c["name"] == BRIDGE)
        assert entry["action"] == "kept" and "libvirt" in entry["reason"], entry
        assert o.vsctl("br-exists", BRIDGE).returncode == 0
