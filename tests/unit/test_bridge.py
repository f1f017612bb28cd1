"""bridge.ensure / bridge.delete / bridge.list through the dispatcher, on FakeNet."""

from __future__ import annotations

import pytest

from tests.unit.fakes import IPV6_OFF, IPV6_ON, Caller, FakeNet
from vnetd.contract.errors import Conflict, Forbidden, InvalidArgument
from vnetd.net.model import ADDR_GEN_MODE_NONE, CREATING_GROUP, OWNER_PREFIX, Ipv6State


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


# ------------------------------------------------------------ ipv6 (OSSN-0069 for bridges)
def _ipv6_calls(net: FakeNet) -> list[tuple[object, ...]]:
    return [c.args for c in net.mutations() if c.method == "set_ipv6"]


@pytest.mark.parametrize("args", [{}, {"ipv6": False}])
async def test_a_new_bridge_has_ipv6_off_before_it_comes_up(net: FakeNet, call: Caller,
                                                            args: dict[str, bool]) -> None:
    result = await call("bridge.ensure", name="br0", **args)
    br = net.by_name("br0")
    adds = [c.args for c in net.mutations() if c.method == "add_bridge"]
    assert len(adds) == 1 and adds[0][-1] is False, "the backend creates it with IPv6 off"
    assert br.up is True
    assert br.ipv6_when_up == IPV6_OFF, "off (both halves) before anything brought it up"
    assert result["ipv6"] is False
    assert (result["created"], result["changed"]) == (True, True)
    assert _ipv6_calls(net) == [], "no second step: the creation itself did it"


async def test_a_new_bridge_with_ipv6_true_keeps_the_kernels_defaults(net: FakeNet,
                                                                      call: Caller) -> None:
    result = await call("bridge.ensure", name="br0", ipv6=True)
    assert [c.args[-1] for c in net.mutations() if c.method == "add_bridge"] == [True]
    assert net.by_name("br0").ipv6 == IPV6_ON
    assert result["ipv6"] is True


async def test_unset_ipv6_leaves_an_existing_bridge_as_it_is(net: FakeNet, call: Caller) -> None:
    """An upgrade must not change live bridges: one made before the option keeps IPv6."""
    net.add("br0", "bridge", owned=True)
    result = await call("bridge.ensure", name="br0", mtu=1500)
    assert net.mutations() == []
    assert net.by_name("br0").ipv6 == IPV6_ON
    assert result["ipv6"] is True
    assert result["changed"] is False


@pytest.mark.parametrize(("start", "wanted", "end"), [
    (IPV6_ON, False, IPV6_OFF),
    (IPV6_OFF, True, IPV6_ON),
    # Half off is not off: mode none alone still takes a guest's router advertisement,
    # and disable_ipv6 alone gives a link-local address when someone writes 0 to it.
    (Ipv6State(disabled=False, addr_gen_mode=ADDR_GEN_MODE_NONE), False, IPV6_OFF),
    (Ipv6State(disabled=True, addr_gen_mode=0), False, IPV6_OFF),
    (Ipv6State(disabled=False, addr_gen_mode=ADDR_GEN_MODE_NONE), True, IPV6_ON),
])
async def test_ipv6_converges_an_owned_bridge(net: FakeNet, call: Caller, start: Ipv6State,
                                              wanted: bool, end: Ipv6State) -> None:
    net.add("br0", "bridge", owned=True, ipv6=start)
    result = await call("bridge.ensure", name="br0", ipv6=wanted)
    assert _ipv6_calls(net) == [("br0", wanted)]
    assert net.by_name("br0").ipv6 == end
    assert (result["ipv6"], result["created"], result["changed"]) == (wanted, False, True)
    net.forget_calls()
    again = await call("bridge.ensure", name="br0", ipv6=wanted)
    assert net.mutations() == []
    assert again["changed"] is False


@pytest.mark.parametrize("state", [IPV6_ON, Ipv6State(disabled=False, addr_gen_mode=2)])
async def test_ipv6_true_on_a_bridge_with_ipv6_on_is_a_no_op(net: FakeNet, call: Caller,
                                                             state: Ipv6State) -> None:
    net.add("br0", "bridge", owned=True, ipv6=state)  # 2: stable-privacy, still on
    result = await call("bridge.ensure", name="br0", ipv6=True)
    assert net.mutations() == []
    assert result["changed"] is False


async def test_ipv6_off_on_a_down_bridge_comes_before_it_is_brought_up(net: FakeNet,
                                                                       call: Caller) -> None:
    net.add("br0", "bridge", owned=True, up=False)
    await call("bridge.ensure", name="br0", ipv6=False)
    assert net.by_name("br0").ipv6_when_up == IPV6_OFF


async def test_ipv6_of_a_bridge_vnetd_does_not_own_is_never_changed(net: FakeNet,
                                                                    call: Caller) -> None:
    net.add("virbr0", "bridge", alias="libvirt network default")
    with pytest.raises(Forbidden):
        await call("bridge.ensure", name="virbr0", ipv6=False)
    assert net.mutations() == []
    assert net.by_name("virbr0").ipv6 == IPV6_ON


@pytest.mark.parametrize("existing", [False, True])
async def test_ipv6_true_under_an_mtu_of_1280_is_refused_before_any_change(
        net: FakeNet, call: Caller, existing: bool) -> None:
    if existing:
        net.add("br0", "bridge", owned=True, mtu=1500, up=False)
    with pytest.raises(InvalidArgument, match="ipv6 needs an MTU of at least 1280") as info:
        await call("bridge.ensure", name="br0", mtu=1000, ipv6=True)
    assert info.value.details["field"] == "ipv6"
    assert net.mutations() == []


async def test_ipv6_false_under_an_mtu_of_1280_has_nothing_to_turn_off(net: FakeNet,
                                                                       call: Caller) -> None:
    result = await call("bridge.ensure", name="br0", mtu=1000, ipv6=False)
    assert result["ipv6"] is None, "the kernel keeps no IPv6 state there: reported as null"
    assert _ipv6_calls(net) == []


@pytest.mark.parametrize("args", [{}, {"ipv6": False}])
async def test_an_mtu_raised_over_1280_does_not_bring_ipv6_back(net: FakeNet, call: Caller,
                                                                args: dict[str, bool]) -> None:
    """Above 1280 the kernel makes the bridge's IPv6 state anew, with the defaults (on):
    the MTU goes first, then IPv6 is turned off, then the bridge comes up."""
    await call("bridge.ensure", name="br0", mtu=1000, up=False)
    net.forget_calls()
    result = await call("bridge.ensure", name="br0", mtu=1500, **args)
    br = net.by_name("br0")
    assert br.ipv6 == IPV6_OFF
    assert br.ipv6_when_up == IPV6_OFF
    assert (result["ipv6"], result["changed"]) == (False, True)
    assert [c.method for c in net.mutations()] == ["set_link", "set_ipv6", "set_link"]


async def test_an_mtu_raised_over_1280_with_ipv6_true_gets_ipv6(net: FakeNet,
                                                                call: Caller) -> None:
    await call("bridge.ensure", name="br0", mtu=1000)
    result = await call("bridge.ensure", name="br0", mtu=1500, ipv6=True)
    assert net.by_name("br0").ipv6 == IPV6_ON
    assert result["ipv6"] is True


async def test_a_half_created_bridge_gets_ipv6_off_before_it_comes_up(net: FakeNet,
                                                                      call: Caller) -> None:
    """A kill after the creating request left the kernel's defaults (IPv6 on)."""
    net.add("br0", "bridge", group=CREATING_GROUP, up=False)
    result = await call("bridge.ensure", name="br0")
    br = net.by_name("br0")
    assert br.ipv6 == IPV6_OFF
    assert br.ipv6_when_up == IPV6_OFF
    assert (result["ipv6"], result["created"]) == (False, True)


async def test_list_reports_each_bridges_ipv6(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    await call("bridge.ensure", name="br1", ipv6=True)
    net.add("virbr0", "bridge")
    net.add("br-small", "bridge", mtu=1000)
    net.forget_calls()
    table = {b["name"]: b["ipv6"] for b in (await call("bridge.list"))["bridges"]}
    assert table == {"br0": False, "br1": True, "virbr0": True, "br-small": None}
    assert [c.method for c in net.calls].count("ipv6_states") == 1, "one read for all"
    assert net.mutations() == []
