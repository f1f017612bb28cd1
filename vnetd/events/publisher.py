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
order. Duplicates are possible after such a failure (the broker may have
routed a message whose confirm was lost); never a reordering within what is
delivered once, and never a silent loss.
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
from vnetd.events.cloudevents import CONTENT_TYPE, Event, encode, event_id, routing_key
from vnetd.supervisor import TaskTree

log = structlog.get_logger("vnetd.events")

RETRY_SECONDS = 0.5
BATCH = 256
"""Most events written in one go: bounds one write's size and the loop's time on it."""


class EventPublisher:
    name = "events.publisher"

    def __init__(self, bus: EventBus, connection: AbstractRobustConnection, exchange: str,
                 *, window: int = 512, flush_timeout: float = 5.0) -> None:
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
        self._inflight: deque[tuple[Event, asyncio.Future[Any]]] = deque()
        self._space = asyncio.Event()
        self._failed = False

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
        for _, confirm in self._inflight:  # unconfirmed publishes: the channel closes anyway
            confirm.cancel()
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
                confirms = await self._publish(events)
            except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError,
                    ValueError) as exc:
                # A closed channel or connection (or a routing key too long for AMQP,
                # as basic_publish refused it): fail them, and the pump recovers.
                confirms = [_failed(exc) for _ in events]
            for event, confirm in zip(events, confirms, strict=True):
                self._inflight.append((event, confirm))
                confirm.add_done_callback(self._on_done)
            # Let the writer send them before taking more.
            await asyncio.sleep(0)

    async def _publish(self, events: list[Event]) -> list[asyncio.Future[Any]]:
        """Write `events` as one buffer on the channel, one message each; return the
        futures of their confirms (in order).

        aiormq directly: its basic_publish costs a task, a lock, a timeout and a
        socket write per message and capped the stream near 4,300 events/s here.
        This does what basic_publish does for each message (the next delivery tag,
        a confirmation future that the channel settles on the broker's ack or nack
        and fails when the channel closes, the method, header and body frames), but
        under one lock and as one ChannelFrame: one write for the lot. The frames
        are built by events/frames.py (pamqp's generic marshaller was the largest
        part of the publisher's CPU per event).
        """
        channel = cast(aiormq.Channel, await self._open_channel().get_underlay_channel())
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError("the events channel is closed")
        host, epoch, exchange = self.bus.host_id, self.bus.epoch, self.exchange_name
        number, max_body = channel.number, channel.max_content_size
        buffer = b"".join(
            frames.publish(number, exchange, routing_key(host, event.type), CONTENT_TYPE,
                           2,  # persistent: survives a broker restart in durable queues
                           event_id(epoch, event.sequence), encode(event, host, epoch),
                           max_body)
            for event in events)
        confirms: list[asyncio.Future[Any]] = []
        async with channel.lock:
            first = channel.delivery_tag + 1
            for tag in range(first, first + len(events)):
                confirm = channel.create_future()
                channel.confirmations[tag] = confirm
                confirms.append(confirm)
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
                for tag, confirm in zip(range(first, first + len(events)), confirms,
                                        strict=True):
                    channel.confirmations.pop(tag, None)
                    confirm.cancel()
                raise
        return confirms

    def _on_done(self, _confirm: asyncio.Future[Any]) -> None:
        # Settle strictly from the head so events leave the bus in order.
        ok = 0
        types: Counter[str] = Counter()
        while self._inflight and self._inflight[0][1].done():
            event, task = self._inflight[0]
            if task.cancelled() or task.exception() is not None:
                if not self._failed:
                    self._failed = True
                    self.state = "reconnecting"
                    exc = None if task.cancelled() else task.exception()
                    log.warning("events_publish_failed", error=repr(exc),
                                sequence=event.sequence, buffered=self.bus.buffered)
                    self.bus.kick()  # wake the pump to recover
                break
            self._inflight.popleft()
            ok += 1
            types[event.type] += 1
        if ok:
            for etype, n in types.items():
                metrics.EVENTS_PUBLISHED.labels(type=etype).inc(n)
            self.bus.confirmed(ok)
        self._space.set()

    async def _recover(self) -> None:
        """Wait for every publish in flight, give the failed back, wait for the broker."""
        if self._inflight:
            await asyncio.wait([confirm for _, confirm in self._inflight])
        failed: list[Event] = []
        ok = 0
        while self._inflight:
            event, task = self._inflight.popleft()
            if task.cancelled() or task.exception() is not None:
                failed.append(event)
            elif failed:
                # Confirmed after an earlier one failed: publish it again too, so
                # that order is kept (a duplicate, which subscribers drop by sequence).
                failed.append(event)
            else:
                ok += 1
                metrics.EVENTS_PUBLISHED.labels(type=event.type).inc()
        if ok:
            self.bus.confirmed(ok)
        self.bus.give_back(failed)
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


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    """A confirm that failed before it was written (the pump then recovers)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future
