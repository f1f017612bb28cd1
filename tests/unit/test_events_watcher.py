"""The netlink watcher's logic on a fake socket: coalescing, diffs, overrun resync, snapshot."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.wait import until
from tests.unit.fakes import RecordingSink as Sink
from vnetd.net.model import Link
from vnetd.net.monitor import Address, AddressEvent, Control, LinkEvent, Message, Overrun
from vnetd.watchers.netlink import NetlinkWatcher


class FakeMonitor:
    def __init__(self) -> None:
        self.opens = 0
        self.dumps: list[tuple[str, int]] = []
        self.queue: list[Message] = []
        self.overrun = False
        self.seq = 0

    async def open(self) -> int:
        self.opens += 1
        return 1000 + self.opens

    def request_dump(self, what: Any) -> int:
        self.seq += 1
        self.dumps.append((what, self.seq))
        return self.seq

    def read(self, max_datagrams: int = 256) -> list[Message]:
        if self.overrun:
            self.overrun = False
            raise Overrun("No buffer space available")
        out, self.queue = self.queue, []
        return out

    def close(self) -> None:
        pass


def link(index: int, name: str, **kw: Any) -> Link:
    base: dict[str, Any] = {"kind": "tap", "mtu": 1500, "mac": "02:00:00:00:00:0" + str(index),
                            "up": False, "oper_state": "down", "carrier": False, "master": None,
                            "alias": None}
    base.update(kw)
    return Link(index=index, name=name, **base)


def new(lk: Link) -> LinkEvent:
    return LinkEvent(False, lk)


def gone(lk: Link) -> LinkEvent:
    return LinkEvent(True, lk)


def addr(index: int, ip: str = "10.0.0.1") -> Address:
    return Address(index, "inet", ip, 24, 0, None)


async def started(mon: FakeMonitor, sink: Sink, initial: list[Message]) -> NetlinkWatcher:
    w = NetlinkWatcher(mon, sink, loop_reader=False)
    start = asyncio.create_task(w.start())
    await until(lambda: mon.dumps, "the first dump request")
    finish_dump(w, mon, initial)
    await asyncio.wait_for(start, 1)
    return w


def finish_dump(w: NetlinkWatcher, mon: FakeMonitor, links: list[Message],
                addrs: list[Message] | None = None) -> None:
    what, seq = mon.dumps[-1]
    assert what == "link"
    w.feed([*links, Control("done", seq)])
    what, seq = mon.dumps[-1]
    assert what == "addr"
    w.feed([*(addrs or []), Control("done", seq)])


async def test_start_fills_the_view_without_events() -> None:
    mon, sink = FakeMonitor(), Sink()
    w = await started(mon, sink, [new(link(1, "lo", kind="loopback")), new(link(2, "t0"))])
    assert sink.events == []
    assert set(w.links) == {1, 2}
    assert w.state == "synced"


async def test_changes_added_changed_removed_and_duplicates_coalesce() -> None:
    mon, sink = FakeMonitor(), Sink()
    w = await started(mon, sink, [new(link(1, "lo", kind="loopback"))])
    t = link(5, "tap0")
    w.feed([new(t), new(t)])  # the kernel often says it twice
    assert sink.types() == [("link.added", "tap0")]
    w.feed([new(t)])
    assert len(sink.events) == 1  # nothing changed: no event
    w.feed([new(link(5, "tap0", up=True, mtu=1400)), new(link(5, "tap0", up=True, mtu=1400))])
    (_, _, data) = sink.events[-1]
    assert len(sink.events) == 2  # one change, one event
    assert data["changes"] == ["state", "mtu"]
    assert data["previous"] == {"state": "down", "mtu": 1500}
    assert data["state"] == "up" and data["mtu"] == 1400
    # a change and its reversal are two transitions: two events, even in one read
    w.feed([new(link(5, "tap0", up=True, mtu=1500)), new(link(5, "tap0", up=True, mtu=1400))])
    assert [d["mtu"] for _, _, d in sink.events[-2:]] == [1500, 1400]
    assert len(sink.events) == 4

    w.feed([new(link(7, "br0", kind="bridge"))])
    w.feed([new(link(5, "tap0", up=True, mtu=1400, master=7))])
    (_, _, data) = sink.events[-1]
    assert data["changes"] == ["master"]
    assert data["master"] == "br0"
    assert data["previous"] == {"master": None}

    w.feed([new(link(5, "tap0", up=True, mtu=1400, master=7, alias="vnetd:v1"))])
    assert sink.events[-1][2]["changes"] == ["alias", "owned"]

    w.feed([AddressEvent(False, addr(5))])
    assert sink.types()[-1] == ("address.added", "tap0")
    assert sink.events[-1][2] == {"interface": "tap0", "index": 5, "family": "inet",
                                  "address": "10.0.0.1", "prefixlen": 24, "scope": "global"}
    w.feed([gone(link(5, "tap0"))])
    assert sink.types()[-2:] == [("address.removed", "tap0"), ("link.removed", "tap0")]
    assert sink.events[-1][2]["index"] == 5


async def test_events_follow_the_kernel_order() -> None:
    mon, sink = FakeMonitor(), Sink()
    w = await started(mon, sink, [])
    w.feed([new(link(9, "x")), AddressEvent(False, addr(9)), AddressEvent(False, addr(9)),
            gone(link(9, "x")), AddressEvent(True, addr(9))])
    assert sink.types() == [("link.added", "x"), ("address.added", "x"),
                            ("address.removed", "x"), ("link.removed", "x")]


async def test_overrun_reopens_dumps_and_publishes_the_difference() -> None:
    mon, sink = FakeMonitor(), Sink()
    w = await started(mon, sink, [new(link(1, "lo", kind="loopback")), new(link(2, "a")),
                                  new(link(3, "b"))])
    mon.overrun = True
    w.on_readable()
    assert w.overruns == 1
    assert w.state == "resyncing"
    await until(lambda: len(mon.dumps) == 3, "the resync's dump request")
    assert mon.opens == 2
    # During the dump: a notification for a link deleted before it was dumped,
    # one created in the dumped range, and the dump itself.
    seq = mon.dumps[-1][1]
    w.feed([new(link(1, "lo", kind="loopback")), new(link(2, "a", mtu=9000)),
            new(link(8, "c")), gone(link(8, "c")), new(link(9, "d")),
            Control("done", seq)])
    assert sink.events == []  # nothing until the dump is complete
    w.feed([AddressEvent(False, addr(9)), Control("done", mon.dumps[-1][1])])
    types = sink.types()
    assert types == [("link.changed", "a"), ("link.added", "d"), ("address.added", "d"),
                     ("link.removed", "b"), ("host.resync", None)]
    resync = sink.events[-1][2]
    assert resync["reason"] == "netlink_overrun"
    assert resync["changes"] == 4
    assert resync["links"] == 3
    assert resync["overruns"] == 1
    assert w.state == "synced"


async def test_interrupted_dump_is_taken_again() -> None:
    mon, sink = FakeMonitor(), Sink()
    w = await started(mon, sink, [])
    w.request_resync("test")
    await until(lambda: len(mon.dumps) == 3, "the resync's dump request")
    seq = mon.dumps[-1][1]
    w.feed([new(link(2, "a")), Control("done", seq, interrupted=True)])
    assert mon.dumps[-1] == ("link", seq + 1)
    finish_dump(w, mon, [new(link(2, "a"))])
    assert sink.types() == [("link.added", "a"), ("host.resync", None)]


async def test_overrun_during_start_still_starts_without_events() -> None:
    mon, sink = FakeMonitor(), Sink()
    w = NetlinkWatcher(mon, sink, loop_reader=False)
    start = asyncio.create_task(w.start())
    await until(lambda: mon.dumps, "the first dump request")
    mon.overrun = True
    w.on_readable()
    await until(lambda: mon.opens == 2 and len(mon.dumps) == 2, "the dump after the overrun")
    finish_dump(w, mon, [new(link(2, "a"))])
    await asyncio.wait_for(start, 1)
    assert sink.events == []
    assert w.overruns == 1


async def test_snapshot_provider_dumps_then_reads_view_and_position_together() -> None:
    mon, sink = FakeMonitor(), Sink()
    w = await started(mon, sink, [new(link(1, "lo", kind="loopback")),
                                  new(link(3, "br0", kind="bridge")), new(link(5, "t1"))])
    w._fd = 1  # as if the loop were reading it
    provide = w.snapshot_provider(lambda: {"epoch": "e", "sequence": len(sink.events)})
    task = asyncio.create_task(provide())
    await until(lambda: len(mon.dumps) == 3, "the snapshot's dump request")
    # a notification queued before the dump, then the dump: t1's carrier changed
    # without any notification (the kernel does that for a TAP that is down)
    finish_dump(w, mon, [new(link(4, "tap0", master=3)), new(link(1, "lo", kind="loopback")),
                         new(link(3, "br0", kind="bridge")), new(link(4, "tap0", master=3)),
                         new(link(5, "t1", carrier=True))])
    snap = await asyncio.wait_for(task, 1)
    assert sink.types() == [("link.added", "tap0"), ("link.changed", "t1")]  # no host.resync
    assert snap["events"] == {"epoch": "e", "sequence": 2}
    assert [x["name"] for x in snap["links"]] == ["lo", "br0", "tap0", "t1"]
    assert snap["links"][2]["master"] == "br0"
    assert snap["addresses"] == []


@pytest.mark.parametrize("reason", ["broker_reconnect"])
async def test_requested_resync_with_no_difference_still_reports(reason: str) -> None:
    mon, sink = FakeMonitor(), Sink()
    w = await started(mon, sink, [new(link(2, "a"))])
    w.request_resync(reason)
    w.request_resync(reason)  # a second request while one is under way: covered by it
    await until(lambda: len(mon.dumps) == 3, "the resync's dump request")
    assert mon.opens == 2
    finish_dump(w, mon, [new(link(2, "a"))])
    assert sink.events == [("host.resync", None, sink.events[0][2])]
    assert sink.events[0][2]["reason"] == reason
    assert sink.events[0][2]["changes"] == 0


async def test_one_read_gives_one_event_per_object_that_changed() -> None:
    mon, sink = FakeMonitor(), Sink()
    w = await started(mon, sink, [new(link(1, "lo", kind="loopback")),
                                  new(link(7, "br0", kind="bridge"))])
    # What the kernel says while tap.ensure creates, marks, attaches and brings up a TAP,
    # read in one go: one link.added with the final state, and br0's own change.
    mon.queue = [new(link(5, "tap0")), new(link(5, "tap0", alias="vnetd:v1")),
                 new(link(5, "tap0", alias="vnetd:v1", master=7)),
                 new(link(7, "br0", kind="bridge", mac="02:00:00:00:00:05")),
                 new(link(5, "tap0", alias="vnetd:v1", master=7, up=True)),
                 AddressEvent(False, addr(5))]
    w.on_readable()
    assert sink.types() == [("link.added", "tap0"), ("link.changed", "br0"),
                            ("address.added", "tap0")]
    added = sink.events[0][2]
    assert (added["master"], added["state"], added["owned"]) == ("br0", "up", True)
    sink.events.clear()
    # Two changes of one link in one read: one link.changed listing both.
    mon.queue = [new(link(5, "tap0", alias="vnetd:v1", master=7, up=True, mtu=1400)),
                 new(link(5, "tap0", alias="vnetd:v1", master=None, up=True, mtu=1400))]
    w.on_readable()
    assert sink.types() == [("link.changed", "tap0")]
    assert set(sink.events[0][2]["changes"]) == {"mtu", "master"}
    sink.events.clear()
    # Removed with its address in one read; a link that came and went leaves no trace.
    mon.queue = [gone(link(5, "tap0")), new(link(9, "tmp")), gone(link(9, "tmp"))]
    w.on_readable()
    assert sink.types() == [("address.removed", "tap0"), ("link.removed", "tap0")]
    assert set(w.links) == {1, 7}


async def test_the_decoders_repeated_link_object_is_no_event_but_its_deletion_is() -> None:
    # net/linkcache.py returns the very Link of the last state for a repeat of it; an
    # RTM_DELLINK of that state comes back as the same object too.
    mon, sink = FakeMonitor(), Sink()
    w = await started(mon, sink, [])
    t = link(5, "tap0")
    w.feed([new(t)])
    w.feed([new(t)])
    w.feed_batch([new(t), new(t)])
    assert sink.types() == [("link.added", "tap0")]
    w.feed_batch([new(t), gone(t)])
    assert sink.types()[-1] == ("link.removed", "tap0") and 5 not in w.links
    w.feed([new(t)])
    w.feed([gone(t)])
    assert sink.types()[-2:] == [("link.added", "tap0"), ("link.removed", "tap0")]


async def test_reads_without_superseded_notifications_give_the_same_events() -> None:
    # net/monitor.py leaves out a link notification a later one of its read supersedes;
    # a read being one batch, the watcher's events must not change. Random reads of link
    # changes, additions, deletions and addresses over a few links, applied both ways.
    import random
    import socket

    from tests.support.pyroute2_ref import encode_link
    from tests.unit.test_events_monitor import encode_addr, reader
    from vnetd.net import monitor

    rng = random.Random(11)
    skipped = 0
    for case in range(150):
        grams: list[bytes] = []
        alive = {1, 2}
        for _ in range(rng.randint(2, 14)):
            idx = rng.randint(1, 4)
            roll = rng.random()
            if roll < 0.15:
                grams.append(encode_link(idx, f"t{idx}", mtype=17))
                alive.discard(idx)
            elif roll < 0.3:
                grams.append(encode_addr(idx, socket.AF_INET, f"10.0.{idx}.{rng.randint(1, 2)}",
                                         24, local=True, mtype=rng.choice((20, 21))))
            else:
                grams.append(encode_link(idx, f"t{idx}", mtu=rng.choice((1400, 1500, 9000)),
                                         master=rng.choice((None, 1, 2))))
                alive.add(idx)
        runs = []
        for skipping in (False, True):
            mon, sink = FakeMonitor(), Sink()
            sock = reader(grams)  # the MonitorSocket's own read (with its decoder)
            links = sock._links
            initial = [m for g in (encode_link(1, "t1"), encode_link(2, "t2"))
                       for m in monitor.decode(g, None, links)]
            w = await started(mon, sink, initial)
            try:
                msgs = (sock.read(64) if skipping else
                        [m for g in grams for m in monitor.decode(g, None, links)])
            finally:
                sock.close()
            w.feed_batch(msgs)
            runs.append((sink.events, dict(w.links), dict(w.addrs)))
        skip = monitor.superseded(grams)
        skipped += len(skip)
        assert runs[0] == runs[1], (case, skip)
    assert skipped > 100  # the cases did exercise the skipping


def test_the_socket_rests_longer_while_the_publisher_is_behind() -> None:
    from vnetd.watchers import netlink

    waiting = [0]
    w = NetlinkWatcher(FakeMonitor(), Sink(), loop_reader=False, backlog=lambda: waiting[0])
    assert w.pause() == netlink.READ_PAUSE
    waiting[0] = netlink.BACKLOG_FREE
    assert w.pause() == netlink.READ_PAUSE
    waiting[0] = netlink.BACKLOG_FREE + 1000
    assert w.pause() == pytest.approx(netlink.READ_PAUSE + 1000 * netlink.BACKLOG_PAUSE_PER_EVENT)
    waiting[0] = 10**6
    assert w.pause() == netlink.MAX_PAUSE
    assert NetlinkWatcher(FakeMonitor(), Sink(), loop_reader=False).pause() == netlink.READ_PAUSE
