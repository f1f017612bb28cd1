"""The neighbour watcher: what vnetd wrote stays silent, what someone else did is an event."""

from __future__ import annotations

import socket
from typing import Any

from tests.unit.fakes import FakeNet
from vnetd.handlers.context import Context
from vnetd.handlers.policy import Policy
from vnetd.net import overlay_wire as w
from vnetd.net.overlay import ZERO_MAC, FdbOp, NeighOp
from vnetd.watchers.neigh import NeighWatcher


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, dict[str, Any]]] = []

    def emit(self, type: str, subject: str | None, data: dict[str, Any]) -> None:
        self.events.append((type, subject, data))


def watcher() -> tuple[NeighWatcher, Sink]:
    net = FakeNet()
    for name in ("x1", "x2", "x3", "x4", "x5", "x6"):
        net.add(name)
    assert net.add("vx1", "vxlan", owned=True) == 7
    ctx = Context(host_id="hv1", net=net, policy=Policy(), version="t")
    sink = Sink()
    wt = NeighWatcher(ctx, sink, socket.socket)
    ctx.overlay.set(7, "vx1", {("remotes", "198.51.100.2"): None,
                                        ("fdb", "52:54:00:00:00:02"): "198.51.100.2",
                                        ("neighbours", "10.0.0.2"): "52:54:00:00:00:02"},
                             {"remotes", "fdb", "neighbours"})
    return wt, sink


def notice(kind: int, body: bytes) -> w.NeighNotice:
    n = w.parse_notice(kind, body)
    assert n is not None
    return n


def fdb(op: FdbOp, index: int = 7, deleted: bool = False) -> w.NeighNotice:
    return notice(w.RTM_DELNEIGH if deleted else w.RTM_NEWNEIGH, w.fdb_request(index, op)[2])


async def test_own_writes_are_silent() -> None:
    wt, sink = watcher()
    wt.feed(fdb(FdbOp("append", ZERO_MAC, "198.51.100.2")))
    wt.feed(fdb(FdbOp("add", "52:54:00:00:00:02", "198.51.100.2")))
    wt.feed(notice(w.RTM_NEWNEIGH, w.neigh_request(7, NeighOp(
        "add", "10.0.0.2", "52:54:00:00:00:02"))[2]))
    # vnetd deleting an extra row of a MAC it moves (the record says another VTEP).
    wt.feed(fdb(FdbOp("delete", "52:54:00:00:00:02", "198.51.100.9"), deleted=True))
    # Removals of keys vnetd dropped from its record.
    wt.feed(fdb(FdbOp("delete", ZERO_MAC, "198.51.100.3"), deleted=True))
    # Other devices are not watched.
    wt.feed(fdb(FdbOp("delete", ZERO_MAC, "198.51.100.2"), index=8, deleted=True))
    await wt.settle()
    assert sink.events == []


async def test_outside_changes_are_events() -> None:
    wt, sink = watcher()
    wt.feed(fdb(FdbOp("delete", ZERO_MAC, "198.51.100.2"), deleted=True))
    wt.feed(fdb(FdbOp("replace", "52:54:00:00:00:02", "198.51.100.5")))
    wt.feed(fdb(FdbOp("delete", "52:54:00:00:00:02", "198.51.100.2"), deleted=True))
    del_neigh = w.neigh_request(7, NeighOp("delete", "10.0.0.2", "52:54:00:00:00:02"))[2]
    wt.feed(notice(w.RTM_DELNEIGH, del_neigh))
    await wt.settle()
    types = [(t, d["table"], d["change"]) for t, _, d in sink.events]
    # "changed" at once; removals after the device is known to be still there.
    assert types == [("fdb.changed", "fdb", "changed"), ("fdb.changed", "remotes", "removed"),
                     ("fdb.changed", "fdb", "removed"),
                     ("neighbour.changed", "neighbours", "removed")]
    assert sink.events[1][1] == "vx1" and sink.events[1][2]["dst"] == "198.51.100.2"
    assert sink.events[0][2]["expected_dst"] == "198.51.100.2"
    assert sink.events[0][2]["dst"] == "198.51.100.5"


async def test_a_deleted_device_is_not_a_removal_of_each_entry() -> None:
    wt, sink = watcher()
    wt.feed(fdb(FdbOp("delete", ZERO_MAC, "198.51.100.2"), deleted=True))
    await wt.ctx.net.delete_link(7)
    await wt.settle()
    assert sink.events == [] and 7 not in wt.state.devices


async def test_foreign_rows_are_ignored() -> None:
    wt, sink = watcher()
    # A hand-made (no extern_learn) unicast row appearing and going.
    body = w.fdb_request(7, FdbOp("append", "52:54:00:00:00:77", "198.51.100.2"))[2]
    wt.feed(notice(w.RTM_NEWNEIGH, body))
    wt.feed(notice(w.RTM_DELNEIGH, body))
    await wt.settle()
    assert sink.events == []


def test_bridge_master_rows_are_not_notices() -> None:
    body = w._NDMSG.pack(w.AF_BRIDGE, 7, 0x80, 0x04, 0) + w.attr(w.NDA_LLADDR, bytes(6))
    assert w.parse_notice(w.RTM_NEWNEIGH, body) is None


async def test_start_reads_the_record_back_and_an_overrun_reports_what_went() -> None:
    """After a restart the kernel's owned entries are the record; after lost notices
    (ENOBUFS) the record is compared with the kernel and the differences published."""
    from tests.unit.fake_overlay import FakeOverlay
    from vnetd.net.overlay import NTF_SELF, NUD_PERMANENT, FdbEntry

    net = FakeNet()
    overlay = net.overlay()
    assert isinstance(overlay, FakeOverlay)
    index = overlay.add_vxlan_link("vx1", 5, "198.51.100.1")
    foreign = overlay.add_vxlan_link("vx-other", 6, "198.51.100.1", owned=False)
    overlay.fdb[index] = [FdbEntry(ZERO_MAC, "198.51.100.2"), FdbEntry(ZERO_MAC, "198.51.100.3"),
                          FdbEntry("52:54:00:00:00:09", "198.51.100.9", NUD_PERMANENT, NTF_SELF)]
    overlay.fdb[foreign] = [FdbEntry(ZERO_MAC, "198.51.100.2")]
    ctx = Context(host_id="hv1", net=net, policy=Policy(), version="t")
    sink = Sink()
    wt = NeighWatcher(ctx, sink, socket.socket)
    await wt.start()
    try:
        # Only vnetd's rows of vnetd's devices: the hand-made unicast row is not in it.
        assert ctx.overlay.devices == {index: {("remotes", "198.51.100.2"): None,
                                               ("remotes", "198.51.100.3"): None}}
        overlay.fdb[index] = overlay.fdb[index][1:]  # lost while the socket overflowed
        await wt._sync(report=True)
        assert [(t, d["change"], d["dst"]) for t, _, d in sink.events] == [
            ("fdb.changed", "removed", "198.51.100.2")]
    finally:
        await wt.stop()
