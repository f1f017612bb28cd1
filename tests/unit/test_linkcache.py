"""net/linkcache.py decodes every message exactly as rtnl.decode_link does: through a
remembered layout, after a layout change, for repeats and for odd messages."""

from __future__ import annotations

import struct
from typing import Any

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


def port_info(port_no: int, **tun: Any) -> dict[str, Any]:
    """A bridge port TAP's IFLA_LINKINFO: its own kind and data, then its port data."""
    return {"attrs": tun_info(**tun)["attrs"] + [
        ("IFLA_INFO_SLAVE_KIND", "bridge"),
        ("IFLA_INFO_SLAVE_DATA", {"attrs": [("IFLA_BRPORT_NO", port_no),
                                            ("IFLA_BRPORT_ID", 0x8000 + port_no)]})]}


def test_a_new_link_is_decoded_through_the_layout_another_link_taught() -> None:
    # A TAP just created: its first notification has the shape of its predecessors'.
    dec = LinkDecoder()
    raws = [encode_link(100 + i, f"tap{i:04d}", alias="vnetd:v1", master=3,
                        mac=f"52:54:00:00:{i // 256:02x}:{i % 256:02x}",
                        linkinfo=port_info(i + 1), extra=True) for i in range(50)]
    links = [cached(dec, raw) for raw in raws]
    assert links == [plain(raw) for raw in raws]
    assert dec.hits == len(raws) - 1  # only the very first message was walked
    assert len({link.index for link in links}) == len(raws)


def test_the_same_state_of_another_link_is_not_taken_for_a_repeat() -> None:
    dec = LinkDecoder()
    a = encode_link(7, "tap0", alias="vnetd:v1", linkinfo=tun_info())
    b = encode_link(8, "tap0", alias="vnetd:v1", linkinfo=tun_info())
    first, other = cached(dec, a), cached(dec, b)
    again = cached(dec, a)
    assert (first.index, other.index, again.index) == (7, 8, 7)
    assert again == plain(a) and cached(dec, b) == plain(b)


def test_port_data_does_not_change_the_decoded_kind_and_tun_settings() -> None:
    dec = LinkDecoder()
    for port_no, owner in ((1, 107), (2, 107), (3, 108), (4, None)):
        raw = encode_link(7, "tap0", linkinfo=port_info(port_no, owner=owner))
        assert cached(dec, raw) == plain(raw)
        assert cached(dec, raw).tun is not None


def test_a_deleted_link_is_forgotten() -> None:
    dec = LinkDecoder()
    raw = encode_link(7, "tap0", alias="vnetd:v1", linkinfo=tun_info())
    gone = encode_link(7, "tap0", alias="vnetd:v1", linkinfo=tun_info(),
                       mtype=rtnl.RTM_DELLINK)
    cached(dec, raw), cached(dec, raw)
    assert monitor.decode(gone, links=dec)[0].deleted
    assert 7 not in dec._last


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


kinds = st.sampled_from(["tap", "port", "bridge", "veth", None])
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
        info = {"tap": tun_info(), "port": port_info(index), "bridge": bridge_info(),
                "veth": {"attrs": [("IFLA_INFO_KIND", "veth")]}, None: None}[kind]
        raw = encode_link(index, state["name"], linkinfo=info,
                          **{k: v for k, v in state.items() if k != "name"})
        state["kind"] = kind
        assert cached(dec, raw) == plain(raw)
