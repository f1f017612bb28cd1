"""net/linkcache.py decodes every message exactly as rtnl.decode_link does: through a
remembered layout, after a layout change, for repeats and for odd messages."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.pyroute2_ref import encode_link
from tests.unit.test_rtnl import OPER, bridge_info, printable, tun_info, u32
from vnetd.net import monitor, rtnl
from vnetd.net.linkcache import LinkDecoder
from vnetd.net.model import Link


def plain(raw: bytes) -> Link:
    return rtnl.decode_link(raw, 16, len(raw))


def cached(dec: LinkDecoder, raw: bytes | bytearray) -> Link:
    return dec.decode(raw, 0, len(raw))


def test_a_stream_of_changes_goes_through_the_layout() -> None:
    dec = LinkDecoder()
    msgs = [encode_link(7, "tap0", mtu=mtu, alias="vnetd:v1", linkinfo=tun_info(),
                        carrier_changes=2, mac="52:54:00:00:00:07", extra=True)
            for mtu in range(1400, 1420)]
    for raw in msgs + msgs:
        assert cached(dec, raw) == plain(raw)
    assert dec.hits == len(msgs) * 2 - 1  # only the first was walked


def test_a_repeat_returns_the_same_link_and_a_flag_change_does_not() -> None:
    dec = LinkDecoder()
    raw = encode_link(7, "tap0", alias="vnetd:v1", linkinfo=tun_info())
    first, second, third = cached(dec, raw), cached(dec, raw), cached(dec, raw)
    assert second is third and second == first
    up = encode_link(7, "tap0", flags=rtnl.IFF_UP, alias="vnetd:v1", linkinfo=tun_info())
    assert cached(dec, up).up and cached(dec, up) == plain(up)
    assert not cached(dec, raw).up


def test_a_layout_change_of_the_same_length_is_not_taken_for_the_old_one() -> None:
    # Same total length, attributes shifted: alias 4 bytes longer, name 4 bytes shorter.
    dec = LinkDecoder()
    a = encode_link(7, "tap0abcd", alias="vnetd:v1", linkinfo=tun_info())
    b = encode_link(7, "tap0", alias="vnetd:v1wxyz", linkinfo=tun_info())
    assert len(a) == len(b)
    for raw in (a, a, b, b, a, b):
        assert cached(dec, raw) == plain(raw)


def test_payload_bytes_changed_in_place_are_seen() -> None:
    # The monitor reuses one receive buffer: a layout must read the bytes of *this* message.
    dec = LinkDecoder()
    raw = bytearray(encode_link(9, "br0", mtu=1500, linkinfo=bridge_info(),
                                mac="02:00:00:00:00:09"))
    offset = bytes(raw).index(struct.pack("=HHI", 8, rtnl.IFLA_MTU, 1500)) + 4
    for mtu in (1500, 1400, 9000, 1500):
        struct.pack_into("=I", raw, offset, mtu)
        link = cached(dec, raw)
        assert link.mtu == mtu and link == plain(bytes(raw))


def test_truncated_and_odd_messages_decode_like_the_walker() -> None:
    dec = LinkDecoder()
    raw = encode_link(7, "tap0", alias="vnetd:v1", linkinfo=tun_info(), carrier_changes=2)
    for cut in range(32, len(raw) + 1):
        msg = raw[:cut]
        for _ in range(2):  # the second time through whatever the first one learnt
            assert cached(dec, msg) == rtnl.decode_link(msg, 16, cut)


def test_the_monitor_decodes_the_same_with_and_without_it() -> None:
    dec = LinkDecoder()
    raws = [encode_link(i, f"t{i}", mtu=1000 + j, linkinfo=tun_info()) for j in range(3)
            for i in range(1, 5)]
    datagram = b"".join(raws)
    assert monitor.decode(datagram, links=dec) == monitor.decode(datagram)
    assert monitor.decode(datagram, links=dec) == monitor.decode(datagram)


kinds = st.sampled_from(["tap", "bridge", "veth", None])
link_args = st.fixed_dictionaries({
    "mtu": st.integers(0, 65535), "flags": st.integers(0, 0xFFFFF),
    "oper": st.sampled_from(OPER), "carrier": st.integers(0, 1),
    "carrier_changes": st.none() | u32, "master": st.none() | st.integers(0, 2**31 - 1),
    "group": st.none() | u32, "alias": st.none() | st.text(printable, min_size=1, max_size=20),
    "mac": st.none() | st.binary(min_size=6, max_size=6).map(
        lambda b: ":".join(f"{x:02x}" for x in b)),
    "extra": st.booleans(), "kind": kinds,
    "name": st.text(printable, min_size=1, max_size=15)})


@settings(max_examples=200, deadline=None)
@given(states=st.lists(link_args, min_size=1, max_size=12), index=st.integers(1, 3))
def test_any_sequence_of_states_decodes_like_the_walker(states: list[dict], index: int) -> None:
    dec = LinkDecoder()
    for state in states + states:
        kind = state.pop("kind", None) if "kind" in state else None
        info = {"tap": tun_info(), "bridge": bridge_info(),
                "veth": {"attrs": [("IFLA_INFO_KIND", "veth")]}, None: None}[kind]
        raw = encode_link(index, state["name"], linkinfo=info,
                          **{k: v for k, v in state.items() if k != "name"})
        state["kind"] = kind
        assert cached(dec, raw) == plain(raw)
