"""The jobs' replies, acks and rejects on one channel, written together once per loop pass.

Through aio-pika, each reply cost a Message, pamqp's marshaller, the channel
lock, a write-queue item, a socket write and a drain wait, and each ack another
write and drain wait: two `send()`s per job. Here the consumer hands over a
reply's bytes (vnetd/amqp/wire.py) or an ack's, and everything handed over in
one pass of the event loop goes out as one buffer: one write for all the jobs
that finished together.

What aio-pika's basic_publish does for each reply is done here too: the next
delivery tag and a confirmation future registered on the channel under the
channel's lock (the retry path still publishes through aio-pika on the same
channel), so the broker's ack settles it, a nack fails it and the channel's
close fails it. The ordering the contract needs is the consumer's: it writes a
job's ack only after that job's reply was confirmed. Nothing else is ordered:
job N+1's reply does not wait for job N's confirm, and acks of different jobs
share a write with any replies. Acks stay one per delivery tag: with jobs
running concurrently an earlier tag is often still running, so `multiple` would
ack it too early.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame

from vnetd.amqp import wire


class Outbox:
    def __init__(self, channel: aiormq.Channel, frames: wire.ReplyFrames,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.channel = channel
        self.frames = frames
        self._loop = loop
        self._lock = channel_lock(channel)
        self._publishes: list[tuple[bytes, asyncio.Future[None]]] = []
        self._settles: list[bytes] = []
        self._scheduled = False
        self._waiting: asyncio.Task[None] | None = None
        """Writing under the channel's lock, which aio-pika held when a pass came."""
        self._idle = asyncio.Event()
        self._idle.set()

    @classmethod
    def for_channel(cls, channel: aiormq.Channel, host_id: str) -> Outbox:
        frames = wire.ReplyFrames(channel.number, "application/json", {"host_id": host_id},
                                  1,  # not persistent: a reply is for a caller waiting now
                                  channel.max_content_size)
        return cls(channel, frames, asyncio.get_running_loop())

    def reply(self, routing_key: str, correlation_id: str | None,
              body: bytes) -> asyncio.Future[None]:
        """Queue a reply; the future is done when the broker confirms it (it fails on a
        nack or when the channel closes first)."""
        self._check_open()
        confirmed: asyncio.Future[None] = self._loop.create_future()
        self._publishes.append((self.frames.publish(routing_key, correlation_id, body),
                                confirmed))
        self._schedule()
        return confirmed

    def ack(self, delivery_tag: int) -> None:
        self._check_open()
        self._settles.append(wire.ack(self.channel.number, delivery_tag))
        self._schedule()

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        self._check_open()
        self._settles.append(wire.reject(self.channel.number, delivery_tag, requeue=requeue))
        self._schedule()

    async def flushed(self) -> None:
        """Wait until what was handed over is in the connection's write queue."""
        await self._idle.wait()

    def _check_open(self) -> None:
        if self.channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{self.channel!r} closed")

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._idle.clear()
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._waiting is not None:
            return  # it takes everything pending once it has the lock
        if self._lock.locked() or self.channel.write_queue.full():
            # aio-pika is between taking a delivery tag and queueing its frames, or
            # the queue is full: wait for the lock and the room, as basic_publish does.
            self._waiting = self._loop.create_task(self._write_locked())
            return
        item, _ = self._take()
        if item is not None:
            self.channel.write_queue.put_nowait(item)
        self._idle.set()

    async def _write_locked(self) -> None:
        try:
            async with self.channel.lock:  # raises if the channel closed meanwhile
                item, confirms = self._take()
                if item is not None:
                    try:
                        await self.channel.write_queue.put(item)
                    except BaseException:
                        self._untake(confirms)  # not queued: the broker never sees them
                        raise
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self._waiting = None
            if self._publishes or self._settles:
                self._schedule()
            else:
                self._idle.set()

    def _take(self) -> tuple[ChannelFrame | None, list[tuple[int, asyncio.Future[None]]]]:
        """Everything pending as one write-queue item (one socket write), its replies
        with the delivery tags they take. Called with nobody between taking a tag and
        queueing its frames."""
        publishes, self._publishes = self._publishes, []
        settles, self._settles = self._settles, []
        channel = self.channel
        if channel.is_closed:
            # The broker returns the unacked deliveries itself; the replies are lost
            # with the channel, and their jobs hear of it (no ack follows).
            self._fail(aiormq.exceptions.ChannelInvalidStateError(
                f"{channel!r} closed before the reply was written"), publishes)
            return None, []
        if not publishes and not settles:
            return None, []
        first = channel.delivery_tag + 1
        channel.delivery_tag = first + len(publishes) - 1
        confirms = [(tag, confirmed) for tag, (_, confirmed) in enumerate(publishes, first)]
        for tag, confirmed in confirms:  # settled by the broker's ack/nack, failed by a close
            confirm = channel.create_future()
            channel.confirmations[tag] = confirm
            confirm.add_done_callback(_Relay(confirmed))
        payload = b"".join([*settles, *(frames for frames, _ in publishes)])
        return ChannelFrame(payload=payload, should_close=False), confirms

    def _untake(self, confirms: list[tuple[int, asyncio.Future[None]]]) -> None:
        channel = self.channel
        channel.delivery_tag -= len(confirms)
        for tag, confirmed in confirms:
            channel.confirmations.pop(tag, None)
            if not confirmed.done():
                confirmed.cancel()

    def _fail(self, exc: BaseException,
              publishes: list[tuple[bytes, asyncio.Future[None]]] | None = None) -> None:
        if publishes is None:
            publishes, self._publishes = self._publishes, []
            self._settles = []
        for _, confirmed in publishes:
            if not confirmed.done():
                confirmed.set_exception(exc if isinstance(exc, Exception) else
                                        aiormq.exceptions.ChannelInvalidStateError(str(exc)))


def channel_lock(channel: aiormq.Channel) -> asyncio.Lock:
    """The lock aiormq's basic_publish holds from taking a delivery tag to queueing the
    frames (`Channel.lock` is a context manager around it that cannot be asked whether
    it is held). While it is held, a reply must not take the next tag."""
    lock = getattr(channel, "_Channel__lock", None)
    if not isinstance(lock, asyncio.Lock):
        raise TypeError("this aiormq's Channel has no __lock: the outbox needs updating")
    return lock


class _Relay:
    """Settles the consumer's future from the channel's confirmation future."""

    __slots__ = ("target",)

    def __init__(self, target: asyncio.Future[None]) -> None:
        self.target = target

    def __call__(self, confirm: asyncio.Future[Any]) -> None:
        target = self.target
        if target.done():  # the job was cancelled meanwhile
            return
        if confirm.cancelled():
            target.cancel()
        elif (exc := confirm.exception()) is not None:
            target.set_exception(exc)
        else:
            target.set_result(None)
