"""Publishes to quorum queues on a channel that is replaced when the broker nacks.

RabbitMQ 3.10 keeps, per channel and per quorum queue, the list of the queue's
servers it read from the queue's record on the channel's first publish to it.
If that first publish comes while the record still names a dead node as leader
(the seconds around a leader loss), the channel asks the dead node, nacks the
publish, and nacks every later publish to that queue on that channel until the
dead node returns (seen in bench/cluster.py's kill rounds; vnetd/client.py does
the same for jobs). A new channel reads the record afresh, which names the new
leader once one is elected. The daemon publishes to quorum queues only to set a
job aside (the retry queue, vnetd.dead): a nack there would leave the job
unacked on a live channel, held by this daemon and never run again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel

log = structlog.get_logger("vnetd.amqp")

T = TypeVar("T")

FIRST_PAUSE = 0.5
MAX_PAUSE = 5.0
GIVE_UP_AFTER = 300.0
"""A nack for this long is no election: raised, and the job stays unacked (its
channel's loss, or the daemon's stop, returns it to the queue)."""


class RenewingPublisher:
    """Runs a publish on its own confirmed channel; a nack replaces the channel and
    the publish is tried again (same message: the broker did not queue it)."""

    def __init__(self, open_channel: Callable[[], Awaitable[AbstractChannel]]) -> None:
        self._open = open_channel
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self.renewals = 0

    async def _current(self) -> AbstractChannel:
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._open()
            return self._channel

    async def _renew(self, nacked: AbstractChannel) -> None:
        async with self._lock:
            if self._channel is not nacked:
                return  # another publish already replaced it
            self._channel = None
            self.renewals += 1
        with contextlib.suppress(Exception):  # it is dropped either way
            await nacked.close()

    async def run(self, publish: Callable[[AbstractChannel], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GIVE_UP_AFTER
        pause = FIRST_PAUSE
        while True:
            channel = await self._current()
            try:
                return await publish(channel)
            except aio_pika.exceptions.DeliveryError:
                if loop.time() + pause > deadline:
                    raise
                log.warning("quorum_publish_nacked", renew_in_s=pause, renewals=self.renewals)
                await self._renew(channel)
                await asyncio.sleep(pause)
                pause = min(MAX_PAUSE, pause * 2)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()


__all__ = ["RenewingPublisher"]
