"""parse_request: nothing invalid reaches a handler, and every refusal names its field."""

from __future__ import annotations

from typing import Any

import pytest

from vnetd.contract.commands import (
    MAX_BATCH,
    OPS,
    Batch,
    BridgeEnsure,
    Command,
    LinkSet,
    TapEnsure,
    parse_request,
)
from vnetd.contract.errors import ErrorCode, InvalidArgument


def parse(op: str, **args: Any) -> Command:
    return parse_request({"op": op, "args": args})


def refused(op: str, **args: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        parse(op, **args)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    return info.value


# -- interface names ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["b", "br0", "a" * 15, "br-ext.100", "tap_vm-1", "-x", "..."])
def test_valid_interface_names(name: str) -> None:
    cmd = parse("bridge.ensure", name=name)
    assert isinstance(cmd, BridgeEnsure)
    assert cmd.name == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "1 to 15 bytes"),
        ("a" * 16, "1 to 15 bytes"),
        ("é" * 8, "1 to 15 bytes"),  # 8 characters, but 16 bytes
        ("br/0", "no '/'"),
        ("br:0", "':'"),
        ("br%d", "'%'"),
        ("br 0", "whitespace"),
        ("br\t0", "whitespace"),
        ("br0\n", "whitespace"),
        (".", "'.' or '..'"),
        ("..", "'.' or '..'"),
        ("brü", "only letters"),  # non-ASCII letters are not what the kernel tools expect
        ("br\x000", "only letters"),
    ],
)
def test_invalid_interface_names(name: str, problem: str) -> None:
    err = refused("bridge.ensure", name=name)
    assert "name:" in err.message
    assert problem in err.message
    assert err.details["errors"][0]["field"] == "name"


def test_the_limit_is_counted_in_bytes_not_characters() -> None:
    assert parse("tap.ensure", name="t" * 15).name == "t" * 15  # type: ignore[attr-defined]
    err = refused("tap.ensure", name="é" * 7 + "ab")  # 9 characters, 16 bytes
    assert "got 16" in err.message


def test_a_name_with_a_non_ascii_letter_is_refused_even_when_short() -> None:
    # "é" * 7 + "a" is 15 bytes, so only the character rule can refuse it.
    err = refused("tap.ensure", name="é" * 7 + "a")
    assert "only letters" in err.message


@pytest.mark.parametrize("field", ["bridge", "name"])
def test_every_name_field_is_checked(field: str) -> None:
    args = {"name": "tap0", "bridge": "br0", field: "bad/name"}
    err = refused("tap.ensure", **args)
    assert f"{field}:" in err.message


@pytest.mark.parametrize("op", ["port.attach"])
def test_port_attach_checks_both_names(op: str) -> None:
    assert "bridge:" in refused(op, name="tap0", bridge="x" * 16).message
    assert "name:" in refused(op, name="x y", bridge="br0").message


@pytest.mark.parametrize("name", ["vnet0", "vnet12", "macvtap3", "macvlan0"])
@pytest.mark.parametrize("op", ["bridge.ensure", "tap.ensure"])
def test_libvirt_reserved_names_are_refused_on_create(op: str, name: str) -> None:
    err = refused(op, name=name)
    assert "name:" in err.message
    assert "libvirt" in err.message


@pytest.mark.parametrize("name", ["vnet", "vnet0a", "myvnet0", "macvtap"])
def test_names_near_the_libvirt_namespace_are_fine(name: str) -> None:
    assert parse("tap.ensure", name=name).name == name  # type: ignore[attr-defined]


def test_a_libvirt_device_may_still_be_attached_or_detached() -> None:
    assert parse("port.attach", name="vnet0", bridge="br0") is not None
    assert parse("port.detach", name="vnet0") is not None


def test_a_tap_cannot_be_its_own_bridge() -> None:
    assert "itself" in refused("tap.ensure", name="t0", bridge="t0").message
    assert "itself" in refused("port.attach", name="t0", bridge="t0").message


# -- MTU --------------------------------------------------------------------------

@pytest.mark.parametrize("mtu", [68, 1500, 9000, 65535])
def test_mtu_in_range(mtu: int) -> None:
    cmd = parse("bridge.ensure", name="br0", mtu=mtu)
    assert isinstance(cmd, BridgeEnsure)
    assert cmd.mtu == mtu


@pytest.mark.parametrize("mtu", [67, 0, -1, 65536, 1 << 40])
def test_mtu_out_of_range(mtu: int) -> None:
    err = refused("bridge.ensure", name="br0", mtu=mtu)
    assert "mtu:" in err.message


@pytest.mark.parametrize("mtu", ["1500", True, False, 1500.0, None, [1500]])
def test_mtu_is_strictly_an_integer(mtu: Any) -> None:
    if mtu is None:
        # None means "leave it": accepted by ensure, but link.set then has nothing to do.
        assert parse("bridge.ensure", name="br0", mtu=None).mtu is None  # type: ignore[attr-defined]
        return
    for op, extra in (("bridge.ensure", {}), ("tap.ensure", {}), ("link.set", {})):
        err = refused(op, name="x0", mtu=mtu, **extra)
        assert "mtu:" in err.message, (op, err.message)


# -- MAC --------------------------------------------------------------------------

def test_mac_is_normalised_to_lower_case() -> None:
    cmd = parse("tap.ensure", name="tap0", mac="52:54:00:AB:CD:EF")
    assert isinstance(cmd, TapEnsure)
    assert cmd.mac == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize(
    ("mac", "problem"),
    [
        ("52:54:00:ab:cd", "six hex octets"),
        ("52:54:00:ab:cd:ef:01", "six hex octets"),
        ("52-54-00-ab-cd-ef", "six hex octets"),
        ("5254.00ab.cdef", "six hex octets"),
        ("52:54:00:ab:cd:eg", "six hex octets"),
        ("2:54:00:ab:cd:ef", "six hex octets"),
        ("", "six hex octets"),
        ("01:00:5e:00:00:01", "unicast"),
        ("ff:ff:ff:ff:ff:ff", "unicast"),
        ("33:33:00:00:00:01", "unicast"),
        ("00:00:00:00:00:00", "all zeros"),
    ],
)
def test_bad_macs(mac: str, problem: str) -> None:
    for op in ("bridge.ensure", "tap.ensure", "link.set"):
        err = refused(op, name="x0", mac=mac)
        assert "mac:" in err.message
        assert problem in err.message


def test_locally_administered_unicast_mac_is_fine() -> None:
    assert parse("link.set", name="x0", mac="02:00:00:00:00:01") is not None


# -- envelope ---------------------------------------------------------------------

@pytest.mark.parametrize("body", [[], "bridge.list", 1, None, True, [{"op": "bridge.list"}]])
def test_body_must_be_an_object(body: Any) -> None:
    with pytest.raises(InvalidArgument, match="must be a JSON object"):
        parse_request(body)


def test_unknown_op_lists_the_known_ones() -> None:
    with pytest.raises(InvalidArgument, match=r"unknown op 'bridge\.explode'") as info:
        parse_request({"op": "bridge.explode"})
    assert info.value.details["known_ops"] == sorted(OPS)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "op"),
        ({"args": {}}, "op"),
        ({"op": ""}, "op"),
        ({"op": "x" * 65}, "op"),
        ({"op": 7}, "op"),
        ({"op": "bridge.list", "args": []}, "args"),
        ({"op": "bridge.list", "args": None}, "args"),
        ({"op": "bridge.list", "extra": 1}, "extra"),
    ],
)
def test_bad_envelopes_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_request(body)
    assert info.value.message.startswith("bad request envelope:")
    assert f"{field}:" in info.value.message


def test_args_default_to_empty() -> None:
    assert isinstance(parse_request({"op": "bridge.list"}), OPS["bridge.list"])


def test_unknown_fields_are_refused() -> None:
    err = refused("bridge.ensure", name="br0", colour="blue")
    assert "colour:" in err.message
    assert "Extra inputs" in err.message
    assert "bridge.list" in refused("bridge.list", verbose=True).message


def test_missing_required_field() -> None:
    err = refused("tap.ensure", mtu=1500)
    assert "name: Field required" in err.message


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"up": "yes"}, "up"),
        ({"up": 1}, "up"),
        ({"stp": "true"}, "stp"),
        ({"forward_delay": 1.5}, "forward_delay"),
        ({"forward_delay": 31}, "forward_delay"),
        ({"forward_delay": True}, "forward_delay"),
        ({"ageing_time": 0}, "ageing_time"),
        ({"ageing_time": 0.0}, "ageing_time"),
        ({"ageing_time": -5}, "ageing_time"),
        ({"ageing_time": "300"}, "ageing_time"),
        ({"vlan_filtering": None, "up": None}, "up"),
    ],
)
def test_bridge_fields(args: dict[str, Any], field: str) -> None:
    err = refused("bridge.ensure", name="br0", **args)
    assert f"{field}:" in err.message


def test_bridge_timers_accept_integers_and_floats() -> None:
    cmd = parse("bridge.ensure", name="br0", forward_delay=2, ageing_time=0.5 + 0.5)
    assert isinstance(cmd, BridgeEnsure)
    assert (cmd.forward_delay, cmd.ageing_time) == (2, 1.0)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"owner_uid": -1}, "owner_uid"),
        ({"owner_uid": 2**32 - 1}, "owner_uid"),
        ({"owner_uid": "1000"}, "owner_uid"),
        ({"group_gid": -1}, "group_gid"),
        ({"multi_queue": "no"}, "multi_queue"),
        ({"ipv6": 0}, "ipv6"),
    ],
)
def test_tap_fields(args: dict[str, Any], field: str) -> None:
    assert f"{field}:" in refused("tap.ensure", name="tap0", **args).message


def test_link_set_needs_something_to_set() -> None:
    err = refused("link.set", name="eth1")
    assert "at least one of up, mtu, mac" in err.message
    cmd = parse("link.set", name="eth1", up=False)
    assert isinstance(cmd, LinkSet)
    assert cmd.up is False


@pytest.mark.parametrize("kind", ["Bridge", "", "x" * 33, "br idge", 7])
def test_link_list_kind_filter(kind: Any) -> None:
    assert "kind:" in refused("link.list", kind=kind).message


def test_lock_keys_name_the_interface() -> None:
    assert parse("tap.ensure", name="tap0", bridge="br0").lock_keys() == ("link:tap0",)
    assert parse("bridge.list").lock_keys() == ()


# -- batches ----------------------------------------------------------------------

def sub(op: str, **args: Any) -> dict[str, Any]:
    return {"op": op, "args": args}


def test_batch_parses_each_command() -> None:
    cmd = parse("batch", commands=[sub("bridge.ensure", name="br0"),
                                   sub("tap.ensure", name="tap0", bridge="br0"),
                                   {"op": "bridge.list"}])
    assert isinstance(cmd, Batch)
    assert [c.op for c in cmd.commands] == ["bridge.ensure", "tap.ensure", "bridge.list"]
    assert cmd.stop_on_error is True
    assert cmd.lock_keys() == ()


def test_a_nested_batch_is_refused() -> None:
    err = refused("batch", commands=[sub("batch", commands=[sub("bridge.list")])])
    assert "commands" in err.message
    assert "cannot contain another batch" in err.message


def test_one_bad_sub_command_refuses_the_whole_batch_and_names_it() -> None:
    err = refused("batch", commands=[sub("bridge.ensure", name="br0"),
                                     sub("tap.ensure", name="tap0", mtu=10)])
    assert "commands[1]" in err.message
    assert "tap.ensure" in err.message
    assert "mtu:" in err.message


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        (sub("no.such.op"), "unknown op"),
        ({"op": "bridge.list", "colour": 1}, "colour"),
        ({"args": {}}, "op"),
        ("bridge.list", "valid dictionary"),
        ({"op": "bridge.list", "args": "x"}, "args"),
    ],
)
def test_bad_batch_items(item: Any, needle: str) -> None:
    err = refused("batch", commands=[sub("bridge.list"), item])
    assert "commands[1]" in err.message
    assert needle in err.message


@pytest.mark.parametrize("commands", [[], "bridge.list", {"op": "bridge.list"}, None])
def test_batch_needs_a_non_empty_list(commands: Any) -> None:
    assert "commands:" in refused("batch", commands=commands).message


def test_batch_size_limit() -> None:
    item = sub("port.detach", name="tap0")
    assert len(parse("batch", commands=[item] * MAX_BATCH).commands) == MAX_BATCH  # type: ignore[attr-defined]
    err = refused("batch", commands=[item] * (MAX_BATCH + 1))
    assert "commands:" in err.message
    assert str(MAX_BATCH) in err.message


def test_stop_on_error_must_be_a_bool() -> None:
    assert "stop_on_error:" in refused("batch", commands=[sub("bridge.list")],
                                      stop_on_error="false").message
