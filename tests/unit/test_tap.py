"""tap.ensure / tap.delete through the dispatcher, on FakeNet."""

from __future__ import annotations

import pytest

from tests.unit.fakes import Caller, FakeNet
from vnetd.contract.errors import Conflict, Forbidden, NotFound
from vnetd.net.model import OWNER_PREFIX, TapSpec


async def test_ensure_creates_a_marked_tap_in_the_bridge(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    result = await call("tap.ensure", name="tap0", bridge="br0", mtu=1450, owner_uid=107,
                        group_gid=36, vnet_hdr=True, mac="52:54:00:aa:bb:cc")
    tap = net.by_name("tap0")
    assert tap.kind == "tap"
    assert tap.alias is not None
    assert tap.alias.startswith(OWNER_PREFIX)
    assert tap.master == net.index_of("br0")
    assert (tap.mtu, tap.mac, tap.up) == (1450, "52:54:00:aa:bb:cc", True)
    assert tap.tun is not None
    assert (tap.tun.owner_uid, tap.tun.group_gid, tap.tun.vnet_hdr, tap.tun.multi_queue) == (
        107, 36, True, False)
    assert result["master"] == "br0"
    assert result["created"] is True
    assert result["changed"] is True
    assert result["tap"]["owner_uid"] == 107


async def test_ensure_twice_is_a_no_op(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    args = {"name": "tap0", "bridge": "br0", "mtu": 1450, "owner_uid": 107,
            "multi_queue": True, "mac": "52:54:00:aa:bb:cc"}
    await call("tap.ensure", **args)
    net.forget_calls()
    again = await call("tap.ensure", **args)
    assert net.mutations() == []
    assert again["created"] is False
    assert again["changed"] is False
    assert again["master"] == "br0"


async def test_ensure_without_bridge(net: FakeNet, call: Caller) -> None:
    result = await call("tap.ensure", name="tap0")
    assert result["master"] is None
    assert net.by_name("tap0").master is None


async def test_ipv6_is_disabled_on_create(net: FakeNet, call: Caller) -> None:
    await call("tap.ensure", name="tap0")
    assert net.ipv6_disabled == {"tap0"}
    # Asked of the creation itself, which also marks and brings it up: the backend
    # orders them so that no link-local address ever appears (one request).
    (create,) = net.mutations()
    assert create.method == "add_tap" and create.args[0].ipv6 is False
    assert create.args[1].up is True
    assert net.by_name("tap0").alias == "vnetd:v1"


async def test_ensure_reads_once_and_applies_once(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0", mtu=1450)
    net.forget_calls()
    result = await call("tap.ensure", name="tap0", bridge="br0")
    # One read of the TAP and its bridge, one creation that configures it; the
    # reply is the state the creation answered with (no read after it).
    assert [c.method for c in net.calls] == ["get_links", "add_tap"]
    assert net.calls[0].args == ("tap0", "br0")
    change = net.calls[1].args[1]
    assert (change.mtu, change.master, change.up) == (1450, net.index_of("br0"), True)
    assert (result["mtu"], result["master"], result["state"]) == (1450, "br0", "up")
    net.forget_calls()
    await call("tap.ensure", name="tap0", bridge="br0", mtu=1400)
    assert [c.method for c in net.calls] == ["get_links", "list_links", "change_link"]


async def test_ipv6_is_kept_when_asked(net: FakeNet, call: Caller) -> None:
    await call("tap.ensure", name="tap0", ipv6=True)
    assert net.ipv6_disabled == set()
    assert "tap0" in net.names()


async def test_missing_bridge_is_not_found_before_any_side_effect(net: FakeNet,
                                                                  call: Caller) -> None:
    with pytest.raises(NotFound, match="bridge br0 does not exist"):
        await call("tap.ensure", name="tap0", bridge="br0")
    assert net.mutations() == []
    assert "tap0" not in net.names()


async def test_unowned_bridge_is_forbidden_before_any_side_effect(net: FakeNet,
                                                                  call: Caller) -> None:
    net.add("virbr0", "bridge")
    with pytest.raises(Forbidden, match="virbr0"):
        await call("tap.ensure", name="tap0", bridge="virbr0")
    assert net.mutations() == []
    assert "tap0" not in net.names()


async def test_protected_bridge_is_forbidden_before_any_side_effect(net: FakeNet,
                                                                    call: Caller) -> None:
    net.add("br-ext0", "bridge", owned=True)
    with pytest.raises(Forbidden, match="protected"):
        await call("tap.ensure", name="tap0", bridge="br-ext0")
    assert net.mutations() == []


async def test_bridge_that_is_not_a_bridge_is_a_conflict(net: FakeNet, call: Caller) -> None:
    net.add("tap9", "tap", owned=True)
    with pytest.raises(Conflict, match="tap9 exists as a tap, not a bridge"):
        await call("tap.ensure", name="tap0", bridge="tap9")
    assert net.mutations() == []


async def test_name_taken_by_another_kind_is_a_conflict(net: FakeNet, call: Caller) -> None:
    net.add("tap0", "bridge", owned=True)
    with pytest.raises(Conflict, match="not a tap"):
        await call("tap.ensure", name="tap0")
    assert net.mutations() == []


async def test_unowned_tap_is_forbidden(net: FakeNet, call: Caller) -> None:
    net.add("tap0", "tap")
    with pytest.raises(Forbidden, match="not created by vnetd"):
        await call("tap.ensure", name="tap0", mtu=9000)
    assert net.mutations() == []


async def test_protected_tap_name_is_forbidden(net: FakeNet, call: Caller) -> None:
    with pytest.raises(Forbidden):
        await call("tap.ensure", name="br-ext7")
    assert net.calls == []


@pytest.mark.parametrize(("field", "have", "want"), [("multi_queue", True, False),
                                                      ("multi_queue", False, True),
                                                      ("vnet_hdr", True, False),
                                                      ("vnet_hdr", False, True)])
async def test_fixed_flags_mismatch_is_a_conflict(net: FakeNet, call: Caller, field: str,
                                                  have: bool, want: bool) -> None:
    await call("tap.ensure", name="tap0", **{field: have})
    net.forget_calls()
    with pytest.raises(Conflict, match=f"{field}={have}") as info:
        await call("tap.ensure", name="tap0", mtu=9000, **{field: want})
    assert info.value.details == {"name": "tap0", "field": field, "current": have,
                                  "wanted": want}
    assert net.mutations() == []
    assert net.by_name("tap0").mtu == 1500


async def test_owner_change_on_an_existing_tap(net: FakeNet, call: Caller) -> None:
    await call("tap.ensure", name="tap0", owner_uid=107)
    net.forget_calls()
    result = await call("tap.ensure", name="tap0", owner_uid=108, group_gid=36)
    assert [c.method for c in net.mutations()] == ["set_tap_owner"]
    assert net.mutations()[0].args == (TapSpec(name="tap0", owner_uid=108, group_gid=36,
                                               ipv6=False),)
    tun = net.by_name("tap0").tun
    assert tun is not None
    assert (tun.owner_uid, tun.group_gid) == (108, 36)
    # The reply describes the resulting state and says something changed.
    assert result["changed"] is True
    assert (result["tap"]["owner_uid"], result["tap"]["group_gid"]) == (108, 36)


async def test_ensure_moves_the_tap_to_the_wanted_owned_bridge(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    await call("bridge.ensure", name="br1")
    await call("tap.ensure", name="tap0", bridge="br0")
    result = await call("tap.ensure", name="tap0", bridge="br1")
    assert result["master"] == "br1"
    assert result["changed"] is True
    assert net.by_name("tap0").master == net.index_of("br1")


async def test_ensure_without_bridge_reports_the_current_master(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    await call("tap.ensure", name="tap0", bridge="br0")
    net.forget_calls()
    result = await call("tap.ensure", name="tap0")
    assert result["master"] == "br0"
    assert net.mutations() == []


async def test_delete(net: FakeNet, call: Caller) -> None:
    await call("tap.ensure", name="tap0")
    assert await call("tap.delete", name="tap0") == {"name": "tap0", "deleted": True}
    assert "tap0" not in net.names()
    assert await call("tap.delete", name="tap0") == {"name": "tap0", "deleted": False}


async def test_delete_unowned_or_wrong_kind(net: FakeNet, call: Caller) -> None:
    net.add("tap0", "tap")
    net.add("br0", "bridge", owned=True)
    with pytest.raises(Forbidden):
        await call("tap.delete", name="tap0")
    with pytest.raises(Conflict):
        await call("tap.delete", name="br0")
    assert net.mutations() == []
    assert {"tap0", "br0"} <= net.names()
