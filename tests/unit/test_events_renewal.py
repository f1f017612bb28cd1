"""A nacked events channel is replaced (events/publisher.py _recover/_renew): RabbitMQ 3.10
goes on nacking a quorum queue's publishes on the channel that was nacked once while the
queue's leader was dead, so the unconfirmed events are re-published on a new channel, in
order, and renewals in a row are spaced out."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractRobustConnection

from vnetd.events.bus import EventBus
from vnetd.events.publisher import EventPublisher, _Confirms


class FakeChannel:
    def __init__(self, n: int) -> None:
        self.n = n
        self.is_closed = False

    async def close(self) -> None:
        self.is_closed = True

    async def declare_exchange(self, *args: Any, **kwargs: Any) -> object:
        return object()


class FakeConnection:
    def __init__(self) -> None:
        self.opened: list[FakeChannel] = []
        self.fail = False

    async def channel(self, publisher_confirms: bool = True) -> FakeChannel:
        assert publisher_confirms
        if self.fail:
            raise ConnectionError("broker gone")
        ch = FakeChannel(len(self.opened))
        self.opened.append(ch)
        return ch


async def nacked_publisher(conn: FakeConnection, bus: EventBus,
                           publisher: EventPublisher | None = None) -> EventPublisher:
    """A publisher as left by a nack of the first of the events it has in flight."""
    p = publisher or EventPublisher(bus, cast(AbstractRobustConnection, conn), "vnetd.events")
    if p._channel is None:
        p._channel = cast(Any, await conn.channel())
    events = bus.take(10)
    p._inflight.extend(events)
    c = _Confirms(asyncio.get_running_loop().create_future(), 0, p._on_settled)
    c.last = len(events)
    p._confirms = c
    await c.on_frame(aiormq.spec.Basic.Nack(delivery_tag=1, multiple=False))
    assert p._failed
    return p


async def test_a_nack_replaces_the_channel_and_gives_back_the_events_in_order() -> None:
    conn, bus = FakeConnection(), EventBus("h1", 100)
    for i in range(3):
        bus.emit("link.added", f"l{i}", {"i": i})
    p = await nacked_publisher(conn, bus)
    old = conn.opened[0]
    await p._recover()
    assert p.renewals == 1
    assert old.is_closed
    assert p._channel is conn.opened[1] and not conn.opened[1].is_closed
    assert p.state == "connected" and not p._failed
    again = bus.take(10)
    assert [e.subject for e in again] == ["l0", "l1", "l2"]
    assert [e.sequence for e in again] == sorted(e.sequence for e in again)


async def test_renewals_in_a_row_are_spaced_out() -> None:
    conn, bus = FakeConnection(), EventBus("h1", 100)
    bus.emit("link.added", "l0", {})
    p = await nacked_publisher(conn, bus)
    await p._recover()
    p._renew_pause = 0.2  # the doubled pause, shortened for the test
    p = await nacked_publisher(conn, bus, p)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await p._recover()
    assert loop.time() - t0 >= 0.15
    assert p.renewals == 2 and len(conn.opened) == 3


async def test_a_renewal_that_cannot_open_a_channel_keeps_the_old_one() -> None:
    conn, bus = FakeConnection(), EventBus("h1", 100)
    bus.emit("link.added", "l0", {})
    p = await nacked_publisher(conn, bus)
    conn.fail = True
    await p._recover()
    assert p.renewals == 0
    assert p._channel is conn.opened[0] and not conn.opened[0].is_closed
    assert [e.subject for e in bus.take(10)] == ["l0"]


async def test_a_closed_channel_is_not_a_renewal() -> None:
    conn, bus = FakeConnection(), EventBus("h1", 100)
    bus.emit("link.added", "l0", {})
    p = EventPublisher(bus, cast(AbstractRobustConnection, conn), "vnetd.events")
    p._channel = cast(Any, await conn.channel())
    p._inflight.extend(bus.take(10))
    closed = asyncio.get_running_loop().create_future()
    closed.add_done_callback(p._on_closed)
    c = _Confirms(closed, 0, p._on_settled)
    c.last = 1
    p._confirms = c
    closed.set_exception(aiormq.exceptions.ChannelInvalidStateError("closed"))
    await asyncio.sleep(0)
    assert p._failed
    conn.opened[0].is_closed = True  # the broker closed it: _ready opens a new one
    await p._recover()
    assert p.renewals == 0
    assert [e.subject for e in bus.take(10)] == ["l0"]
