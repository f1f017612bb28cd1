"""vxlan.ensure / vxlan.delete / fdb.converge on the fakes: validation first, ownership, MTU."""

from __future__ import annotations

import pytest

from tests.unit.fake_overlay import FakeOverlay
from tests.unit.fakes import Caller, FakeNet
from vnetd.contract.errors import Conflict, Forbidden, InvalidArgument, NotFound, Unsupported
from vnetd.net.overlay import NTF_SELF, NUD_PERMANENT, ZERO_MAC, FdbEntry, NeighEntry

LOCAL = "198.51.100.1"


@pytest.fixture
def overlay(net: FakeNet) -> FakeOverlay:
    o = net.overlay()
    assert isinstance(o, FakeOverlay)
    u0 = net.add("u0", "veth", mtu=1500)
    o.addresses[LOCAL] = u0
    net.add("br-seg", "bridge", owned=True)
    net.forget_calls()
    return o


async def test_ensure_creates_marks_attaches(call: Caller, net: FakeNet,
                                             overlay: FakeOverlay) -> None:
    r = await call("vxlan.ensure", name="vx100", vni=100, local=LOCAL, bridge="br-seg")
    assert r["created"] and r["changed"]
    link = net.by_name("vx100")
    assert link.alias == "vnetd:v1" and link.up and link.master == net.index_of("br-seg")
    assert link.mtu == 1450  # underlay u0's 1500 minus 50
    assert r["vxlan"]["vni"] == 100 and r["vxlan"]["underlay"] == "u0"
    info = overlay.infos[link.index]
    assert not info.learning and info.port == 4789 and info.link is None
    again = await call("vxlan.ensure", name="vx100", vni=100, local=LOCAL, bridge="br-seg")
    assert not again["created"] and not again["changed"]


async def test_ensure_with_dev_binds_it_and_takes_its_mtu(call: Caller, net: FakeNet,
                                                          overlay: FakeOverlay) -> None:
    net.add("u9", "veth", mtu=9000)
    r = await call("vxlan.ensure", name="vx1", vni=1, local=LOCAL, dev="u9")
    assert r["mtu"] == 8950 and overlay.infos[net.index_of("vx1")].link == net.index_of("u9")


async def test_mtu_the_underlay_cannot_carry_is_refused_naming_numbers(
        call: Caller, net: FakeNet, overlay: FakeOverlay) -> None:
    with pytest.raises(InvalidArgument) as exc:
        await call("vxlan.ensure", name="vx1", vni=1, local=LOCAL, mtu=1451)
    assert "1451" in exc.value.message and "1500" in exc.value.message \
        and "50" in exc.value.message and "1450" in exc.value.message
    assert exc.value.details["limit"] == 1450
    assert net.mutations() == []


async def test_ipv6_underlay_costs_70(call: Caller, net: FakeNet, overlay: FakeOverlay) -> None:
    overlay.addresses["2001:db8::1"] = net.index_of("u0")
    with pytest.raises(InvalidArgument, match=r"1431.*1500.*70.*1430"):
        await call("vxlan.ensure", name="vx1", vni=1, local="2001:db8::1", mtu=1431)
    r = await call("vxlan.ensure", name="vx1", vni=1, local="2001:db8::1")
    assert r["mtu"] == 1430


@pytest.mark.parametrize(("args", "field"), [
    ({"vni": 0}, "vni"), ({"vni": 16_777_216}, "vni"), ({"local": "1.2.3"}, "local"),
    ({"local": "0.0.0.0"}, "local"), ({"local": "239.1.1.1"}, "local"),
    ({"dstport": 0}, "dstport"), ({"ttl": 256}, "ttl"), ({"mtu": 67}, "mtu"),
    ({"name": "bad/name"}, "name"), ({"name": "vnet3"}, "name"), ({"bridge": "vx1"}, "bridge"),
    ({"extra": 1}, "extra"),
])
async def test_bad_input_changes_nothing(call: Caller, net: FakeNet, overlay: FakeOverlay,
                                         args: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"name": "vx1", "vni": 5, "local": LOCAL}
    with pytest.raises(InvalidArgument) as exc:
        await call("vxlan.ensure", **{**base, **args})
    assert field in exc.value.message
    assert net.calls == []


async def test_local_address_not_on_this_host(call: Caller, net: FakeNet,
                                              overlay: FakeOverlay) -> None:
    with pytest.raises(InvalidArgument, match=r"198\.51\.100\.77 is not configured"):
        await call("vxlan.ensure", name="vx1", vni=5, local="198.51.100.77")
    assert net.mutations() == []


async def test_unsupported_kernel_says_so(call: Caller, net: FakeNet,
                                          overlay: FakeOverlay) -> None:
    overlay.supported = False
    with pytest.raises(Unsupported, match="no VXLAN support"):
        await call("vxlan.ensure", name="vx1", vni=5, local=LOCAL)
    assert "vx1" not in net.names()


async def test_fixed_settings_conflict(call: Caller, net: FakeNet, overlay: FakeOverlay) -> None:
    await call("vxlan.ensure", name="vx1", vni=5, local=LOCAL)
    with pytest.raises(Conflict, match="vni"):
        await call("vxlan.ensure", name="vx1", vni=6, local=LOCAL)


async def test_foreign_devices_are_not_touched(call: Caller, net: FakeNet,
                                               overlay: FakeOverlay) -> None:
    overlay.add_vxlan_link("vx-other", 7, LOCAL, owned=False)
    net.add("br-foreign", "bridge")
    net.forget_calls()
    with pytest.raises(Forbidden):
        await call("vxlan.ensure", name="vx-other", vni=7, local=LOCAL)
    with pytest.raises(Forbidden):
        await call("vxlan.delete", name="vx-other")
    with pytest.raises(Forbidden):
        await call("fdb.converge", name="vx-other", remotes=["198.51.100.2"])
    with pytest.raises(Forbidden):
        await call("vxlan.ensure", name="vx1", vni=8, local=LOCAL, bridge="br-foreign")
    assert net.mutations() == []


async def test_delete(call: Caller, net: FakeNet, overlay: FakeOverlay) -> None:
    await call("vxlan.ensure", name="vx1", vni=5, local=LOCAL)
    assert (await call("vxlan.delete", name="vx1"))["deleted"]
    assert not (await call("vxlan.delete", name="vx1"))["deleted"]
    with pytest.raises(Conflict):
        await call("vxlan.delete", name="br-seg")


async def test_converge_full_state(call: Caller, net: FakeNet, overlay: FakeOverlay) -> None:
    await call("vxlan.ensure", name="vx1", vni=5, local=LOCAL, proxy=True)
    index = net.index_of("vx1")
    foreign = FdbEntry("52:54:00:00:00:99", "198.51.100.9", NUD_PERMANENT, NTF_SELF)
    overlay.fdb[index] = [foreign]
    overlay.neigh[index] = [NeighEntry("10.0.0.99", "52:54:00:00:00:99", 0x02, 0)]
    job = {"name": "vx1", "remotes": ["198.51.100.2", "198.51.100.3"],
           "fdb": [{"mac": "52:54:00:00:00:02", "dst": "198.51.100.2"}],
           "neighbours": [{"ip": "10.0.0.2", "mac": "52:54:00:00:00:02"}]}
    r = await call("fdb.converge", **job)
    assert r["added"] == {"remotes": 2, "fdb": 1, "neighbours": 1} and r["changed"]
    applies = [c for c in net.calls if c.method == "apply"]
    assert len(applies) == 1  # one batch
    again = await call("fdb.converge", **job)
    assert not again["changed"] and again["added"] == {"remotes": 0, "fdb": 0, "neighbours": 0}
    # Hand-deleted entry: the same job restores it.
    overlay.fdb[index] = [r for r in overlay.fdb[index] if r.dst != "198.51.100.3"]
    healed = await call("fdb.converge", **job)
    assert healed["added"]["remotes"] == 1
    assert foreign in overlay.fdb[index]  # never touched
    assert NeighEntry("10.0.0.99", "52:54:00:00:00:99", 0x02, 0) in overlay.neigh[index]
    shrunk = await call("fdb.converge", name="vx1", remotes=["198.51.100.2"], fdb=[])
    assert shrunk["removed"] == {"remotes": 1, "fdb": 1, "neighbours": 0}
    assert {(r.mac, r.dst) for r in overlay.fdb[index]} == {
        (ZERO_MAC, "198.51.100.2"), (foreign.mac, foreign.dst)}
    # Neighbours were not in that job: kept.
    assert any(n.ip == "10.0.0.2" for n in overlay.neigh[index])


async def test_converge_conflict_with_foreign_entry(call: Caller, net: FakeNet,
                                                    overlay: FakeOverlay) -> None:
    await call("vxlan.ensure", name="vx1", vni=5, local=LOCAL)
    index = net.index_of("vx1")
    foreign = FdbEntry("52:54:00:00:00:02", "198.51.100.9", NUD_PERMANENT, NTF_SELF)
    overlay.fdb[index] = [foreign]
    r = await call("fdb.converge", name="vx1", remotes=[],
                   fdb=[{"mac": "52:54:00:00:00:02", "dst": "198.51.100.2"}])
    assert r["conflicts"] == [{"table": "fdb", "key": "52:54:00:00:00:02",
                               "wanted": "198.51.100.2", "current": "198.51.100.9"}]
    assert overlay.fdb[index] == [foreign]


@pytest.mark.parametrize(("job", "needle"), [
    ({"remotes": ["198.51.100.2", "198.51.100.2"]}, "distinct"),
    ({"remotes": ["2001:db8::2"]}, "IPv4"),
    ({"remotes": [LOCAL]}, "own address"),
    ({"remotes": ["198.51.100.2", "2001:db8::2"]}, "all be IPv4 or all IPv6"),
    ({"remotes": ["x"]}, "remotes"),
    ({"remotes": [f"198.51.100.{i}" for i in range(2, 255)] * 5}, "remotes"),
    ({"remotes": [], "fdb": [{"mac": "52:54:00:00:00:02", "dst": "198.51.100.2"}] * 2}, "twice"),
    ({"remotes": [], "fdb": [{"mac": "01:00:5e:00:00:01", "dst": "198.51.100.2"}]}, "unicast"),
    ({"remotes": [], "neighbours": [{"ip": "10.0.0.1", "mac": "52:54:00:00:00:01"}] * 2},
     "twice"),
    ({"remotes": [], "neighbours": [{"ip": "10.0.0.1", "mac": "zz"}]}, "mac"),
])
async def test_converge_bad_input_changes_nothing(call: Caller, net: FakeNet,
                                                  overlay: FakeOverlay, job: dict[str, object],
                                                  needle: str) -> None:
    await call("vxlan.ensure", name="vx1", vni=5, local=LOCAL)
    net.forget_calls()
    with pytest.raises(InvalidArgument) as exc:
        await call("fdb.converge", name="vx1", **job)
    assert needle in exc.value.message
    assert net.mutations() == []


async def test_converge_needs_a_vxlan(call: Caller, net: FakeNet, overlay: FakeOverlay) -> None:
    with pytest.raises(NotFound):
        await call("fdb.converge", name="vx-none", remotes=[])
    with pytest.raises(Conflict):
        await call("fdb.converge", name="br-seg", remotes=[])


async def test_views_show_vxlan(call: Caller, net: FakeNet, overlay: FakeOverlay) -> None:
    await call("vxlan.ensure", name="vx1", vni=5, local=LOCAL, bridge="br-seg")
    await call("fdb.converge", name="vx1", remotes=["198.51.100.2", "198.51.100.3"])
    links = (await call("link.list", kind="vxlan"))["links"]
    assert links[0]["vxlan"]["vni"] == 5 and links[0]["vxlan"]["remotes"] == 2
    bridges = (await call("bridge.list"))["bridges"]
    seg = next(b for b in bridges if b["name"] == "br-seg")
    assert seg["vxlan"][0]["name"] == "vx1" and seg["vxlan"][0]["remotes"] == 2
    snap = await call("host.snapshot")
    assert next(v for v in snap["links"] if v["name"] == "vx1")["vxlan"]["vni"] == 5


async def test_bridge_and_tap_mtu_the_underlay_cannot_carry(call: Caller, net: FakeNet,
                                                            overlay: FakeOverlay) -> None:
    await call("vxlan.ensure", name="vx1", vni=5, local=LOCAL, bridge="br-seg")
    net.by_name("br-seg").mtu = 1450  # the kernel lowers a bridge's MTU to its new port's
    net.forget_calls()
    with pytest.raises(InvalidArgument, match=r"bridge br-seg.*MTU 1500.*u0 has MTU 1500.*1450"):
        await call("bridge.ensure", name="br-seg", mtu=1500)
    with pytest.raises(InvalidArgument, match=r"tap tap0.*MTU 9000.*at most 1450"):
        await call("tap.ensure", name="tap0", bridge="br-seg", mtu=9000)
    assert net.mutations() == []
    assert (await call("tap.ensure", name="tap0", bridge="br-seg", mtu=1450))["mtu"] == 1450
    assert (await call("bridge.ensure", name="br-seg", mtu=1400))["mtu"] == 1400
