"""Devices vnetd creates over netlink are born in CREATING_GROUP and finished in place.

The bridge side is in test_bridge.py; this is the VXLAN side (the same rule for
every netlink-created kind): what a kill leaves between creation and mark is
finished by the next ensure of the name, never refused as someone else's.
"""

from __future__ import annotations

import pytest

from tests.unit.fake_overlay import FakeOverlay
from tests.unit.fakes import Caller, FakeNet
from vnetd.contract.errors import Conflict
from vnetd.net.model import CREATING_GROUP

LOCAL = "198.51.100.1"


@pytest.fixture
def overlay(net: FakeNet) -> FakeOverlay:
    o = net.overlay()
    assert isinstance(o, FakeOverlay)
    o.addresses[LOCAL] = net.add("u0", "veth", mtu=1500)
    net.forget_calls()
    return o


async def test_a_created_vxlan_leaves_the_creation_group_marked(
        call: Caller, net: FakeNet, overlay: FakeOverlay) -> None:
    await call("vxlan.ensure", name="vx1", vni=1, local=LOCAL)
    link = net.by_name("vx1")
    assert (link.alias, link.group) == ("vnetd:v1", 0)
    methods = [c.method for c in net.mutations()]
    assert methods[:2] == ["add_vxlan", "finish_creation"]


@pytest.mark.parametrize("owned", [False, True])  # killed before / after the mark
async def test_a_vxlan_a_kill_left_half_created_is_finished(
        call: Caller, net: FakeNet, overlay: FakeOverlay, owned: bool) -> None:
    await call("vxlan.ensure", name="vx1", vni=1, local=LOCAL)
    left = net.by_name("vx1")
    left.alias, left.group, left.up = ("vnetd:v1" if owned else None), CREATING_GROUP, False
    net.forget_calls()
    r = await call("vxlan.ensure", name="vx1", vni=1, local=LOCAL)
    assert r["created"] is True and r["owned"] is True and r["state"] == "up"
    link = net.by_name("vx1")
    assert (link.alias, link.group, link.index) == ("vnetd:v1", 0, left.index)
    assert "add_vxlan" not in [c.method for c in net.mutations()]


async def test_a_half_created_vxlan_with_other_fixed_settings_is_a_conflict(
        call: Caller, net: FakeNet, overlay: FakeOverlay) -> None:
    await call("vxlan.ensure", name="vx1", vni=1, local=LOCAL)
    net.by_name("vx1").group = CREATING_GROUP
    with pytest.raises(Conflict, match="vni"):
        await call("vxlan.ensure", name="vx1", vni=2, local=LOCAL)
