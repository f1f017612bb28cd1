"""Domain events that concern networking: the domain XML parser, and the libvirt
watcher's domain tracker over the fake connection (FakeConnection, FakeNet)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.unit.fakes import FakeNet
from tests.unit.test_network_handlers import NAT, FakeConnection, RecordingSink, _until
from vnetd.contract.commands import parse_request
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import Dispatcher
from vnetd.handlers.policy import Policy
from vnetd.handlers.registry import build_registry
from vnetd.virt.backend import DomainInterface, DomainState
from vnetd.virt.domain import interfaces_of
from vnetd.watchers.libvirt import LibvirtWatcher

LIVE = """<domain type='qemu' id='3'><name>vm1</name>
<uuid>aaaaaaaa-0000-4000-8000-000000000001</uuid><devices>
<interface type='network'><mac address='52:54:00:00:00:01'/>
  <source network='n1' portid='x' bridge='virbr-n1'/><target dev='vnet0'/>
  <model type='virtio'/><alias name='net0'/></interface>
<interface type='ethernet'><mac address='52:54:00:00:00:02'/>
  <target dev='tap-nova' managed='no'/><alias name='net1'/></interface>
<interface type='direct'><mac address='52:54:00:00:00:03'/>
  <source dev='eth9' mode='bridge'/><target dev='macvtap0'/><alias name='net2'/></interface>
<interface type='bridge'><mac address='52:54:00:00:00:04'/>
  <source bridge='br-foreign'/><target dev='vnet1'/><alias name='net3'/></interface>
<disk type='file'><alias name='virtio-disk0'/></disk>
</devices></domain>"""
UUID = "aaaaaaaa-0000-4000-8000-000000000001"


def test_interfaces_of_a_live_definition() -> None:
    got = interfaces_of(LIVE)
    assert [(i.alias, i.type, i.mac, i.target, i.network, i.bridge, i.source_dev)
            for i in got] == [
        ("net0", "network", "52:54:00:00:00:01", "vnet0", "n1", "virbr-n1", None),
        ("net1", "ethernet", "52:54:00:00:00:02", "tap-nova", None, None, None),
        ("net2", "direct", "52:54:00:00:00:03", "macvtap0", None, None, "eth9"),
        ("net3", "bridge", "52:54:00:00:00:04", "vnet1", None, "br-foreign", None),
    ]
    assert got[1].data() == {"alias": "net1", "mac": "52:54:00:00:00:02", "type": "ethernet",
                             "target": "tap-nova", "network": None, "bridge": None,
                             "source_dev": None}


@pytest.mark.parametrize("text", ["", "<domain", "<domain><devices/></domain>"])
def test_interfaces_of_nothing(text: str) -> None:
    assert interfaces_of(text) == ()


def _domain(*ifaces: DomainInterface, active: bool = True) -> DomainState:
    return DomainState("vm1", UUID, active, tuple(ifaces))


def _iface(alias: str, **kw: Any) -> DomainInterface:
    base: dict[str, Any] = {"alias": alias, "mac": f"52:54:00:00:00:{alias[-1]}0",
                            "type": "bridge", "target": None, "network": None,
                            "bridge": None, "source_dev": None}
    return DomainInterface(**{**base, **kw})


VNETD_NET = _iface("net0", type="network", network="n1", target="vnet0")  # vnetd's network
NOVA_TAP = _iface("net1", type="ethernet", target="tap-nova")  # vnetd's TAP
VNETD_BRIDGE = _iface("net2", bridge="br-vnetd", target="vnet1")  # vnetd's bridge
FOREIGN = _iface("net3", bridge="br-foreign", target="vnet2")  # nothing of vnetd's


@pytest.fixture
async def watched(net: FakeNet) -> Any:
    vnet = net
    vnet.add("tap-nova", "tap", owned=True)
    vnet.add("br-vnetd", "bridge", owned=True)
    vnet.add("br-foreign", "bridge")
    conn = FakeConnection()
    sink = RecordingSink()
    ctx = Context(host_id="hv1", net=vnet, policy=Policy(), version="t", events=sink,
                  virt=conn)  # type: ignore[arg-type]
    w = LibvirtWatcher(conn, ctx, {}, reconnect_max_seconds=0.05,  # type: ignore[arg-type]
                       reconnect_min_seconds=0.01)
    ctx.snapshot_parts = (w.snapshot,)  # as the daemon's wiring does
    await w.start()
    d = Dispatcher(build_registry(), ctx)
    await d.execute(parse_request({"op": "network.define",
                                   "args": {"name": "n1", "spec": NAT, "start": True}}))
    conn.on_event("n1", "defined")  # type: ignore[misc]
    await _until(lambda: len(sink.events) == 1)
    sink.events.clear()
    try:
        yield w, conn, sink
    finally:
        await w.stop()


def _types(sink: RecordingSink) -> list[tuple[str, str | None]]:
    return [(t, s) for t, s, _ in sink.events]


async def test_start_plug_unplug_stop(watched: Any) -> None:
    w, conn, sink = watched
    conn.domains[UUID] = _domain(VNETD_NET, FOREIGN)
    assert conn.on_domain is not None
    conn.on_domain(UUID, "vm1", "started", "booted")
    await _until(lambda: len(sink.events) == 1)
    (typ, subject, data), = sink.events
    assert (typ, subject) == ("domain.started", "vm1")
    # Only the NIC on vnetd's network: the foreign bridge's is not vnetd's business.
    assert data == {"name": "vm1", "uuid": UUID, "reason": "booted",
                    "interfaces": [VNETD_NET.data()]}

    # Hot-plug: a NIC on vnetd's TAP, then one on vnetd's bridge, then a foreign one.
    foreign_2 = replace(FOREIGN, alias="net4")
    for iface in (NOVA_TAP, VNETD_BRIDGE, foreign_2):
        conn.domains[UUID] = replace(conn.domains[UUID],
                                     interfaces=(*conn.domains[UUID].interfaces, iface))
        conn.on_domain(UUID, "vm1", "device-added", iface.alias)
    conn.on_domain(UUID, "vm1", "device-added", "virtio-disk1")  # not a NIC
    await _until(lambda: len(sink.events) == 3)
    assert _types(sink)[1:] == [("domain.interface.added", "vm1")] * 2
    assert [d["interface"]["target"] for _, _, d in sink.events[1:]] == ["tap-nova", "vnet1"]
    assert sink.events[1][2]["interface"]["mac"] == NOVA_TAP.mac

    # Unplug: the event carries what was seen while it was plugged (libvirt forgot it).
    conn.domains[UUID] = replace(conn.domains[UUID], interfaces=(VNETD_NET, FOREIGN, foreign_2,
                                                                 VNETD_BRIDGE))
    conn.on_domain(UUID, "vm1", "device-removed", "net1")
    conn.on_domain(UUID, "vm1", "device-removed", "net4")  # foreign: no event
    await _until(lambda: len(sink.events) == 4)
    assert sink.events[3][:2] == ("domain.interface.removed", "vm1")
    assert sink.events[3][2]["interface"] == NOVA_TAP.data()
    snap = await w.snapshot()
    assert snap["domains"] == [{"name": "vm1", "uuid": UUID,
                                "interfaces": [VNETD_NET.data(), VNETD_BRIDGE.data()]}]

    del conn.domains[UUID]
    conn.on_domain(UUID, "vm1", "stopped", "destroyed")
    await _until(lambda: len(sink.events) == 5)
    typ, _, data = sink.events[4]
    assert typ == "domain.stopped"
    assert data["reason"] == "destroyed"
    assert [i["alias"] for i in data["interfaces"]] == ["net0", "net2"]
    assert (await w.snapshot())["domains"] == []


async def test_a_domain_with_nothing_of_vnetds_makes_no_events(watched: Any) -> None:
    _w, conn, sink = watched
    conn.domains[UUID] = _domain(FOREIGN)
    conn.on_domain(UUID, "vm1", "started", "booted")
    conn.on_domain(UUID, "vm1", "stopped", "shutdown")
    # A marker event after them: when it is out, the two above were handled.
    other = "bbbbbbbb-0000-4000-8000-000000000002"
    conn.domains[other] = DomainState("vm2", other, True, (NOVA_TAP,))
    conn.on_domain(other, "vm2", "started", "booted")
    await _until(lambda: len(sink.events) == 1)
    assert _types(sink) == [("domain.started", "vm2")]


async def test_a_domain_gone_before_it_was_read_is_skipped(watched: Any) -> None:
    _w, conn, sink = watched
    conn.on_domain(UUID, "vm1", "started", "booted")  # not in conn.domains: already gone
    conn.on_domain(UUID, "vm1", "stopped", "destroyed")
    other = "bbbbbbbb-0000-4000-8000-000000000002"
    conn.domains[other] = DomainState("vm2", other, True, (NOVA_TAP,))
    conn.on_domain(other, "vm2", "started", "booted")
    await _until(lambda: len(sink.events) == 1)
    assert _types(sink) == [("domain.started", "vm2")]


async def test_reconnect_publishes_what_changed_while_away(watched: Any) -> None:
    _w, conn, sink = watched
    stays, goes, comes = (f"{c * 8}-0000-4000-8000-00000000000{i}"
                          for i, c in enumerate("cde", 1))
    conn.domains[stays] = DomainState("stays", stays, True, (VNETD_NET,))
    conn.domains[goes] = DomainState("goes", goes, True, (NOVA_TAP,))
    conn.on_domain(stays, "stays", "started", "booted")
    conn.on_domain(goes, "goes", "started", "booted")
    await _until(lambda: len(sink.events) == 2)
    sink.events.clear()

    conn.refuse = 1
    assert conn.on_close is not None
    conn.on_close("eof")
    # While away: "goes" stops, "comes" starts, "stays" loses net0 and gains net2.
    del conn.domains[goes]
    conn.domains[comes] = DomainState("comes", comes, True, (VNETD_BRIDGE,))
    conn.domains[stays] = DomainState("stays", stays, True, (VNETD_BRIDGE, FOREIGN))
    await _until(lambda: len(sink.events) == 4)
    got = sorted((t, s) for t, s, _ in sink.events)
    assert got == [("domain.interface.added", "stays"), ("domain.interface.removed", "stays"),
                   ("domain.started", "comes"), ("domain.stopped", "goes")]
    assert all(d["resync"] is True for _, _, d in sink.events)
    # And domain events flow through the new connection's callbacks.
    sink.events.clear()
    del conn.domains[comes]
    conn.on_domain(comes, "comes", "stopped", "shutdown")
    await _until(lambda: len(sink.events) == 1)
    assert sink.events[0][:2] == ("domain.stopped", "comes")
