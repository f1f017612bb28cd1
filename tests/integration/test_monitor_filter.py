"""The watchers' socket filters (net/bpf.py) on the real kernel, each beside an
unfiltered socket of the same groups: the link watcher's drops the bridge port notices
(AF_BRIDGE) of a TAP joining a bridge and keeps every message of the links themselves;
the neighbour watcher's drops a bridge's own FDB notices and keeps a VXLAN device's
(NTF_SELF) rows and everything else."""

from __future__ import annotations

import socket
import time

import pytest

from tests.support import netns as netns_mod
from vnetd.net import bpf, monitor, overlay_wire
from vnetd.net.netns import NamespaceWorker
from vnetd.net.overlay import NTF_SELF
from vnetd.net.rtnl import NLMSGHDR, RTM_DELLINK, RTM_DELNEIGH, RTM_NEWLINK, RTM_NEWNEIGH

pytestmark = pytest.mark.integration


def _open(name: str, program: bytes | None, groups: int = monitor.GROUPS) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        if program is not None:
            bpf.attach(sock, program)
        sock.bind((0, groups))
        sock.setblocking(False)
        return sock
    worker = NamespaceWorker(name)
    try:
        return worker.call(make)
    finally:
        worker.close()


def _families(sock: socket.socket, types: tuple[int, ...] = (RTM_NEWLINK, RTM_DELLINK)
              ) -> list[tuple[int, int, int]]:
    """(message type, family, the byte at offset 10 of the body: ndm_flags for a
    neighbour message) of every message of `types` queued now."""
    out: list[tuple[int, int, int]] = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return out
        pos = 0
        while pos + NLMSGHDR.size <= len(data):
            length, mtype = NLMSGHDR.unpack_from(data, pos)[:2]
            if mtype in types:
                body = pos + NLMSGHDR.size
                out.append((mtype, data[body], data[body + 10]))
            pos += (length + 3) & ~3


def test_bridge_port_notices_are_dropped_and_link_messages_kept(
        netns_factory: netns_mod.NetnsFactory) -> None:
    ns = netns_factory()
    plain, filtered = _open(ns, None), _open(ns, bpf.bridge_port_filter())
    try:
        for step in (("link", "add", "br0", "type", "bridge"),
                     ("tuntap", "add", "t0", "mode", "tap"),
                     ("link", "set", "t0", "master", "br0", "up"),
                     ("link", "set", "t0", "nomaster"),
                     ("link", "del", "t0")):
            netns_mod.run_in(ns, "ip", *step)
        time.sleep(0.3)
        seen, kept = _families(plain), _families(filtered)
    finally:
        plain.close()
        filtered.close()
    bridge_msgs = [m for m in seen if m[1] == socket.AF_BRIDGE]
    assert bridge_msgs, "the kernel sent no AF_BRIDGE notice: the test proves nothing"
    assert not [m for m in kept if m[1] == socket.AF_BRIDGE]
    assert kept == [m for m in seen if m[1] != socket.AF_BRIDGE]
    assert any(m[0] == RTM_DELLINK for m in kept)


def test_a_bridges_own_fdb_is_dropped_and_vxlan_rows_kept(
        netns_factory: netns_mod.NetnsFactory) -> None:
    ns = netns_factory()
    groups = 1 << (overlay_wire.RTNLGRP_NEIGH - 1)
    neigh = (RTM_NEWNEIGH, RTM_DELNEIGH)
    plain, filtered = _open(ns, None, groups), _open(ns, bpf.bridge_fdb_filter(), groups)
    try:
        for step in (("ip", "link", "add", "br0", "type", "bridge"),
                     ("ip", "tuntap", "add", "t0", "mode", "tap"),
                     ("ip", "link", "set", "t0", "master", "br0", "up"),
                     ("ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport",
                      "4789", "local", "192.0.2.1", "nolearning"),
                     ("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst",
                      "192.0.2.2"),
                     ("bridge", "fdb", "del", "00:00:00:00:00:00", "dev", "vx0", "dst",
                      "192.0.2.2"),
                     ("ip", "link", "del", "t0")):
            netns_mod.run_in(ns, *step)
        time.sleep(0.3)
        seen, kept = _families(plain, neigh), _families(filtered, neigh)
    finally:
        plain.close()
        filtered.close()
    own = [m for m in seen if m[1] == socket.AF_BRIDGE and not m[2] & NTF_SELF]
    rows = [m for m in seen if m[1] == socket.AF_BRIDGE and m[2] & NTF_SELF]
    assert own, "no bridge FDB notice arrived: the test proves nothing"
    assert {m[0] for m in rows} == set(neigh), seen  # the VXLAN row's append and delete
    assert kept == [m for m in seen if m not in own]


async def test_a_read_decodes_only_each_links_last_notification_on_the_kernel(
        netns_factory: netns_mod.NetnsFactory) -> None:
    # MonitorSocket.read leaves out a link notification that a later one of its read
    # supersedes (net/monitor.py superseded): on the real kernel, each change is a
    # datagram of its own, and the read gives every TAP's last MTU, in place of its first.
    ns = netns_factory()
    taps = ["t0", "t1", "t2"]
    for name in taps:
        netns_mod.run_in(ns, "ip", "tuntap", "add", name, "mode", "tap")
    mon = monitor.MonitorSocket(ns, 1 << 22)
    try:
        await mon.open()
        script = "".join(f"link set {name} mtu {mtu}\n" for mtu in (1400, 1300, 1200, 1100)
                         for name in taps)
        netns_mod.run_in(ns, "ip", "-batch", "-", input=script)
        time.sleep(0.3)
        got = mon.read(4096)
    finally:
        mon.close()
    links = [m for m in got if isinstance(m, monitor.LinkEvent)]
    assert mon.skipped >= 9  # 3 of each TAP's 4 changes (the kernel may add repeats)
    assert [(m.link.name, m.link.mtu) for m in links][-3:] == [(n, 1100) for n in taps]
    assert {m.link.mtu for m in links} == {1100}
    # The first placeholders keep the TAPs' places: the order of their first changes.
    first = [m.index for m in got if isinstance(m, monitor.Superseded)][:3]
    assert first == [m.link.index for m in links[-3:]]
