"""Small fakes of the aio-pika objects the job consumer uses (message, channel, exchange),
and of the aiormq channel its outbox writes replies and acks on (FakeWire).

They record what the consumer did (replies, publishes, ack/reject) so a test can
check the settlement of each delivery without a broker. FakeWire decodes what the
outbox writes with pamqp, the marshaller aiormq itself uses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aiormq.abc import ChannelFrame
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader


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


class FakeWire:
    """An aiormq channel as the outbox uses it: its write queue decodes each frame
    buffer at once; the broker side confirms each publish (or nacks it, `nack`)."""

    def __init__(self, published: list[Published], number: int = 1,
                 max_content_size: int = 131064) -> None:
        self.published = published
        self.number = number
        self.max_content_size = max_content_size
        self.lock_ = asyncio.Lock()
        setattr(self, "_Channel__lock", self.lock_)  # noqa: B010 - aiormq's private name
        self.delivery_tag = 0
        self.confirmations: dict[int, asyncio.Future[Any]] = {}
        self.is_closed = False
        self.nack = False
        self.hold_confirms = False
        """Leave publishes unconfirmed (a test settles them with `confirm_all`)."""
        self.deliveries: dict[int, FakeMessage] = {}
        self.writes: list[bytes] = []
        """Each write-queue item's payload: one socket write each."""
        self.frames: list[Any] = []
        self._published_tags = 0
        self._partial: list[Any] = []
        self.write_queue = self

    @property
    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        """As aiormq's: the channel's lock, refused once the channel is closed."""
        if self.is_closed:
            raise aio_pika.exceptions.ChannelInvalidStateError("closed")
        async with self.lock_:
            yield

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def full(self) -> bool:
        return False

    async def put(self, item: ChannelFrame) -> None:
        self.put_nowait(item)

    def put_nowait(self, item: ChannelFrame) -> None:
        self.writes.append(item.payload)
        data = item.payload
        while data:
            used, channel, value = frame.unmarshal(data)
            assert channel == self.number
            data = data[used:]
            self.frames.append(value)
            self._on_frame(value)

    def _on_frame(self, value: Any) -> None:
        if isinstance(value, commands.Basic.Ack | commands.Basic.Reject):
            msg = self.deliveries.get(value.delivery_tag)
            if msg is not None:
                    msg.settle("ack" if isinstance(value, commands.Basic.Ack) else "reject",
                           getattr(value, "requeue", False))
            return
        self._partial.append(value)
        publish, *rest = self._partial
        assert isinstance(publish, commands.Basic.Publish)
        if not rest or not isinstance(rest[0], ContentHeader):
            return
        header, bodies = rest[0], rest[1:]
        body = b"".join(b.value for b in bodies if isinstance(b, ContentBody))
        if len(body) < header.body_size:
            return
        self._partial = []
        props = header.properties
        self.published.append(Published(publish.exchange, publish.routing_key, aio_pika.Message(
            body, content_type=props.content_type, headers=props.headers,
            delivery_mode=props.delivery_mode, correlation_id=props.correlation_id)))
        self._published_tags += 1
        if not self.hold_confirms:
            self._confirm(self._published_tags)

    def confirm_all(self) -> None:
        for tag in sorted(self.confirmations):
            self._confirm(tag)

    def _confirm(self, tag: int) -> None:
        confirm = self.confirmations.pop(tag)
        if self.nack:
            confirm.set_exception(aio_pika.exceptions.DeliveryError(
                None, commands.Basic.Nack(delivery_tag=tag)))  # type: ignore[arg-type]
        else:
            confirm.set_result(commands.Basic.Ack(delivery_tag=tag))

    def close(self) -> None:
        """What aiormq does to the channel's futures when it closes."""
        self.is_closed = True
        for confirm in self.confirmations.values():
            confirm.set_exception(aio_pika.exceptions.ChannelInvalidStateError("closed"))
        self.confirmations.clear()


@dataclass
class FakeChannel:
    published: list[Published] = field(default_factory=list)
    is_closed: bool = False
    wire: FakeWire = field(init=False)
    _tags: int = 0

    def __post_init__(self) -> None:
        self.wire = FakeWire(self.published)

    def deliver(self, msg: FakeMessage) -> AbstractIncomingMessage:
        """`msg` as delivered on this channel (a delivery tag of its own)."""
        self._tags += 1
        msg.delivery_tag, msg.wire = self._tags, self.wire
        self.wire.deliveries[self._tags] = msg
        return msg.as_message()

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
    delivery_tag: int | None = None
    wire: FakeWire | None = None
    user_id: str | None = None

    @property
    def channel(self) -> FakeWire:
        assert self.wire is not None, "deliver it with FakeChannel.deliver"
        if self.wire.is_closed:
            raise aio_pika.exceptions.ChannelInvalidStateError("closed")
        return self.wire

    def settle(self, how: str, requeue: bool = False) -> None:
        assert self.settled is None, f"settled twice ({self.settled}, then {how})"
        assert requeue is False
        self.settled = how

    def as_message(self) -> AbstractIncomingMessage:
        return cast(AbstractIncomingMessage, self)


def no_queue() -> AbstractQueue:
    """The consumer's queue is used only by start/stop, which these tests do not call."""
    return cast(AbstractQueue, object())
