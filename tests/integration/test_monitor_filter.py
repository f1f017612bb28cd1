"""The watcher's socket filter (net/monitor.py bridge_port_filter) on the real kernel:
the bridge port notices (AF_BRIDGE) of a TAP joining a bridge are dropped before they
are queued, and every message of the links themselves still arrives."""

from __future__ import annotations

import socket
import time

import pytest

from tests.support import netns as netns_mod
from vnetd.net import monitor
from vnetd.net.netns import NamespaceWorker
from vnetd.net.rtnl import IFINFOMSG, NLMSGHDR, RTM_DELLINK, RTM_NEWLINK

pytestmark = pytest.mark.integration


def _open(name: str, filtered: bool) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        if filtered:
            monitor.attach_filter(sock, monitor.bridge_port_filter())
        sock.bind((0, monitor.GROUPS))
        sock.setblocking(False)
        return sock
    worker = NamespaceWorker(name)
    try:
        return worker.call(make)
    finally:
        worker.close()


def _families(sock: socket.socket) -> list[tuple[int, int, int]]:
    """(message type, ifi_family, ifindex) of every link message queued now."""
    out: list[tuple[int, int, int]] = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return out
        pos = 0
        while pos + NLMSGHDR.size <= len(data):
            length, mtype = NLMSGHDR.unpack_from(data, pos)[:2]
            if mtype in (RTM_NEWLINK, RTM_DELLINK):
                family, _t, index = IFINFOMSG.unpack_from(data, pos + NLMSGHDR.size)[:3]
                out.append((mtype, family, index))
            pos += (length + 3) & ~3


def test_bridge_port_notices_are_dropped_and_link_messages_kept(
        netns_factory: netns_mod.NetnsFactory) -> None:
    ns = netns_factory()
    plain, filtered = _open(ns, False), _open(ns, True)
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
