"""net/monitor.py's raw decoder gives exactly what pyroute2's full decode + parse_link gives."""

from __future__ import annotations

import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from vnetd.net import monitor
from vnetd.net.netlink import parse_link

OPER = ["UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP"]


def encode_link(index: int, name: str, *, mtu: int = 1500, mac: str | None = None,
                flags: int = 0, oper: str = "DOWN", carrier: int = 0, master: int | None = None,
                alias: str | None = None, linkinfo: dict | None = None, mtype: int = 16) -> bytes:
    m = ifinfmsg()
    m["header"]["type"] = mtype
    m["index"] = index
    m["flags"] = flags
    attrs: list[tuple[str, object]] = [("IFLA_IFNAME", name), ("IFLA_MTU", mtu),
                                       ("IFLA_OPERSTATE", oper), ("IFLA_CARRIER", carrier)]
    if mac is not None:
        attrs.append(("IFLA_ADDRESS", mac))
    if master is not None:
        attrs.append(("IFLA_MASTER", master))
    if alias is not None:
        attrs.append(("IFLA_IFALIAS", alias))
    if linkinfo is not None:
        attrs.append(("IFLA_LINKINFO", linkinfo))
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data)


def pyroute2_link(raw: bytes):  # type: ignore[no-untyped-def]
    return parse_link(next(iter(MarshalRtnl().parse(raw))))


def mine(raw: bytes) -> monitor.LinkEvent:
    msgs = monitor.decode(raw)
    assert len(msgs) == 1
    assert isinstance(msgs[0], monitor.LinkEvent)
    return msgs[0]


def tap_info(tun_type: int = 2, owner: int | None = 107) -> dict:
    data: list[tuple[str, int]] = [("IFLA_TUN_TYPE", tun_type), ("IFLA_TUN_VNET_HDR", 1),
                                   ("IFLA_TUN_PERSIST", 1), ("IFLA_TUN_MULTI_QUEUE", 0)]
    if owner is not None:
        data.append(("IFLA_TUN_OWNER", owner))
    return {"attrs": [("IFLA_INFO_KIND", "tun"), ("IFLA_INFO_DATA", {"attrs": data})]}


def bridge_info() -> dict:
    return {"attrs": [("IFLA_INFO_KIND", "bridge"), ("IFLA_INFO_DATA", {"attrs": [
        ("IFLA_BR_FORWARD_DELAY", 1500), ("IFLA_BR_AGEING_TIME", 30000),
        ("IFLA_BR_STP_STATE", 1), ("IFLA_BR_VLAN_FILTERING", 1)]})]}


def test_tap_decodes_like_pyroute2() -> None:
    raw = encode_link(7, "tap0", mtu=1450, mac="4a:36:c4:41:f1:fa", flags=1, oper="DOWN",
                      master=3, alias="vnetd:v1", linkinfo=tap_info())
    ev = mine(raw)
    assert not ev.deleted
    assert ev.link == pyroute2_link(raw)
    assert ev.link.kind == "tap"
    assert ev.link.tun is not None and ev.link.tun.owner_uid == 107
    assert ev.link.owned


def test_bridge_and_tun_and_plain_devices() -> None:
    for raw in (encode_link(2, "br0", mac="02:00:00:00:00:01", linkinfo=bridge_info()),
                encode_link(4, "tun0", linkinfo=tap_info(tun_type=1, owner=None)),
                encode_link(1, "lo", mac="00:00:00:00:00:00", oper="UNKNOWN", flags=1),
                encode_link(9, "eth0", mac="52:54:00:12:34:56", oper="UP", carrier=1, flags=1),
                encode_link(10, "v0", linkinfo={"attrs": [("IFLA_INFO_KIND", "veth")]})):
        assert mine(raw).link == pyroute2_link(raw)
    br = mine(encode_link(2, "br0", linkinfo=bridge_info())).link
    assert br.bridge is not None
    assert (br.bridge.stp, br.bridge.forward_delay, br.bridge.ageing_time,
            br.bridge.vlan_filtering) == (True, 15.0, 300.0, True)
    assert mine(encode_link(1, "lo")).link.kind == "loopback"
    assert mine(encode_link(4, "tun0", linkinfo=tap_info(tun_type=1))).link.kind == "tun"


def test_bridge_port_notices_are_not_link_events() -> None:
    # a port leaving a bridge: RTM_DELLINK with family AF_BRIDGE; the link stays
    m = ifinfmsg()
    m["header"]["type"] = 17
    m["family"] = socket.AF_BRIDGE
    m["index"] = 7
    m["attrs"] = [("IFLA_IFNAME", "tap0"), ("IFLA_MASTER", 3)]
    m.encode()
    assert monitor.decode(bytes(m.data)) == []


def test_dellink_is_marked_deleted() -> None:
    ev = mine(encode_link(7, "tap0", mtype=17))
    assert ev.deleted
    assert ev.link.index == 7


@settings(max_examples=200, deadline=None)
@given(index=st.integers(1, 2**31 - 1),
       name=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=15),
       mtu=st.integers(68, 65535), flags=st.integers(0, 0xFFFF),
       oper=st.sampled_from(OPER), carrier=st.integers(0, 1),
       master=st.none() | st.integers(1, 10_000),
       alias=st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                 min_size=1, max_size=60),
       mac=st.none() | st.binary(min_size=6, max_size=6).map(
           lambda b: ":".join(f"{x:02x}" for x in b)),
       kind=st.sampled_from(["tap", "tun", "bridge", "veth", None]))
def test_any_link_decodes_like_pyroute2(index: int, name: str, mtu: int, flags: int, oper: str,
                                        carrier: int, master: int | None, alias: str | None,
                                        mac: str | None, kind: str | None) -> None:
    info = {"tap": tap_info(), "tun": tap_info(1, None), "bridge": bridge_info(),
            "veth": {"attrs": [("IFLA_INFO_KIND", "veth")]}, None: None}[kind]
    raw = encode_link(index, name, mtu=mtu, flags=flags, oper=oper, carrier=carrier,
                      master=master, alias=alias, mac=mac, linkinfo=info)
    assert mine(raw).link == pyroute2_link(raw)


def encode_addr(index: int, family: int, address: str, prefixlen: int, *, local: bool,
                mtype: int = 20, label: str | None = None) -> bytes:
    m = ifaddrmsg()
    m["header"]["type"] = mtype
    m["family"] = family
    m["prefixlen"] = prefixlen
    m["index"] = index
    m["scope"] = 0
    attrs: list[tuple[str, object]] = [("IFA_ADDRESS", address)]
    if local:
        attrs.append(("IFA_LOCAL", address))
    if label:
        attrs.append(("IFA_LABEL", label))
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data)


def test_addresses() -> None:
    raw = encode_addr(5, socket.AF_INET, "10.9.0.1", 24, local=True, label="v0")
    (ev,) = monitor.decode(raw)
    assert isinstance(ev, monitor.AddressEvent)
    assert ev.address == monitor.Address(5, "inet", "10.9.0.1", 24, 0, "v0")
    raw6 = encode_addr(5, socket.AF_INET6, "fe80::1", 64, local=False, mtype=21)
    (ev6,) = monitor.decode(raw6)
    assert isinstance(ev6, monitor.AddressEvent)
    assert ev6.deleted
    assert ev6.address.address == "fe80::1"
    assert ev6.address.family == "inet6"


def test_several_messages_done_error_and_interrupted() -> None:
    done = struct.pack("=IHHIIi", 20, monitor.NLMSG_DONE, monitor.NLM_F_MULTI, 3, 0, 0)
    done_intr = struct.pack("=IHHIIi", 20, monitor.NLMSG_DONE,
                            monitor.NLM_F_MULTI | monitor.NLM_F_DUMP_INTR, 4, 0, 0)
    err = struct.pack("=IHHIIi", 36, monitor.NLMSG_ERROR, 0, 5, 0, -16) + bytes(16)
    ack = struct.pack("=IHHIIi", 36, monitor.NLMSG_ERROR, 0, 6, 0, 0) + bytes(16)
    link = encode_link(3, "x", linkinfo=bridge_info())
    msgs = monitor.decode(link + done + done_intr + err + ack)
    assert isinstance(msgs[0], monitor.LinkEvent)
    assert msgs[1:] == [monitor.Control("done", 3), monitor.Control("done", 4, interrupted=True),
                        monitor.Control("error", 5, error=16)]


def test_truncated_input_never_raises() -> None:
    raw = encode_link(7, "tap0", linkinfo=tap_info())
    for cut in range(len(raw)):
        monitor.decode(raw[:cut])  # no exception; partial datagrams are ignored


def test_dump_request_layout() -> None:
    req = monitor.dump_request(monitor.RTM_GETLINK, 9)
    length, mtype, flags, seq, _ = struct.unpack_from("=IHHII", req)
    assert (length, mtype, seq) == (len(req), monitor.RTM_GETLINK, 9)
    assert flags == monitor.NLM_F_REQUEST | monitor.NLM_F_DUMP
    assert len(monitor.dump_request(monitor.RTM_GETADDR, 1)) == 16 + 8
