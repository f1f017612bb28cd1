"""EventBus numbering, ordering, overflow with a host.resync in place of the lost events;
CloudEvents encoding; command events."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from vnetd import metrics
from vnetd.events import cloudevents
from vnetd.events.bus import EventBus
from vnetd.events.commands import CommandEvents


def test_sequence_is_contiguous_from_one_and_take_keeps_order() -> None:
    bus = EventBus("hv1", 100, epoch="e1")
    for i in range(5):
        bus.emit("link.added", f"t{i}", {"i": i})
    assert bus.sequence == 5
    got = bus.take(3)
    assert [e.sequence for e in got] == [1, 2, 3]
    assert bus.buffered == 5
    bus.confirmed(3)
    assert bus.buffered == 2
    assert [e.sequence for e in bus.take(10)] == [4, 5]


def test_give_back_puts_unconfirmed_first_in_order() -> None:
    bus = EventBus("hv1", 100, epoch="e1")
    for i in range(6):
        bus.emit("x", None, {"i": i})
    first = bus.take(4)
    bus.confirmed(1)
    bus.give_back(first[1:])
    assert [e.sequence for e in bus.take(10)] == [2, 3, 4, 5, 6]


def test_overflow_drops_oldest_and_puts_a_resync_with_the_gap_first() -> None:
    dropped_before = metrics.EVENTS_DROPPED._value.get()
    bus = EventBus("hv1", 10, epoch="e1")
    for i in range(25):
        bus.emit("link.changed", "t", {"i": i})
    assert bus.buffered == 10
    events = bus.take(100)
    head = events[0]
    assert head.type == "host.resync"
    assert head.data["reason"] == "buffer_overflow"
    lost = head.data["lost"]
    # 25 emitted; 10 slots: the resync + 17..25; the resync takes the last dropped number
    assert lost == {"first": 1, "last": 16, "count": 16}
    assert head.sequence == 16
    assert [e.sequence for e in events[1:]] == list(range(17, 26))
    assert bus.dropped_total == 16
    assert metrics.EVENTS_DROPPED._value.get() - dropped_before == 16
    # the stream a subscriber sees is strictly increasing
    seqs = [e.sequence for e in events]
    assert seqs == sorted(set(seqs))


def test_overflow_while_events_are_in_flight_and_given_back() -> None:
    bus = EventBus("hv1", 10, epoch="e1")
    for i in range(5):
        bus.emit("x", None, {"i": i})
    inflight = bus.take(5)  # 1..5 in flight (broker down)
    for i in range(10):
        bus.emit("x", None, {"i": i})  # 6..15: only 5 slots left beside the in-flight
    bus.give_back(inflight)  # not lost: they go first again
    events = bus.take(100)
    seqs = [e.sequence for e in events]
    assert seqs == sorted(set(seqs))
    assert len(events) == 10
    assert seqs[:5] == [1, 2, 3, 4, 5]
    (resync,) = [e for e in events if e.type == "host.resync"]
    lost = resync.data["lost"]
    delivered_real = {e.sequence for e in events if e.type != "host.resync"}
    missing = set(range(1, 16)) - delivered_real
    assert set(range(lost["first"], lost["last"] + 1)) == missing
    assert lost["count"] == len(missing)
    assert resync.sequence == lost["last"]


def test_a_second_overflow_extends_the_pending_gap() -> None:
    bus = EventBus("hv1", 10, epoch="e1")
    for i in range(15):
        bus.emit("x", None, {"i": i})
    for i in range(10):
        bus.emit("x", None, {"i": i})
    events = bus.take(100)
    assert sum(e.type == "host.resync" for e in events) == 1
    assert events[0].data["lost"] == {"first": 1, "last": 16, "count": 16}
    assert [e.sequence for e in events[1:]] == list(range(17, 26))


def test_emit_never_raises() -> None:
    bus = EventBus("hv1", 10, epoch="e1")

    def boom() -> float:
        raise RuntimeError("clock broke")

    bus._clock = boom
    bus.emit("x", None, {})  # logged, not raised


async def test_wait_and_drained() -> None:
    bus = EventBus("hv1", 10, epoch="e1")
    waiter = asyncio.create_task(bus.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    bus.emit("x", None, {})
    await asyncio.wait_for(waiter, 1)
    drained = asyncio.create_task(bus.wait_drained())
    await asyncio.sleep(0)
    assert not drained.done()
    bus.confirmed(len(bus.take(10)))
    await asyncio.wait_for(drained, 1)


def test_epoch_is_a_nonempty_string_with_time_and_pid() -> None:
    import os
    epoch = EventBus("h", 10).epoch
    micros, pid = epoch.split("-")
    assert int(pid) == os.getpid()
    assert int(micros) > 1_600_000_000_000_000


def test_cloudevent_envelope() -> None:
    ev = cloudevents.Event(7, "link.changed", "tap0", {"mtu": 1400, "changes": ["mtu"]},
                           1_700_000_000.25)
    body = orjson.loads(cloudevents.encode(ev, "hv1", "e9"))
    assert body == {
        "specversion": "1.0", "id": "e9-7", "source": "vnetd://hv1",
        "type": "io.vnetd.link.changed", "time": "2023-11-14T22:13:20.250000Z",
        "datacontenttype": "application/json", "sequence": 7, "epoch": "e9",
        "subject": "tap0", "data": {"mtu": 1400, "changes": ["mtu"]},
    }
    assert cloudevents.routing_key("hv1", "link.changed") == "hv1.link.changed"
    assert cloudevents.decode(cloudevents.encode(ev, "hv1", "e9"))["id"] == "e9-7"
    with pytest.raises(ValueError, match="specversion"):
        cloudevents.decode(b'{"specversion":"0.3","id":"1","source":"s","type":"t"}')
    # extension attribute names: lowercase alphanumeric (CloudEvents 1.0)
    for key in body:
        assert key.isalnum() and key.islower()


@dataclass
class Job:
    op: str
    ok: bool = True
    message_id: str | None = "m1"
    correlation_id: str | None = "c1"
    error_code: str | None = None
    duration: float = 0.0012
    subject: str | None = "tap0"
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    duplicate: bool = False


def test_command_events() -> None:
    bus = EventBus("hv1", 100, epoch="e1")
    obs = CommandEvents(bus)
    obs.job_finished(Job("tap.ensure", result={"name": "tap0", "created": True}))
    obs.job_finished(Job("tap.delete", ok=False, error_code="forbidden",
                         error={"code": "forbidden", "message": "not ours"}))
    obs.job_finished(Job("host.health"))  # read-only: nothing
    obs.job_finished(Job("tap.ensure", duplicate=True))  # answered from the cache: nothing
    obs.job_finished(Job("batch", subject=None,
                         result={"results": [{}] * 3, "completed": 3, "failed": 0,
                                 "skipped": 0}))
    events = bus.take(10)
    assert [(e.type, e.subject) for e in events] == [
        ("command.completed", "tap0"), ("command.failed", "tap0"),
        ("command.completed", None)]
    assert events[0].data == {"op": "tap.ensure", "ok": True, "message_id": "m1",
                              "correlation_id": "c1", "duration_ms": 1.2,
                              "result": {"name": "tap0", "created": True}}
    assert events[1].data["error"]["code"] == "forbidden"
    assert events[2].data["result"] == {"completed": 3, "failed": 0, "skipped": 0}


def test_the_streams_encoder_makes_the_same_bodies_as_encode() -> None:
    enc = cloudevents.Encoder("hv1", "1733100000000000-42")
    rng = random.Random(7)
    base = 1_733_100_000.0
    # Random times, and times a hair from a second boundary (rounding up into the next).
    times = [base + rng.random() * 100 for _ in range(2000)]
    times += [base + s + f for s in range(5) for f in (0.9999995, 0.9999994999, 5e-7, 0.0)]
    for seq, when in enumerate(times, 1):
        for subject in ("tap0", None):
            ev = cloudevents.Event(seq, "link.changed", subject, {"mtu": seq}, when)
            mid = cloudevents.event_id("1733100000000000-42", seq)
            assert enc.encode(ev, mid) == cloudevents.encode(ev, "hv1", "1733100000000000-42")


def test_the_buffered_gauge_is_read_when_scraped() -> None:
    bus = EventBus("hv1", 100, epoch="e1")
    for i in range(4):
        bus.emit("x", None, {"i": i})
    assert metrics.REGISTRY.get_sample_value("vnetd_events_buffered") == 4
    bus.confirmed(len(bus.take(3)))
    assert metrics.REGISTRY.get_sample_value("vnetd_events_buffered") == 1
