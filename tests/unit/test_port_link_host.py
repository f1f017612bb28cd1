"""port.attach / port.detach, link.set / link.list and host.* on FakeNet."""

from __future__ import annotations

import pytest

from tests.unit.fakes import Caller, FakeNet
from vnetd.contract.errors import Conflict, Forbidden, NotFound
from vnetd.handlers.context import Context

# -- port.attach ------------------------------------------------------------------


async def test_attach_an_owned_tap(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    await call("tap.ensure", name="tap0")
    result = await call("port.attach", name="tap0", bridge="br0")
    assert result["master"] == "br0"
    assert result["changed"] is True
    assert net.by_name("tap0").master == net.index_of("br0")
    net.forget_calls()
    again = await call("port.attach", name="tap0", bridge="br0")
    assert again["changed"] is False
    assert net.mutations() == []


async def test_attach_an_unowned_device_matching_attachable(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    net.add("eth1")
    result = await call("port.attach", name="eth1", bridge="br0")
    assert result["master"] == "br0"
    assert result["owned"] is False


async def test_attach_an_unowned_device_not_attachable_is_forbidden(net: FakeNet,
                                                                    call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    net.add("wlan0")
    net.forget_calls()
    with pytest.raises(Forbidden, match=r"policy\.attachable"):
        await call("port.attach", name="wlan0", bridge="br0")
    assert net.mutations() == []


async def test_attach_a_protected_device_is_forbidden_even_if_attachable(
        net: FakeNet, ctx: Context, call: Caller) -> None:
    ctx.policy = ctx.policy.with_protected({"eth0"})  # eth0 carries the default route
    await call("bridge.ensure", name="br0")
    net.add("eth0")
    net.forget_calls()
    with pytest.raises(Forbidden, match="protected"):
        await call("port.attach", name="eth0", bridge="br0")
    assert net.mutations() == []


async def test_attach_to_unowned_missing_or_non_bridge(net: FakeNet, call: Caller) -> None:
    net.add("virbr0", "bridge")
    net.add("tap9", "tap", owned=True)
    await call("tap.ensure", name="tap0")
    net.forget_calls()
    with pytest.raises(Forbidden):
        await call("port.attach", name="tap0", bridge="virbr0")
    with pytest.raises(NotFound, match="bridge br0"):
        await call("port.attach", name="tap0", bridge="br0")
    with pytest.raises(Conflict, match="not a bridge"):
        await call("port.attach", name="tap0", bridge="tap9")
    assert net.mutations() == []


async def test_attach_a_missing_port(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    with pytest.raises(NotFound, match="device tap0 does not exist"):
        await call("port.attach", name="tap0", bridge="br0")


async def test_attach_a_bridge_to_a_bridge_is_a_conflict(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    await call("bridge.ensure", name="br1")
    net.forget_calls()
    with pytest.raises(Conflict, match="cannot be a port"):
        await call("port.attach", name="br1", bridge="br0")
    assert net.mutations() == []


async def test_attach_when_already_attached_elsewhere_is_a_conflict(net: FakeNet,
                                                                    call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    await call("bridge.ensure", name="br1")
    await call("tap.ensure", name="tap0", bridge="br1")
    net.forget_calls()
    with pytest.raises(Conflict, match="already a port of br1") as info:
        await call("port.attach", name="tap0", bridge="br0")
    assert info.value.details["master"] == "br1"
    assert net.mutations() == []
    assert net.by_name("tap0").master == net.index_of("br1")


# -- port.detach ------------------------------------------------------------------


async def test_detach(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    await call("tap.ensure", name="tap0", bridge="br0")
    result = await call("port.detach", name="tap0")
    assert result == {"name": "tap0", "detached": True, "bridge": "br0"}
    assert net.by_name("tap0").master is None
    net.forget_calls()
    assert await call("port.detach", name="tap0") == {"name": "tap0", "detached": False}
    assert net.mutations() == []


async def test_detach_missing_is_ok(net: FakeNet, call: Caller) -> None:
    assert await call("port.detach", name="tap7") == {"name": "tap7", "detached": False}
    assert net.mutations() == []


async def test_detach_from_an_unowned_bridge_is_forbidden(net: FakeNet, call: Caller) -> None:
    net.add("virbr0", "bridge")
    net.add("vnet3", "tap", master="virbr0")
    with pytest.raises(Forbidden, match="virbr0, which vnetd did not create"):
        await call("port.detach", name="vnet3")
    assert net.mutations() == []
    assert net.by_name("vnet3").master == net.index_of("virbr0")


async def test_detach_an_attachable_device_from_an_owned_bridge(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    net.add("eth1")
    await call("port.attach", name="eth1", bridge="br0")
    assert (await call("port.detach", name="eth1"))["detached"] is True
    assert net.by_name("eth1").master is None


# -- link.set / link.list ---------------------------------------------------------


async def test_link_set_changes_only_what_differs(net: FakeNet, call: Caller) -> None:
    await call("tap.ensure", name="tap0")
    net.forget_calls()
    result = await call("link.set", name="tap0", mtu=9000, up=True)
    assert result["changed"] is True
    assert [c.args[1].mtu for c in net.mutations()] == [9000]
    assert net.mutations()[0].args[1].up is None, "already up: not sent again"
    assert result["mtu"] == 9000
    net.forget_calls()
    again = await call("link.set", name="tap0", mtu=9000, up=True)
    assert again["changed"] is False
    assert net.mutations() == []


async def test_link_set_down_and_mac(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    result = await call("link.set", name="br0", up=False, mac="02:11:22:33:44:55")
    assert result["state"] == "down"
    assert net.by_name("br0").mac == "02:11:22:33:44:55"


async def test_link_set_refusals(net: FakeNet, call: Caller) -> None:
    net.add("eth1")
    net.add("lo", "loopback")
    with pytest.raises(NotFound):
        await call("link.set", name="tap0", up=True)
    with pytest.raises(Forbidden, match="not created by vnetd"):
        await call("link.set", name="eth1", mtu=9000)
    with pytest.raises(Forbidden, match="protected"):
        await call("link.set", name="lo", up=False)
    assert net.mutations() == []


async def test_link_set_reports_the_master(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    await call("tap.ensure", name="tap0", bridge="br0")
    assert (await call("link.set", name="tap0", mtu=1400))["master"] == "br0"


async def test_link_list_filters(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    await call("tap.ensure", name="tap0", bridge="br0")
    net.add("eth0")
    net.add("virbr0", "bridge")
    everything = await call("link.list")
    assert [v["name"] for v in everything["links"]] == ["br0", "tap0", "eth0", "virbr0"]
    assert {v["name"]: v["master"] for v in everything["links"]}["tap0"] == "br0"
    bridges = await call("link.list", kind="bridge")
    assert [v["name"] for v in bridges["links"]] == ["br0", "virbr0"]
    owned = await call("link.list", owned_only=True)
    assert [v["name"] for v in owned["links"]] == ["br0", "tap0"]
    both = await call("link.list", kind="bridge", owned_only=True)
    assert [v["name"] for v in both["links"]] == ["br0"]
    assert (await call("link.list", kind="vxlan"))["links"] == []


# -- host ---------------------------------------------------------------------------


async def test_health_shape(call: Caller) -> None:
    result = await call("host.health")
    assert result == {
        "host_id": "hv1",
        "version": "0.0-test",
        "status": "healthy",
        "kernel": {"bridge": True, "tun_device": True, "netns": ""},
        "components": {"amqp": "connected", "libvirt": "disabled"},
        "ovs": {"state": "disabled", "reason": "[ovs] enabled = false"},
    }


async def test_health_degraded_without_tun(net: FakeNet, call: Caller) -> None:
    net.kernel_features["tun_device"] = False
    assert (await call("host.health"))["status"] == "degraded"


async def test_health_degraded_when_a_component_is_down(ctx: Context, call: Caller) -> None:
    ctx.components = lambda: {"amqp": "connected", "libvirt": "reconnecting"}
    result = await call("host.health")
    assert result["status"] == "degraded"
    assert result["components"]["libvirt"] == "reconnecting"


async def test_snapshot(net: FakeNet, ctx: Context, call: Caller) -> None:
    await call("bridge.ensure", name="br0")

    async def extra() -> dict[str, object]:
        return {"networks": ["default"]}

    ctx.snapshot_parts = (extra,)
    result = await call("host.snapshot")
    assert result["host_id"] == "hv1"
    assert [v["name"] for v in result["links"]] == ["br0"]
    assert result["networks"] == ["default"]
