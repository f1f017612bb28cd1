"""Publishes the bus's events to the `vnetd.events` topic exchange, in order.

Its own channel with publisher confirms; `mandatory` off (an event nobody
subscribed to is not an error). Publishes are coalesced and pipelined: each
time the pump runs it takes what the bus holds (up to the room left in a
window of `window` unconfirmed publishes) and writes all of it as one frame
buffer, one socket write, one message per event as the contract says; the
broker's confirms settle them in the background. An event leaves the bus only
when the broker confirmed it; when a publish fails (broker gone, channel
closed, nack) every unconfirmed event goes back to the head of the bus, the
publisher waits for the robust connection to come back, tells its reconnect
listeners (the netlink watcher resyncs), and publishes them again in their
order. After a nack the channel itself is replaced (once per failure, at most
every RENEW_FIRST_PAUSE..RENEW_MAX_PAUSE seconds): RabbitMQ 3.10 nacks every
publish to a quorum queue on a channel that first routed to it while the
queue's record named a dead leader, for as long as that node stays dead; a new
channel reads the record afresh (vnetd/amqp/renewing.py does the same for the
daemon's own quorum publishes; vnetd.events may not import vnetd.amqp, and
this pipelined publisher cannot await one publish at a time as it does).
Duplicates are possible after such a failure (the broker may have routed a
message whose confirm was lost); never a reordering within what is delivered
once, and never a silent loss.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, cast

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiormq.abc import ChannelFrame

from vnetd import metrics
from vnetd.events import frames
from vnetd.events.bus import EventBus
from vnetd.events.cloudevents import CONTENT_TYPE, Encoder, Event, event_id, routing_key
from vnetd.supervisor import TaskTree

log = structlog.get_logger("vnetd.events")

RETRY_SECONDS = 0.5
RENEW_FIRST_PAUSE = 0.5
RENEW_MAX_PAUSE = 5.0
"""Pause before replacing a nacked channel: doubled per nack in a row (a new channel
opened before a leader is elected is nacked too), back to the first once a publish
on the new channel is confirmed."""
BATCH = 256
"""Most events written in one go: bounds one write's size and the loop's time on it."""


class _Confirms:
    """The broker's confirms of one channel, settled as ranges of delivery tags.

    aiormq keeps a future per publish and, for every `multiple=True` ack, walks all
    of them and schedules a callback per tag: most of the publisher's CPU per event
    at 10,000 events/s. Our publishes on this channel have consecutive tags, so
    what is confirmed is a prefix: `acked` (every tag up to it acknowledged), plus
    the single acks above a gap until the gap closes. A nack, or the channel
    closing (which fails `closed`, a future of the channel's own), is a failure:
    the publisher gives back everything after the prefix and publishes it again.
    """

    __slots__ = ("_singles", "acked", "closed", "failed", "last", "nacked", "on_settled")

    def __init__(self, closed: asyncio.Future[Any], acked: int,
                 on_settled: Callable[[], None]) -> None:
        self.closed = closed
        self.acked = acked
        """Highest tag with every tag up to it acknowledged."""
        self.last = acked
        """Highest tag published."""
        self.failed: BaseException | None = None
        self.nacked = 0
        """The lowest tag the broker nacked (0: none)."""
        self.on_settled = on_settled
        self._singles: set[int] = set()

    async def on_frame(self, frame: Any) -> None:
        """Replaces the aiormq channel's `_on_confirm_frame` (called from its reader)."""
        tag = int(frame.delivery_tag)
        if isinstance(frame, aiormq.spec.Basic.Nack):
            if self.failed is None:
                self.failed = aiormq.exceptions.DeliveryError(None, frame)
            first = self.acked + 1 if frame.multiple else tag
            self.nacked = min(self.nacked or first, first)
        elif frame.multiple:
            self.acked = max(self.acked, tag)
        elif tag > self.acked:
            self._singles.add(tag)
        singles = self._singles
        if singles:
            while self.acked + 1 in singles:
                self.acked += 1
                singles.discard(self.acked)
            if singles and min(singles) <= self.acked:
                self._singles = {t for t in singles if t > self.acked}
        self.on_settled()

    @property
    def settled(self) -> bool:
        """The broker has said all it will about the prefix that can still be confirmed:
        every tag acked, or every tag before the first nack, or the channel is gone."""
        end = self.nacked - 1 if self.nacked else self.last
        return self.acked >= end or self.closed.done()


class EventPublisher:
    name = "events.publisher"

    def __init__(self, bus: EventBus, connection: AbstractRobustConnection, exchange: str,
                 *, window: int = 2048, flush_timeout: float = 5.0) -> None:
        self.bus = bus
        self.connection = connection
        self.exchange_name = exchange
        self.window = window
        self.flush_timeout = flush_timeout
        self.on_reconnect: list[Callable[[], None]] = []
        """Called after publishing resumed following a failure (broker reconnect)."""
        self.state = "disconnected"
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self.tasks = TaskTree(self.name)
        self._running = False
        self._inflight: deque[Event] = deque()
        """Published, not yet confirmed, in order: the first has tag `_confirms.acked + 1`."""
        self._confirms: _Confirms | None = None
        self._underlay: aiormq.Channel | None = None
        self._space = asyncio.Event()
        self._settled = asyncio.Event()
        self._frames: frames.Publishes | None = None
        self._encoder: Encoder | None = None
        self._keys: dict[str, str] = {}
        """Routing key of each event type (the host is fixed)."""
        self._failed = False
        self.renewals = 0
        """Channels replaced after a nack."""
        self._renew_pause = RENEW_FIRST_PAUSE
        self._renewed_at = -RENEW_MAX_PAUSE

    async def start(self) -> None:
        self._channel = await self.connection.channel(publisher_confirms=True)
        self._exchange = await self._channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        self.state = "connected"
        self._running = True
        self.tasks.spawn("pump", self._run, restart=True)

    async def stop(self) -> None:
        """Flush what is buffered (bounded by flush_timeout), then close the channel."""
        if self._running:
            try:
                await asyncio.wait_for(self.bus.wait_drained(), self.flush_timeout)
            except TimeoutError:
                log.warning("events_flush_timeout", left=self.bus.buffered)
        self._running = False
        await self.tasks.stop()
        self._confirms = None  # what is unconfirmed now stays so: the channel closes anyway
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()
        self.state = "disconnected"

    # ------------------------------------------------------------ the pump
    async def _run(self) -> None:
        while True:
            await self.bus.wait()
            if self._failed:
                await self._recover()
                continue
            if not self.bus.pending:
                continue
            room = self.window - len(self._inflight)
            if room <= 0:
                self._space.clear()
                await self._space.wait()
                continue
            events = self.bus.take(min(room, BATCH))
            try:
                await self._publish(events)
            except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError,
                    ValueError) as exc:
                # A closed channel or connection (or a routing key too long for AMQP,
                # as basic_publish refused it): not written. Back to the head of the
                # bus; the pump recovers (the ones in flight go back before them).
                self.bus.give_back(events)
                self._fail(exc)
                continue
            self._inflight.extend(events)
            # Let the writer send them before taking more.
            await asyncio.sleep(0)

    def _track(self, channel: aiormq.Channel) -> _Confirms:
        """Confirm bookkeeping for `channel` (a new one after a reconnect)."""
        confirms = self._confirms
        if confirms is None or self._underlay is not channel:
            if self._inflight:  # published on a channel that is gone: never confirmed
                raise aiormq.exceptions.ChannelInvalidStateError("the events channel changed")
            closed = channel.create_future()  # failed by the channel when it closes
            closed.add_done_callback(self._on_closed)
            confirms = self._confirms = _Confirms(closed, channel.delivery_tag,
                                                  self._on_settled)
            # The channel's reader hands every basic.ack/nack to this (see _Confirms).
            setattr(channel, "_on_confirm_frame", confirms.on_frame)  # noqa: B010
            self._underlay = channel
        return confirms

    async def _publish(self, events: list[Event]) -> None:
        """Write `events` as one buffer on the channel, one message each.

        aiormq directly: its basic_publish costs a task, a lock, a timeout, a future
        and a socket write per message and capped the stream near 4,300 events/s
        here. This takes the next delivery tags and writes the method, header and
        body frames of every message as one ChannelFrame under the channel's lock:
        one write for the lot; _Confirms settles them from the broker's acks. The
        frames are built by events/frames.py (pamqp's generic marshaller was the
        largest part of the publisher's CPU per event).
        """
        channel = cast(aiormq.Channel, await self._open_channel().get_underlay_channel())
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError("the events channel is closed")
        confirms = self._track(channel)
        host, epoch = self.bus.host_id, self.bus.epoch
        build = self._frames
        if build is None or (build.channel, build.max_body) != (channel.number,
                                                                channel.max_content_size):
            build = self._frames = frames.Publishes(
                channel.number, self.exchange_name, CONTENT_TYPE,
                2,  # persistent: survives a broker restart in durable queues
                channel.max_content_size)
        encoder = self._encoder
        if encoder is None or (encoder.host_id, encoder.epoch) != (host, epoch):
            encoder = self._encoder = Encoder(host, epoch)
        keys = self._keys
        parts = []
        for event in events:
            key = keys.get(event.type)
            if key is None:
                key = keys[event.type] = routing_key(host, event.type)
            mid = event_id(epoch, event.sequence)
            parts.append(build.build(key, mid, encoder.encode(event, mid)))
        buffer = b"".join(parts)
        async with channel.lock:
            first = channel.delivery_tag + 1
            channel.delivery_tag = first + len(events) - 1
            try:
                # No timeout on the confirms: on an open channel the broker confirms
                # (or nacks) every publish, however late under load; a closed channel
                # fails them at once. A timeout made a slow confirm look like a loss,
                # and the re-publish reached subscribers after later events: a false gap.
                await channel.write_queue.put(ChannelFrame(payload=buffer, should_close=False))
            except BaseException:
                # Not queued, so the broker never sees these: give the tags back
                # while still holding the lock, as basic_publish does.
                channel.delivery_tag = first - 1
                raise
            confirms.last = channel.delivery_tag

    def _on_closed(self, closed: asyncio.Future[Any]) -> None:
        if not closed.cancelled():
            closed.exception()  # retrieved: the failure is handled below, not logged by asyncio
        self._on_settled()

    def _on_settled(self) -> None:
        """Confirms arrived (or the channel closed): events leave the bus in order."""
        confirms = self._confirms
        if confirms is None:
            return
        done = len(self._inflight) - (confirms.last - confirms.acked)
        if done > 0 and not self._failed:
            self._renew_pause = RENEW_FIRST_PAUSE  # this channel is confirming again
            types: Counter[str] = Counter()
            popleft = self._inflight.popleft
            for _ in range(done):
                types[popleft().type] += 1
            for etype, n in types.items():
                metrics.EVENTS_PUBLISHED.labels(type=etype).inc(n)
            self.bus.confirmed(done)
        if confirms.failed is not None or confirms.closed.done():
            exc = confirms.failed
            if exc is None and not confirms.closed.cancelled():
                exc = confirms.closed.exception()
            self._fail(exc or RuntimeError("the events channel closed"))
        if confirms.settled:
            self._settled.set()
        self._space.set()

    def _fail(self, exc: BaseException) -> None:
        if not self._failed:
            self._failed = True
            self.state = "reconnecting"
            log.warning("events_publish_failed", error=repr(exc), buffered=self.bus.buffered,
                        unconfirmed=len(self._inflight))
            self.bus.kick()  # wake the pump to recover
        self._settled.set()

    async def _recover(self) -> None:
        """Wait for the broker's last word on what is in flight, give back the rest, wait
        for the broker."""
        confirms = self._confirms
        if confirms is not None:
            # The acks still due for tags before the failure (a closed channel sends
            # none): bounded, whatever the broker does.
            with contextlib.suppress(TimeoutError):
                while not confirms.settled:
                    self._settled.clear()
                    await asyncio.wait_for(self._settled.wait(), self.flush_timeout)
            unconfirmed = confirms.last - confirms.acked
            nacked = confirms.nacked != 0
        else:
            unconfirmed = len(self._inflight)
            nacked = False
        ok = max(0, len(self._inflight) - unconfirmed)
        for _ in range(ok):
            event = self._inflight.popleft()
            metrics.EVENTS_PUBLISHED.labels(type=event.type).inc()
        if ok:
            self.bus.confirmed(ok)
        # Everything after the confirmed prefix is published again, in order (what the
        # broker had routed arrives twice; subscribers drop duplicates by sequence).
        failed = list(self._inflight)
        self._inflight.clear()
        self.bus.give_back(failed)
        self._confirms = None
        self._underlay = None
        if nacked:
            await self._renew()
        while True:
            try:
                await self._ready()
                break
            except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
                log.info("events_waiting_for_broker", error=repr(exc))
                await asyncio.sleep(RETRY_SECONDS)
        self._failed = False
        self.state = "connected"
        log.info("events_publishing_resumed", buffered=self.bus.buffered)
        for callback in self.on_reconnect:
            try:
                callback()
            except Exception:
                log.exception("events_reconnect_listener_failed")

    async def _renew(self) -> None:
        """Replace the nacked channel with a new one, rate-limited."""
        loop = asyncio.get_running_loop()
        wait = self._renewed_at + self._renew_pause - loop.time()
        log.warning("events_publish_nacked", renew_in_s=round(max(0.0, wait), 2),
                    renewals=self.renewals, buffered=self.bus.buffered)
        if wait > 0:
            await asyncio.sleep(wait)
        self._renewed_at = loop.time()
        self._renew_pause = min(RENEW_MAX_PAUSE, self._renew_pause * 2)
        old = self._open_channel()
        try:
            # Opened before the old one is closed: a closed robust channel's ready()
            # never returns, and _ready waits on whatever channel is current.
            self._channel = await self.connection.channel(publisher_confirms=True)
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            # The connection is down: the robust connection restores the old channel
            # and the next nack on it comes back here.
            log.info("events_channel_renewal_failed", error=repr(exc))
            return
        self.renewals += 1
        with contextlib.suppress(Exception):  # dropped either way
            await old.close()

    def _open_channel(self) -> AbstractChannel:
        if self._channel is None:  # start() opens it before the pump runs
            raise RuntimeError("the event publisher is not started")
        return self._channel

    async def _ready(self) -> None:
        channel = self._open_channel()
        ready = getattr(channel, "ready", None)
        if ready is not None:
            await ready()
        if channel.is_closed:
            # A channel the broker closed (not the connection): open a new one.
            channel = self._channel = await self.connection.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
