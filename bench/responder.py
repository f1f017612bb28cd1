"""The transport's limit: no-op responders that consume and answer jobs as vnetd does.

Each consumes the host queue vnetd would (vnetd's declare: quorum queue, delivery
limit, dead-letter exchange, bound to `host.<id>` and `hosts.all`), with vnetd's
prefetch on a confirm-mode channel, and answers every job with a reply of the size
and shape of vnetd's (default exchange, routing key `reply_to`, content type,
`host_id` header, not persistent, the job's correlation_id; the body is given, the
runner passes a real `tap.ensure` reply of vnetd's); it acks the job only once the
broker confirmed its reply, as vnetd does. What it leaves out is the work.

Two ways, as labelled in the results:

- `lean`, the floor (the goal's baseline): the frames vnetd writes, built by
  vnetd/amqp/wire.py (replies and acks), on bench/lean_amqp.py's connection, whose
  protocol parses the deliveries and confirms by hand; everything due after one read
  goes out in one write, as vnetd's outbox writes once per loop pass.
- `aio-pika`: the responder of before, an aio-pika consumer publishing each reply
  through aio-pika (a Message, pamqp's marshaller, a drain wait per publish) and acking
  through it. It costs several times the lean one's CPU per job, more than vnetd's own
  AMQP path does now: a ratio against it flatters vnetd.

Run as its own process (as the daemon is):
`python -m bench.responder lean|aio-pika URL HOST_ID PREFETCH REPLY_BODY`; it prints
READY once it consumes, and ends on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import struct
import sys
from typing import cast

from pamqp import commands

from bench.lean_amqp import CHANNEL, LeanSubscriber, _Protocol
from vnetd.amqp import topology, wire
from vnetd.config.settings import AmqpSettings

WAYS = ("lean", "aio-pika")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
# basic properties before reply_to, in wire order (AMQP 0-9-1, 4.2.6.1)
_CONTENT_TYPE, _CONTENT_ENCODING, _HEADERS, _DELIVERY_MODE, _PRIORITY = (
    0x8000, 0x4000, 0x2000, 0x1000, 0x0800)
_CORRELATION_ID, _REPLY_TO = 0x0400, 0x0200


def reply_props(buf: bytes | bytearray, start: int) -> tuple[str | None, str | None]:
    """(reply_to, correlation_id) of the content header whose payload starts at `start`."""
    (flags,) = _U16.unpack_from(buf, start + 12)
    pos = start + 14
    if flags & _CONTENT_TYPE:
        pos += 1 + buf[pos]
    if flags & _CONTENT_ENCODING:
        pos += 1 + buf[pos]
    if flags & _HEADERS:
        pos += 4 + _U32.unpack_from(buf, pos)[0]
    if flags & _DELIVERY_MODE:
        pos += 1
    if flags & _PRIORITY:
        pos += 1
    correlation_id = None
    if flags & _CORRELATION_ID:
        n = buf[pos]
        correlation_id = bytes(buf[pos + 1:pos + 1 + n]).decode()
        pos += 1 + n
    reply_to = None
    if flags & _REPLY_TO:
        n = buf[pos]
        reply_to = bytes(buf[pos + 1:pos + 1 + n]).decode()
    return reply_to, correlation_id


class JobProtocol(_Protocol):
    """Answers every delivery with `reply` (frames by `frames`), acks it once the reply
    is confirmed; what a read made due is written at its end, in one write."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: wire.ReplyFrames | None = None
        self.reply = b""
        self.jobs = 0
        self._tag = 0
        self._props: tuple[str | None, str | None] = (None, None)
        self._seq = 0
        """Replies published on this channel (their confirms' delivery tags)."""
        self._low = 1
        """No reply below this tag is still unconfirmed."""
        self._unconfirmed: dict[int, int] = {}
        """A reply's tag -> the delivery tag of the job it answers."""
        self._acks: list[bytes] = []
        self._publishes: list[bytes] = []

    def _delivery(self, buf: bytearray, pos: int) -> None:
        # consumer tag (short string), then the delivery tag
        (self._tag,) = _U64.unpack_from(buf, pos + 1 + buf[pos])

    def _header(self, buf: bytearray, start: int) -> None:
        self._props = reply_props(buf, start)

    def _deliver(self, now: float) -> None:
        self._body.clear()
        self._left = -1
        self.jobs += 1
        reply_to, correlation_id = self._props
        if not reply_to or self.frames is None:  # nothing to confirm: acked at once
            self._acks.append(wire.ack(CHANNEL, self._tag))
            return
        self._seq += 1
        self._unconfirmed[self._seq] = self._tag
        self._publishes.append(self.frames.publish(reply_to, correlation_id, self.reply))

    def _confirmed(self, tag: int, multiple: bool, ok: bool) -> None:
        for seq in range(self._low, tag + 1) if multiple else (tag,):
            job = self._unconfirmed.pop(seq, None)
            if job is None:
                continue
            if ok:
                self._acks.append(wire.ack(CHANNEL, job))
            else:  # as in vnetd: no ack after a refused reply (redelivered on a close)
                self.nacked += 1
        while self._low <= self._seq and self._low not in self._unconfirmed:
            self._low += 1

    def _read_done(self) -> None:
        if (self._acks or self._publishes) and self.transport is not None:
            self.transport.write(b"".join([*self._acks, *self._publishes]))
            self._acks.clear()
            self._publishes.clear()


class LeanResponder(LeanSubscriber):
    protocol = JobProtocol

    def __init__(self, amqp_url: str, host_id: str, prefetch: int, reply: bytes) -> None:
        super().__init__(amqp_url, host_id)
        self.prefetch = prefetch
        self.reply = reply

    async def __aenter__(self) -> LeanResponder:
        await self._open()
        proto = cast(JobProtocol, self._proto)
        proto.reply = self.reply
        proto.frames = wire.ReplyFrames(CHANNEL, "application/json", {"host_id": self.host_id},
                                        1, self.frame_max - 8)
        self._send(commands.Basic.Qos(prefetch_count=self.prefetch))
        await self._expect(commands.Basic.QosOk)
        self._send(commands.Confirm.Select())
        await self._expect(commands.Confirm.SelectOk)
        queue = await self._declare()
        self._send(commands.Basic.Consume(queue=queue, no_ack=False))
        await self._expect(commands.Basic.ConsumeOk)
        return self

    async def _declare(self) -> str:
        """The exchanges, host queue and bindings of vnetd's topology.declare (the
        retry queue and the dead-letter queue left out: no job goes there)."""
        s = AmqpSettings()
        for name, kind in ((topology.COMMANDS_EXCHANGE, "topic"),
                           (topology.DEAD_EXCHANGE, "fanout")):
            self._send(commands.Exchange.Declare(exchange=name, exchange_type=kind,
                                                 durable=True))
            await self._expect(commands.Exchange.DeclareOk)
        queue = topology.host_queue_name(self.host_id)
        self._send(commands.Queue.Declare(queue=queue, durable=True, arguments={
            "x-queue-type": "quorum", "x-delivery-limit": s.delivery_limit,
            "x-dead-letter-exchange": topology.DEAD_EXCHANGE,
            "x-quorum-initial-group-size": s.quorum_initial_group_size}))
        await self._expect(commands.Queue.DeclareOk)
        for key in (topology.host_routing_key(self.host_id), topology.BROADCAST_KEY):
            self._send(commands.Queue.Bind(queue=queue, exchange=topology.COMMANDS_EXCHANGE,
                                           routing_key=key))
            await self._expect(commands.Queue.BindOk)
        return queue


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    await stop.wait()


async def lean(url: str, host_id: str, prefetch: int, reply: bytes) -> None:
    async with LeanResponder(url, host_id, prefetch, reply):
        await _until_signal()


async def with_aio_pika(url: str, host_id: str, prefetch: int, reply: bytes) -> None:
    import aio_pika
    from aio_pika.abc import AbstractIncomingMessage

    s = AmqpSettings()
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=prefetch)
    topo = await topology.declare(channel, host_id, s.delivery_limit,
                                  s.quorum_initial_group_size)

    async def on_message(message: AbstractIncomingMessage) -> None:
        if message.reply_to:
            await channel.default_exchange.publish(
                aio_pika.Message(reply, content_type="application/json",
                                 correlation_id=message.correlation_id,
                                 headers={"host_id": host_id},
                                 delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
                routing_key=message.reply_to, mandatory=False)
        await message.ack()

    await topo.queue.consume(on_message, no_ack=False)
    await _until_signal()
    await connection.close()


if __name__ == "__main__":
    way, url_, host_, prefetch_, reply_ = sys.argv[1:6]
    run = {"lean": lean, "aio-pika": with_aio_pika}[way]
    asyncio.run(run(url_, host_, int(prefetch_), reply_.encode()))
