"""bridge.ensure / bridge.delete / bridge.list through the dispatcher, on FakeNet."""

from __future__ import annotations

import pytest

from tests.unit.fakes import Caller, FakeNet
from vnetd.contract.errors import Conflict, Forbidden
from vnetd.net.model import CREATING_GROUP, OWNER_PREFIX


async def test_ensure_creates_marks_and_brings_up(net: FakeNet, call: Caller) -> None:
    result = await call("bridge.ensure", name="br0", mtu=9000, stp=True, forward_delay=4,
                        ageing_time=120, vlan_filtering=True, mac="02:00:00:00:00:0A")
    br = net.by_name("br0")
    assert br.kind == "bridge"
    assert br.alias is not None
    assert br.alias.startswith(OWNER_PREFIX)
    assert (br.mtu, br.mac, br.up) == (9000, "02:00:00:00:00:0a", True)
    assert br.bridge is not None
    assert (br.bridge.stp, br.bridge.forward_delay, br.bridge.ageing_time,
            br.bridge.vlan_filtering) == (True, 4.0, 120.0, True)
    assert result["created"] is True
    assert result["changed"] is True
    assert result["owned"] is True
    assert result["state"] == "up"
    assert result["bridge"] == {"stp": True, "forward_delay": 4.0, "ageing_time": 120.0,
                                "vlan_filtering": True}


async def test_ensure_twice_is_a_no_op(net: FakeNet, call: Caller) -> None:
    args = {"name": "br0", "mtu": 1450, "stp": True, "forward_delay": 2.5, "ageing_time": 30.25,
            "mac": "02:00:00:00:00:0b"}
    await call("bridge.ensure", **args)
    net.forget_calls()
    again = await call("bridge.ensure", **args)
    assert net.mutations() == []
    assert again["created"] is False
    assert again["changed"] is False


async def test_ensure_twice_with_sub_centisecond_timer_is_a_no_op(net: FakeNet,
                                                                  call: Caller) -> None:
    # The kernel keeps bridge timers in centiseconds: 2.555 s reads back as 2.56 s.
    await call("bridge.ensure", name="br0", forward_delay=2.555)
    net.forget_calls()
    again = await call("bridge.ensure", name="br0", forward_delay=2.555)
    assert net.mutations() == [], "the handler must converge on what the kernel keeps"
    assert again["changed"] is False


async def test_ensure_converges_drifted_settings(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0", mtu=1500, stp=False)
    br = net.by_name("br0")
    br.mtu, br.up = 1400, False  # someone changed it behind our back
    net.forget_calls()
    result = await call("bridge.ensure", name="br0", mtu=1500, stp=True)
    assert result["changed"] is True
    assert result["created"] is False
    assert len(net.mutations()) == 1, "all changes go in one request"
    assert (br.mtu, br.up, br.bridge and br.bridge.stp) == (1500, True, True)


async def test_ensure_leaves_unspecified_settings_alone(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0", mtu=9000, stp=True)
    net.forget_calls()
    result = await call("bridge.ensure", name="br0")
    assert net.mutations() == []
    assert result["mtu"] == 9000
    assert result["bridge"]["stp"] is True


async def test_ensure_down(net: FakeNet, call: Caller) -> None:
    result = await call("bridge.ensure", name="br0", up=False)
    assert result["state"] == "down"
    assert net.by_name("br0").up is False


@pytest.mark.parametrize("kind", ["tap", "device", "vxlan"])
async def test_ensure_over_another_kind_is_a_conflict(net: FakeNet, call: Caller,
                                                      kind: str) -> None:
    net.add("br0", kind, owned=True)
    with pytest.raises(Conflict, match=f"br0 exists as a {kind}, not a bridge"):
        await call("bridge.ensure", name="br0")
    assert net.mutations() == []


async def test_ensure_of_an_unowned_bridge_is_forbidden(net: FakeNet, call: Caller) -> None:
    net.add("virbr0", "bridge", alias="libvirt network default")
    with pytest.raises(Forbidden, match="not created by vnetd") as info:
        await call("bridge.ensure", name="virbr0", mtu=9000)
    assert info.value.details["name"] == "virbr0"
    assert net.mutations() == []
    assert net.by_name("virbr0").mtu == 1500


@pytest.mark.parametrize("name", ["br-ext0", "br-ext", "lo"])
async def test_protected_names_are_forbidden_even_when_absent(net: FakeNet, call: Caller,
                                                              name: str) -> None:
    with pytest.raises(Forbidden, match="protected by configuration"):
        await call("bridge.ensure", name=name)
    assert net.calls == [], "refused before even looking at the kernel"


async def test_a_protected_bridge_vnetd_owns_is_still_forbidden(net: FakeNet, call: Caller) -> None:
    net.add("br-ext1", "bridge", owned=True)
    with pytest.raises(Forbidden):
        await call("bridge.delete", name="br-ext1")
    assert "br-ext1" in net.names()


async def test_delete_owned_bridge_reports_its_ports(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    await call("tap.ensure", name="tap1", bridge="br0")
    await call("tap.ensure", name="tap0", bridge="br0")
    result = await call("bridge.delete", name="br0")
    assert result == {"name": "br0", "deleted": True, "detached_ports": ["tap0", "tap1"]}
    assert "br0" not in net.names()
    assert net.by_name("tap0").master is None


async def test_delete_missing_is_ok(net: FakeNet, call: Caller) -> None:
    assert await call("bridge.delete", name="br9") == {"name": "br9", "deleted": False}
    assert net.mutations() == []


async def test_delete_unowned_is_forbidden(net: FakeNet, call: Caller) -> None:
    net.add("docker0", "bridge")
    with pytest.raises(Forbidden, match="will not delete"):
        await call("bridge.delete", name="docker0")
    assert "docker0" in net.names()
    assert net.mutations() == []


async def test_delete_of_a_tap_by_bridge_delete_is_a_conflict(net: FakeNet, call: Caller) -> None:
    net.add("tap0", "tap", owned=True)
    with pytest.raises(Conflict):
        await call("bridge.delete", name="tap0")
    assert "tap0" in net.names()


async def test_list_shows_bridges_with_sorted_ports(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    await call("tap.ensure", name="tap-b", bridge="br0")
    await call("tap.ensure", name="tap-a", bridge="br0")
    net.add("eth0")
    net.add("virbr0", "bridge")
    net.add("vnet0", "tap", master="virbr0")
    net.forget_calls()
    result = await call("bridge.list")
    table = {b["name"]: b for b in result["bridges"]}
    assert set(table) == {"br0", "virbr0"}
    assert table["br0"]["ports"] == ["tap-a", "tap-b"]
    assert table["br0"]["owned"] is True
    assert table["virbr0"]["ports"] == ["vnet0"]
    assert table["virbr0"]["owned"] is False
    assert net.mutations() == []


async def test_ensure_finishes_a_bridge_whose_creation_a_kill_cut_short(net: FakeNet,
                                                                      call: Caller) -> None:
    """A kill between creation and mark leaves the bridge unmarked in CREATING_GROUP (and
    one between mark and leaving the group, marked in it): the redelivered job finishes it."""
    net.add("br0", "bridge", group=CREATING_GROUP, up=False)
    net.add("br1", "bridge", owned=True, group=CREATING_GROUP, up=False)
    for name in ("br0", "br1"):
        result = await call("bridge.ensure", name=name, stp=True)
        br = net.by_name(name)
        assert (br.alias, br.group, br.up) == ("vnetd:v1", 0, True)
        assert br.bridge is not None and br.bridge.stp is True
        assert result["created"] is True and result["owned"] is True
    assert [c.method for c in net.mutations()].count("add_bridge") == 0
    assert len(net.links) == 2


async def test_only_a_bridge_in_the_creation_group_is_finished(net: FakeNet,
                                                             call: Caller) -> None:
    net.add("br0", "tap", group=CREATING_GROUP, up=False)
    with pytest.raises(Conflict):
        await call("bridge.ensure", name="br0")
    net.add("br1", "bridge", group=7, up=False)  # someone else's group: not a marker
    with pytest.raises(Forbidden):
        await call("bridge.ensure", name="br1")
    assert net.mutations() == []
