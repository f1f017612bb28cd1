"""The fake keeps the kernel's rules the handlers rely on (so the other tests mean something)."""

from __future__ import annotations

import pytest

from tests.unit.fakes import FakeNet
from vnetd.contract.errors import Conflict, InvalidArgument, NotFound
from vnetd.net.model import CREATING_GROUP, BridgeOptions, LinkChange, TapSpec


async def test_new_devices_are_down_and_marked(net: FakeNet) -> None:
    await net.add_bridge("br0", None, None, BridgeOptions(stp=True))
    await net.add_tap(TapSpec(name="tap0", multi_queue=True, ipv6=False), LinkChange())
    br, tap = await net.get_link("br0"), await net.get_link("tap0")
    assert br is not None
    assert tap is not None
    assert (br.kind, br.up, br.owned, br.bridge and br.bridge.stp) == ("bridge", False, True,
                                                                       True)
    assert (tap.kind, tap.up, tap.owned, tap.tun and tap.tun.multi_queue) == ("tap", False,
                                                                              True, True)
    assert br.index != tap.index
    assert net.ipv6_disabled == {"tap0"}


async def test_a_tap_is_created_with_its_change_or_not_at_all(net: FakeNet) -> None:
    br = net.add("br0", "bridge", owned=True)
    tap = await net.add_tap(TapSpec(name="tap0"), LinkChange(mtu=1450, master=br, up=True))
    assert (tap.mtu, tap.master, tap.up, tap.owned) == (1450, br, True, True)
    with pytest.raises(InvalidArgument):  # an unknown master: the kernel's EINVAL
        await net.add_tap(TapSpec(name="tap1"), LinkChange(master=999))
    assert "tap1" not in net.names()


async def test_finish_creation_marks_and_leaves_the_group(net: FakeNet) -> None:
    index = net.add("br0", "bridge", group=CREATING_GROUP, up=False)
    before = await net.get_link("br0")
    assert before is not None and before.half_created and not before.owned
    await net.finish_creation(before)
    after = await net.get_link_by_index(index)
    assert after is not None and after.owned and not after.half_created


async def test_taken_names_conflict(net: FakeNet) -> None:
    net.add("eth0")
    with pytest.raises(Conflict):
        await net.add_bridge("eth0", None, None, BridgeOptions())
    with pytest.raises(Conflict):
        await net.add_tap(TapSpec(name="eth0"), LinkChange())
    assert len(net.links) == 1


async def test_missing_index_is_not_found(net: FakeNet) -> None:
    with pytest.raises(NotFound):
        await net.set_link(42, LinkChange(up=True))
    with pytest.raises(NotFound):
        await net.delete_link(42)
    assert await net.get_link_by_index(42) is None
    assert await net.get_link("nope") is None


async def test_set_link_is_all_or_nothing(net: FakeNet) -> None:
    index = net.add("tap0", "tap", up=False)
    with pytest.raises(InvalidArgument):
        await net.set_link(index, LinkChange(up=True, master=99))
    assert net.by_name("tap0").up is False


async def test_a_bridge_cannot_be_a_port_of_a_bridge(net: FakeNet) -> None:
    a, b = net.add("br0", "bridge"), net.add("br1", "bridge")
    with pytest.raises(Conflict):
        await net.set_link(b, LinkChange(master=a))


async def test_deleting_a_bridge_frees_its_ports(net: FakeNet) -> None:
    br = net.add("br0", "bridge")
    net.add("tap0", "tap", master="br0")
    await net.delete_link(br)
    assert net.by_name("tap0").master is None


async def test_the_call_log_tells_reads_from_writes(net: FakeNet) -> None:
    await net.list_links()
    await net.get_link("x")
    assert net.mutations() == []
    await net.disable_ipv6("x")
    assert [c.method for c in net.mutations()] == ["disable_ipv6"]
    assert [c.method for c in net.calls] == ["list_links", "get_link", "disable_ipv6"]
