"""The overlay's rtnetlink encoding: what vnetd sends decodes back to what it meant."""

from __future__ import annotations

import socket
import threading

from vnetd.net import overlay_wire as w
from vnetd.net.overlay import (
    NTF_EXT_LEARNED,
    NTF_SELF,
    NUD_PERMANENT,
    ZERO_MAC,
    FdbOp,
    NeighOp,
    VxlanInfo,
    VxlanSpec,
)


def test_vxlan_create_body_round_trips() -> None:
    spec = VxlanSpec(name="vx7", vni=16_777_215, local="2001:db8::7", link=3, port=8472,
                     learning=True, proxy=True, ttl=64, tos=1, mtu=1430)
    # A create request has the layout of the kernel's RTM_NEWLINK answer.
    assert w.parse_vxlan(w.vxlan_create_body(spec)) == VxlanInfo(
        vni=16_777_215, local="2001:db8::7", link=3, port=8472, learning=True, proxy=True,
        ttl=64, tos=1)


def test_not_a_vxlan() -> None:
    assert w.parse_vxlan(w.rtnl.new_bridge_body("br0", None, None,
                                                w.rtnl.BridgeOptions())) is None


def test_fdb_requests() -> None:
    kind, flags, body = w.fdb_request(9, FdbOp("append", ZERO_MAC, "198.51.100.2"))
    assert kind == w.RTM_NEWNEIGH and flags == w.NLM_F_CREATE | w.NLM_F_APPEND
    family, index, state, nflags, dst, mac = w.parse_neigh(body)
    assert (family, index, state, nflags, dst, mac) == (
        w.AF_BRIDGE, 9, NUD_PERMANENT, NTF_SELF, "198.51.100.2", ZERO_MAC)
    kind, flags, body = w.fdb_request(9, FdbOp("add", "52:54:00:00:00:01", "198.51.100.3"))
    assert flags == w.NLM_F_CREATE | w.NLM_F_EXCL
    assert w.parse_neigh(body)[3] == NTF_SELF | NTF_EXT_LEARNED  # the ownership marker
    kind, flags, _ = w.fdb_request(9, FdbOp("replace", "52:54:00:00:00:01", "198.51.100.3"))
    assert flags == w.NLM_F_CREATE | w.NLM_F_REPLACE
    kind, flags, _ = w.fdb_request(9, FdbOp("delete", "52:54:00:00:00:01", "198.51.100.3"))
    assert kind == w.RTM_DELNEIGH and flags == 0


def test_neigh_requests_and_rows() -> None:
    _, flags, body = w.neigh_request(4, NeighOp("add", "fd00::5", "52:54:00:00:00:05"))
    assert flags == w.NLM_F_CREATE | w.NLM_F_EXCL
    assert w.parse_neigh(body) == (socket.AF_INET6, 4, NUD_PERMANENT, NTF_EXT_LEARNED,
                                   "fd00::5", "52:54:00:00:00:05")
    rows = w.neigh_rows([(w.RTM_NEWNEIGH, body), (w.RTM_NEWNEIGH, w.neigh_request(
        5, NeighOp("add", "10.0.0.1", "52:54:00:00:00:01"))[2])], 4)
    assert [r.ip for r in rows] == ["fd00::5"] and rows[0].owned  # other devices filtered
    fdb = w.fdb_rows([(w.RTM_NEWNEIGH, w.fdb_request(4, FdbOp("append", ZERO_MAC, "1.2.3.4"))[2]),
                      (w.RTM_NEWNEIGH, body)], 4)
    assert [(r.mac, r.dst, r.owned) for r in fdb] == [(ZERO_MAC, "1.2.3.4", True)]


def test_batch_chunks_and_matches_acks() -> None:
    """The batch writer against a socketpair standing in for the kernel."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    wire = w.Wire(ours)
    requests = [w.fdb_request(1, FdbOp("append", ZERO_MAC, f"198.51.{i // 250}.{i % 250 + 1}"))
                for i in range(3000)]

    def fake_kernel() -> None:
        while True:
            data = kernel.recv(1 << 20)
            if not data:
                return
            out = b""
            for _type, _flags, seq, _payload in w.messages(data):
                code = -17 if seq % 1000 == 0 else 0
                out += w._HDR.pack(36, w.NLMSG_ERROR, 0, seq, 0) + w._ERR.pack(code) + \
                    b"\0" * 16
            kernel.send(out)

    t = threading.Thread(target=fake_kernel)
    t.start()
    try:
        codes = wire.batch(requests)
    finally:
        ours.shutdown(socket.SHUT_RDWR)
        t.join()
        ours.close()
        kernel.close()
    assert len(codes) == 3000
    assert [i for i, c in enumerate(codes) if c] == [999, 1999, 2999]
    assert all(c in (0, 17) for c in codes)
