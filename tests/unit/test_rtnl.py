"""vnetd/net/rtnl.py, the one link codec, against pyroute2 as the reference.

Messages are encoded by pyroute2 with every attribute the fast path or the
monitor reads (name, mtu, mac, flags, operstate, carrier, carrier changes,
master, alias, group, linkinfo kind and the bridge/tun data), plus attributes nobody
reads; both consumers' decodes must equal pyroute2's. The request encoders go
the other way: what they build, pyroute2 must read back as meant.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.pyroute2_ref import decode_with_pyroute2, encode_link, link_from_pyroute2
from vnetd.net import fastlink, monitor, rtnl
from vnetd.net.linkcache import LinkDecoder
from vnetd.net.model import CREATING_GROUP, BridgeOptions, Link, LinkChange

OPER = ["UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP"]
printable = st.characters(min_codepoint=33, max_codepoint=126)
u32 = st.integers(0, 2**32 - 1)


def tun_info(tun_type: int = 2, owner: int | None = 107, group: int | None = None,
             vnet_hdr: int = 1, persist: int = 1, multi_queue: int = 0) -> dict[str, Any]:
    data: list[tuple[str, int]] = [("IFLA_TUN_TYPE", tun_type), ("IFLA_TUN_VNET_HDR", vnet_hdr),
                                   ("IFLA_TUN_PERSIST", persist),
                                   ("IFLA_TUN_MULTI_QUEUE", multi_queue)]
    if owner is not None:
        data.append(("IFLA_TUN_OWNER", owner))
    if group is not None:
        data.append(("IFLA_TUN_GROUP", group))
    return {"attrs": [("IFLA_INFO_KIND", "tun"), ("IFLA_INFO_DATA", {"attrs": data})]}


def bridge_info(forward_delay: int = 1500, ageing: int = 30000, stp: int = 1,
                vlan_filtering: int = 1) -> dict[str, Any]:
    return {"attrs": [("IFLA_INFO_KIND", "bridge"), ("IFLA_INFO_DATA", {"attrs": [
        ("IFLA_BR_FORWARD_DELAY", forward_delay), ("IFLA_BR_AGEING_TIME", ageing),
        ("IFLA_BR_STP_STATE", stp), ("IFLA_BR_VLAN_FILTERING", vlan_filtering)]})]}


def reference(raw: bytes) -> Link:
    (msg,) = decode_with_pyroute2(raw)
    return link_from_pyroute2(msg)


def by_fastlink(raw: bytes) -> Link:
    """The fast path's own answer handling (FastLink._one), fed the message twice through
    one decoder: walked (and learnt) the first time, through the learnt layout the second."""
    loop = asyncio.new_event_loop()
    decoder = LinkDecoder(remember=False)
    answers = []
    try:
        for _ in range(2):
            pending = fastlink._Pending(loop.create_future(), dump=False)
            fastlink.FastLink._one(pending, memoryview(raw), 0, len(raw), rtnl.RTM_NEWLINK, 0,
                                   decoder)
            answers.append(pending.future.result())
    finally:
        loop.close()
    first, second = answers
    assert first is not None and second is not None and len(first) == len(second) == 1
    assert first == second
    return second[0]


def by_monitor(raw: bytes) -> Link:
    (ev,) = monitor.decode(raw)
    assert isinstance(ev, monitor.LinkEvent)
    return ev.link


def check(raw: bytes) -> Link:
    want = reference(raw)
    assert rtnl.decode_link_message(raw) == want
    assert by_fastlink(raw) == want
    assert by_monitor(raw) == want
    return want


def test_a_tap_with_everything() -> None:
    link = check(encode_link(7, "tap0", mtu=1450, mac="4a:36:c4:41:f1:fa", flags=1,
                             carrier=1, carrier_changes=3, master=3, alias="vnetd:v1", group=9,
                             linkinfo=tun_info(group=36), extra=True))
    assert link.kind == "tap" and link.owned and link.master == 3
    assert link.carrier_changes == 3  # the monitor's old copy dropped it
    assert link.group == 9
    assert link.tun is not None and (link.tun.owner_uid, link.tun.group_gid) == (107, 36)


def test_bridge_tun_loopback_veth_and_plain() -> None:
    br = check(encode_link(2, "br0", mac="02:00:00:00:00:01", linkinfo=bridge_info()))
    assert br.bridge is not None
    assert (br.bridge.stp, br.bridge.forward_delay, br.bridge.ageing_time,
            br.bridge.vlan_filtering) == (True, 15.0, 300.0, True)
    assert check(encode_link(4, "tun0", linkinfo=tun_info(1, None))).kind == "tun"
    assert check(encode_link(1, "lo", mac="00:00:00:00:00:00", oper="UNKNOWN")).kind == "loopback"
    assert check(encode_link(9, "eth0", oper="UP", carrier=1, flags=1)).kind == "device"
    assert check(encode_link(10, "v0", linkinfo={"attrs": [("IFLA_INFO_KIND", "veth")]})
                 ).kind == "veth"


def test_truncated_messages_never_raise() -> None:
    raw = encode_link(7, "tap0", alias="vnetd:v1", linkinfo=tun_info(), carrier_changes=2)
    length = len(raw)
    for cut in range(32, length):
        rtnl.decode_link(raw, 16, cut)  # attributes past `cut` are simply not there


kinds = st.sampled_from(["tap", "tun", "bridge", "veth", "vxlan", None])


@settings(max_examples=300, deadline=None)
@given(index=st.integers(1, 2**31 - 1),
       name=st.text(printable, min_size=1, max_size=15) | st.just("lo"),
       mtu=st.integers(0, 65535), flags=st.integers(0, 0xFFFFF),
       oper=st.sampled_from(OPER), carrier=st.integers(0, 1),
       carrier_changes=st.none() | u32,
       master=st.none() | st.integers(0, 2**31 - 1),
       group=st.none() | u32 | st.just(CREATING_GROUP),
       alias=st.none() | st.text(printable, min_size=1, max_size=60),
       mac=st.none() | st.binary(min_size=6, max_size=6).map(
           lambda b: ":".join(f"{x:02x}" for x in b)),
       kind=kinds, extra=st.booleans(),
       br=st.tuples(u32, u32, st.integers(0, 1), st.integers(0, 1)),
       tun=st.tuples(st.sampled_from([1, 2]), st.none() | u32, st.none() | u32,
                     st.integers(0, 1), st.integers(0, 1), st.integers(0, 1)))
def test_any_link_decodes_like_pyroute2(
        index: int, name: str, mtu: int, flags: int, oper: str, carrier: int,
        carrier_changes: int | None, master: int | None, group: int | None,
        alias: str | None, mac: str | None,
        kind: str | None, extra: bool, br: tuple[int, int, int, int],
        tun: tuple[int, int | None, int | None, int, int, int]) -> None:
    info = {"tap": tun_info(2, *tun[1:]), "tun": tun_info(*tun), "bridge": bridge_info(*br),
            "veth": {"attrs": [("IFLA_INFO_KIND", "veth")]},
            "vxlan": {"attrs": [("IFLA_INFO_KIND", "vxlan")]}, None: None}[kind]
    raw = encode_link(index, name, mtu=mtu, flags=flags, oper=oper, carrier=carrier,
                      carrier_changes=carrier_changes, master=master, group=group, alias=alias,
                      mac=mac, linkinfo=info, extra=extra)
    link = check(raw)
    assert link.half_created == (group == CREATING_GROUP)


# ------------------------------------------------------------ the encoders
def parse_request(body: bytes) -> Any:
    raw = rtnl.header(16 + len(body), rtnl.RTM_NEWLINK, rtnl.NLM_F_REQUEST, 1) + body
    (msg,) = decode_with_pyroute2(raw)
    return msg


opt_timer = st.none() | st.integers(0, 100_000).map(lambda cs: cs / 100)
opt_flag = st.none() | st.booleans()
bridge_options = st.builds(BridgeOptions, stp=opt_flag, forward_delay=opt_timer,
                           ageing_time=opt_timer, vlan_filtering=opt_flag)


@settings(max_examples=200, deadline=None)
@given(index=st.integers(1, 2**31 - 1),
       change=st.builds(
           LinkChange,
           alias=st.none() | st.text(printable, min_size=1, max_size=60),
           mtu=st.none() | st.integers(68, 65535),
           mac=st.none() | st.binary(min_size=6, max_size=6).map(
               lambda b: ":".join(f"{x:02x}" for x in b)),
           up=opt_flag, master=st.none() | st.integers(0, 2**31 - 1),
           bridge=st.none() | bridge_options, group=st.none() | u32),
       rename=st.none() | st.text(printable, min_size=1, max_size=15))
def test_change_body_reads_back_in_pyroute2(index: int, change: LinkChange,
                                            rename: str | None) -> None:
    msg = parse_request(rtnl.change_body(index, change, name=rename))
    assert msg["index"] == index
    assert msg.get("ifname") == rename
    assert msg.get("ifalias") == change.alias
    assert msg.get("mtu") == change.mtu
    assert msg.get("address") == change.mac
    assert msg.get("master") == change.master
    assert msg.get("group") == change.group
    if change.up is None:
        assert msg["change"] == 0
    else:
        assert (msg["change"], msg["flags"]) == (1, int(change.up))
    data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    if change.bridge is None or change.bridge.is_empty():
        assert msg.get("IFLA_LINKINFO") is None
    else:
        assert msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "bridge"
        _check_bridge_data(data, change.bridge)


def _check_bridge_data(data: Any, options: BridgeOptions) -> None:
    def get(key: str) -> Any:
        return data.get(key) if data is not None else None

    def cs(seconds: float | None) -> int | None:
        return None if seconds is None else round(seconds * 100)

    assert get("IFLA_BR_STP_STATE") == (None if options.stp is None else int(options.stp))
    assert get("IFLA_BR_FORWARD_DELAY") == cs(options.forward_delay)
    assert get("IFLA_BR_AGEING_TIME") == cs(options.ageing_time)
    assert get("IFLA_BR_VLAN_FILTERING") == (None if options.vlan_filtering is None
                                             else int(options.vlan_filtering))


@settings(max_examples=100, deadline=None)
@given(name=st.text(printable, min_size=1, max_size=15), mtu=st.none() | st.integers(68, 9000),
       mac=st.none() | st.just("02:00:00:00:00:01"), options=bridge_options,
       group=st.none() | st.just(CREATING_GROUP))
def test_new_bridge_body_reads_back_in_pyroute2(name: str, mtu: int | None, mac: str | None,
                                                options: BridgeOptions, group: int | None) -> None:
    msg = parse_request(rtnl.new_bridge_body(name, mtu, mac, options, group=group))
    assert (msg["index"], msg.get("ifname"), msg.get("mtu"), msg.get("address"),
            msg.get("group")) == (0, name, mtu, mac, group)
    assert msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "bridge"
    _check_bridge_data(msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA"), options)


def test_get_and_dump_bodies_skip_statistics() -> None:
    for body, index, name in ((rtnl.get_by_name_body("tap0"), 0, "tap0"),
                              (rtnl.get_by_index_body(42), 42, None),
                              (rtnl.dump_body(), 0, None)):
        msg = parse_request(body)
        assert (msg["index"], msg.get("ifname")) == (index, name)
        assert msg.get("IFLA_EXT_MASK") == rtnl.RTEXT_FILTER_SKIP_STATS
    assert parse_request(rtnl.group_body(5, 77)).get("IFLA_GROUP") == 77


def test_no_link_local_reads_back_in_pyroute2() -> None:
    # What `ip link set X addrgenmode none` sends: IFLA_AF_SPEC / AF_INET6 /
    # IFLA_INET6_ADDR_GEN_MODE = IN6_ADDR_GEN_MODE_NONE (1).
    msg = parse_request(rtnl.change_body(0, LinkChange(alias="vnetd:v1", up=True), name="tap0",
                                         no_ipv6_link_local=True))
    assert (msg.get("ifname"), msg.get("ifalias"), msg["flags"]) == ("tap0", "vnetd:v1", 1)
    assert msg.get_nested("IFLA_AF_SPEC", "AF_INET6", "IFLA_INET6_ADDR_GEN_MODE") == 1
    plain = parse_request(rtnl.change_body(0, LinkChange(up=True), name="tap0"))
    assert plain.get("IFLA_AF_SPEC") is None


def test_addr_gen_mode_body_reads_back_in_pyroute2() -> None:
    # `ip link set X addrgenmode eui64|none`: the request alone, by index (bridge.ensure
    # converging an existing bridge's IPv6).
    for mode in (rtnl.IN6_ADDR_GEN_MODE_EUI64, rtnl.IN6_ADDR_GEN_MODE_NONE):
        msg = parse_request(rtnl.addr_gen_mode_body(9, mode))
        assert (msg["index"], msg["change"], msg.get("ifname")) == (9, 0, None)
        assert msg.get_nested("IFLA_AF_SPEC", "AF_INET6", "IFLA_INET6_ADDR_GEN_MODE") == mode
