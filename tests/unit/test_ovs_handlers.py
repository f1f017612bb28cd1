"""ovs.* ops on the FakeOvs and FakeNet: validation, ownership, convergence, availability."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.unit.fakes import Caller, FakeNet
from tests.unit.ovs_fakes import FakeOvs
from vnetd.contract.commands import parse_request
from vnetd.contract.errors import VnetdError
from vnetd.handlers.context import Context
from vnetd.ovs.backend import OvsOptions, Vlan

OWNED = {"vnetd-owner": "v1"}


@pytest.fixture
def ovs(ctx: Context) -> FakeOvs:
    fake = FakeOvs()
    ctx.ovs = fake
    ctx.ovs_options = OvsOptions(datapath_type="netdev", foreign_bridges=("br-int",))
    return fake


async def fails(call: Caller, op: str, **args: Any) -> VnetdError:
    with pytest.raises(VnetdError) as info:
        await call(op, **args)
    return info.value


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("args", [
    {"tag": 4096}, {"tag": -1}, {"tag": "10"}, {"trunks": [1, 1]},
    {"trunks": list(range(4097))}, {"trunks": [4096]},
    {"tag": 5, "trunks": [6]},  # access with trunks
    {"tag": 5, "vlan_mode": "trunk"}, {"vlan_mode": "access"},
    {"vlan_mode": "native-tagged"}, {"vlan_mode": "bogus", "tag": 1},
    {"name": "br0"},  # a port of itself
])
async def test_bad_port_attach_is_invalid_and_changes_nothing(
        ovs: FakeOvs, call: Caller, args: dict[str, Any]) -> None:
    body = {"name": "tap0", "bridge": "br0", **args}
    e = await fails(call, "ovs.port.attach", **body)
    assert e.code.value == "invalid_argument"
    assert ovs.mutations == []


def test_valid_vlan_combinations_parse() -> None:
    for args in ({"tag": 0}, {"tag": 4095}, {"trunks": [1, 4095]}, {},
                 {"tag": 10, "trunks": [20, 30], "vlan_mode": "native-untagged"},
                 {"tag": 10, "vlan_mode": "native-tagged"}):
        parse_request({"op": "ovs.port.attach", "args": {"name": "t", "bridge": "b", **args}})


@pytest.mark.parametrize("name", ["vnet3", "a" * 16, "bad/name", ""])
async def test_bad_bridge_names_are_invalid(ovs: FakeOvs, call: Caller, name: str) -> None:
    assert (await fails(call, "ovs.bridge.ensure", name=name)).code.value == "invalid_argument"
    assert ovs.mutations == []


# ---------------------------------------------------------------- availability
async def test_disabled_answers_unsupported(ctx: Context, call: Caller) -> None:
    assert ctx.ovs is None
    for op, args in (("ovs.bridge.ensure", {"name": "b"}), ("ovs.bridge.list", {}),
                     ("ovs.port.attach", {"name": "t", "bridge": "b"}),
                     ("ovs.port.detach", {"name": "t"}), ("ovs.bridge.delete", {"name": "b"})):
        e = await fails(call, op, **args)
        assert e.code.value == "unsupported" and "[ovs] enabled" in e.message
    health = await call("host.health")
    assert health["ovs"] == {"state": "disabled", "reason": "[ovs] enabled = false"}
    snap = await call("host.snapshot")
    assert snap["ovs"] is None and "enabled" in snap["ovs_error"]


async def test_down_answers_unavailable_which_is_temporary(ovs: FakeOvs, call: Caller) -> None:
    ovs.connected = False
    e = await fails(call, "ovs.bridge.ensure", name="b0")
    assert e.code.value == "unavailable" and e.permanent is False
    assert e.details["dependency"] == "ovsdb"
    health = await call("host.health")
    assert health["ovs"]["state"] == "degraded" and health["ovs"]["reason"]
    assert (await call("bridge.list"))["bridges"] == []  # Linux bridges still listed, none here


# ---------------------------------------------------------------- bridges
async def test_bridge_ensure_creates_marks_and_is_idempotent(ovs: FakeOvs, call: Caller) -> None:
    res = await call("ovs.bridge.ensure", name="ob0")
    assert res["created"] is True and res["owned"] is True and res["kind"] == "ovs"
    assert res["datapath_type"] == "netdev"
    assert ovs.bridges["ob0"].external_ids == OWNED
    again = await call("ovs.bridge.ensure", name="ob0")
    assert again["created"] is False and again["changed"] is False
    assert ovs.mutations == ["add_bridge ob0"]
    listed = await call("bridge.list")
    assert [(b["name"], b["kind"]) for b in listed["bridges"]] == [("ob0", "ovs")]


async def test_bridge_ensure_refuses_foreign_and_conflicting_names(
        ovs: FakeOvs, net: FakeNet, call: Caller) -> None:
    ovs.put_bridge("fb0")
    net.add("lbr0", "bridge")
    ovs.put_bridge("ob1", owner=OWNED, datapath_type="system")
    assert (await fails(call, "ovs.bridge.ensure", name="fb0")).code.value == "forbidden"
    assert (await fails(call, "ovs.bridge.ensure", name="lbr0")).code.value == "conflict"
    e = await fails(call, "ovs.bridge.ensure", name="ob1")
    assert e.code.value == "conflict" and "datapath_type" in e.message
    assert (await fails(call, "ovs.bridge.ensure", name="lo")).code.value == "forbidden"
    assert ovs.mutations == []


async def test_bridge_delete_only_owned_and_verified(ovs: FakeOvs, call: Caller) -> None:
    ovs.put_bridge("fb0")
    ob = ovs.put_bridge("ob2", owner=OWNED)
    ovs.put_port("ob2", "tap1", owner=OWNED)
    assert (await fails(call, "ovs.bridge.delete", name="fb0")).code.value == "forbidden"
    assert "fb0" in ovs.bridges
    res = await call("ovs.bridge.delete", name="ob2")
    assert res == {"name": "ob2", "deleted": True, "detached_ports": ["tap1"]}
    assert ovs.mutations == [f"delete_bridge {ob.uuid}"]
    assert (await call("ovs.bridge.delete", name="ob2"))["deleted"] is False


async def test_bridge_taken_over_between_check_and_delete_is_kept(
        ovs: FakeOvs, ctx: Context, call: Caller) -> None:
    ob = ovs.put_bridge("ob3", owner=OWNED)
    real_snapshot = ovs.snapshot

    async def snapshot_then_someone_retags() -> Any:
        state = await real_snapshot()
        ovs.retag("ob3", ob.uuid, {"owner": "someone-else"})
        return state

    ovs.snapshot = snapshot_then_someone_retags  # type: ignore[method-assign]
    e = await fails(call, "ovs.bridge.delete", name="ob3")
    assert e.code.value == "conflict" and "someone else" in e.message
    assert "ob3" in ovs.bridges


# ---------------------------------------------------------------- ports
async def test_port_attach_converges_vlans(ovs: FakeOvs, net: FakeNet, call: Caller) -> None:
    ovs.put_bridge("ob4", owner=OWNED)
    net.add("tap0", "tap", owned=True)
    res = await call("ovs.port.attach", name="tap0", bridge="ob4", tag=10)
    assert res["created"] is True and res["tag"] == 10 and res["owned"] is True
    same = await call("ovs.port.attach", name="tap0", bridge="ob4", tag=10)
    assert same["changed"] is False
    trunk = await call("ovs.port.attach", name="tap0", bridge="ob4", trunks=[30, 20])
    assert trunk["changed"] is True and trunk["tag"] is None and trunk["trunks"] == [20, 30]
    native = await call("ovs.port.attach", name="tap0", bridge="ob4", tag=5, trunks=[20],
                        vlan_mode="native-untagged")
    assert native["vlan_mode"] == "native-untagged" and native["tag"] == 5
    assert [m.split()[0] for m in ovs.mutations] == ["add_port", "set_port_vlan",
                                                     "set_port_vlan"]
    port = ovs.bridges["ob4"].ports[-1]
    assert port.vlan == Vlan(tag=5, trunks=(20,), mode="native-untagged")


async def test_port_attach_ownership_rules(ovs: FakeOvs, net: FakeNet, call: Caller) -> None:
    ovs.put_bridge("fb1")
    ovs.put_bridge("br-int")  # foreign, but listed in foreign_bridges
    ovs.put_bridge("ob5", owner=OWNED)
    ovs.put_port("ob5", "eth7", owner={})
    net.add("tap0", "tap", owned=True)
    net.add("veth9", "veth")  # neither owned nor attachable
    net.add("eth7", "device")
    net.add("lbr", "bridge", owned=True)
    net.add("tap2", "tap", owned=True, master="lbr")
    e = await fails(call, "ovs.port.attach", name="tap0", bridge="fb1")
    assert e.code.value == "forbidden" and "foreign_bridges" in e.message
    assert (await call("ovs.port.attach", name="tap0", bridge="br-int"))["created"] is True
    e = await fails(call, "ovs.port.attach", name="veth9", bridge="ob5")
    assert e.code.value == "forbidden" and "attachable" in e.message
    e = await fails(call, "ovs.port.attach", name="eth7", bridge="ob5")
    assert e.code.value == "forbidden" and "not added by vnetd" in e.message
    e = await fails(call, "ovs.port.attach", name="tap0", bridge="ob5")
    assert e.code.value == "conflict" and "br-int" in e.message  # no silent move
    e = await fails(call, "ovs.port.attach", name="tap2", bridge="ob5")
    assert e.code.value == "conflict" and "another bridge" in e.message
    e = await fails(call, "ovs.port.attach", name="gone0", bridge="ob5")
    assert e.code.value == "not_found"
    e = await fails(call, "ovs.port.attach", name="tap0", bridge="nobr")
    assert e.code.value == "not_found"
    assert ovs.mutations == ["add_port tap0"]


async def test_port_detach(ovs: FakeOvs, call: Caller) -> None:
    ovs.put_bridge("ob6", owner=OWNED)
    ovs.put_port("ob6", "tap3", owner=OWNED)
    ovs.put_port("ob6", "eth8")
    assert (await fails(call, "ovs.port.detach", name="eth8")).code.value == "forbidden"
    assert (await fails(call, "ovs.port.detach", name="ob6")).code.value == "conflict"
    assert await call("ovs.port.detach", name="tap3") == {"name": "tap3", "detached": True,
                                                           "bridge": "ob6"}
    assert (await call("ovs.port.detach", name="tap3"))["detached"] is False
    assert [p.name for p in ovs.bridges["ob6"].ports] == ["ob6", "eth8"]


async def test_row_deleted_by_someone_else_after_the_check_is_nothing_to_do(
        ovs: FakeOvs, call: Caller) -> None:
    """The snapshot still shows the row; by the delete it is gone (NOT_FOUND)."""
    ovs.put_bridge("ob7", owner=OWNED)
    ovs.put_port("ob7", "tap4", owner=OWNED)
    real_snapshot = ovs.snapshot

    async def snapshot_then_someone_deletes() -> Any:
        state = await real_snapshot()
        ovs.bridges["ob7"] = replace(ovs.bridges["ob7"], ports=tuple(
            p for p in ovs.bridges["ob7"].ports if p.name != "tap4"))
        return state

    ovs.snapshot = snapshot_then_someone_deletes  # type: ignore[method-assign]
    assert await call("ovs.port.detach", name="tap4") == {"name": "tap4", "detached": False}

    async def snapshot_then_bridge_gone() -> Any:
        state = await real_snapshot()
        ovs.bridges.pop("ob7", None)
        return state

    ovs.snapshot = snapshot_then_bridge_gone  # type: ignore[method-assign]
    assert await call("ovs.bridge.delete", name="ob7") == {"name": "ob7", "deleted": False}
    assert [m.split()[0] for m in ovs.mutations] == ["delete_port", "delete_bridge"]


async def test_snapshot_and_list_show_ports(ovs: FakeOvs, call: Caller) -> None:
    ovs.put_bridge("ob7", owner=OWNED)
    ovs.put_port("ob7", "tap4", owner=OWNED, vlan=Vlan(tag=3))
    snap = await call("host.snapshot")
    br = snap["ovs"]["bridges"][0]
    assert br["name"] == "ob7" and br["ports"] == ["tap4"]
    assert br["ovs_ports"][0]["tag"] == 3
    listed = await call("ovs.bridge.list")
    assert listed["ovs_version"] == "3.1.0" and listed["bridges"] == snap["ovs"]["bridges"]


def test_ovs_ops_lock_the_device_and_share_the_bridge() -> None:
    cmd = parse_request({"op": "ovs.port.attach", "args": {"name": "tap0", "bridge": "ob0"}})
    assert cmd.lock_keys() == ("link:tap0",) and cmd.shared_lock_keys() == ("link:ob0",)
    cmd = parse_request({"op": "ovs.bridge.delete", "args": {"name": "ob0"}})
    assert cmd.lock_keys() == ("link:ob0",)


def test_vnetctl_show_draws_ovs_bridges_with_their_vlans() -> None:
    from vnetd.cli.render import show_tree

    bridges = [{"name": "ob0", "kind": "ovs", "owned": True, "datapath_type": "netdev",
                "ports": ["tap0", "vnet3"],
                "ovs_ports": [{"name": "tap0", "tag": 10, "trunks": [], "vlan_mode": None,
                               "ofport": 1, "owned": True},
                              {"name": "vnet3", "tag": None, "trunks": [20, 30],
                               "vlan_mode": "trunk", "ofport": 2, "owned": False}]}]
    text = show_tree("hv1", [], [], ovs=bridges)
    assert "ovs bridges:" in text
    assert "└── ob0  ovs  netdev  owned" in text
    assert "    ├── tap0  tag 10  ofport 1  owned" in text
    assert "    └── vnet3  trunks 20,30  trunk  ofport 2  not owned" in text
    assert "ovs bridges" not in show_tree("hv1", [], [])  # a host without OVS: nothing
