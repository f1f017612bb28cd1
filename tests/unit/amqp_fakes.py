"""Small fakes of the aio-pika objects the job consumer uses (message, channel, exchange).

They record what the consumer did (replies, publishes, ack/reject) so a test can
check the settlement of each delivery without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue


@dataclass
class Published:
    exchange: str
    routing_key: str
    message: aio_pika.Message


@dataclass
class FakeExchange:
    name: str
    log: list[Published]

    async def publish(self, message: aio_pika.Message, routing_key: str,
                      **_: Any) -> None:
        self.log.append(Published(self.name, routing_key, message))


@dataclass
class FakeChannel:
    published: list[Published] = field(default_factory=list)
    is_closed: bool = False

    @property
    def default_exchange(self) -> FakeExchange:
        return FakeExchange("", self.published)

    async def get_exchange(self, name: str, *, ensure: bool = True) -> FakeExchange:
        return FakeExchange(name, self.published)

    def as_channel(self) -> AbstractChannel:
        return cast(AbstractChannel, self)

    def to(self, exchange: str, routing_key: str | None = None) -> list[Published]:
        return [p for p in self.published if p.exchange == exchange
                and (routing_key is None or p.routing_key == routing_key)]


@dataclass
class FakeMessage:
    body: bytes
    message_id: str | None = None
    correlation_id: str | None = "c1"
    reply_to: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    routing_key: str | None = "host.hv1"
    content_type: str | None = "application/json"
    redelivered: bool = False
    settled: str | None = None
    """"ack" or "reject" once the consumer settled it."""

    async def ack(self) -> None:
        assert self.settled is None, f"settled twice ({self.settled}, then ack)"
        self.settled = "ack"

    async def reject(self, requeue: bool = False) -> None:
        assert self.settled is None, f"settled twice ({self.settled}, then reject)"
        assert requeue is False
        self.settled = "reject"

    def as_message(self) -> AbstractIncomingMessage:
        return cast(AbstractIncomingMessage, self)


def no_queue() -> AbstractQueue:
    """The consumer's queue is used only by start/stop, which these tests do not call."""
    return cast(AbstractQueue, object())
