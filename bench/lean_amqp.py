"""The event benchmarks' AMQP ends: a minimal 0-9-1 consumer and publisher on an asyncio Protocol.

The subscriber must not be what limits the figure. aiormq's consumer costs about
0.09 ms of CPU per message here (a task, a DeliveredMessage and pamqp objects per
frame): at 10,000 events/s that is most of a core on a 2-core machine that also runs
the broker and the daemon. This one uses pamqp only for the handshake and parses
deliveries by hand (basic.deliver method frame, content header, body frames), with
`no_ack` (the broker pushes without credit), and stamps each message with the
`time.perf_counter()` of the read that completed it.

The publisher is the broker-ceiling baseline: the same message size, exchange,
properties and confirms as vnetd's events, but prebuilt and written in batches of
`batch` with `window` unconfirmed, the broker's acks parsed by hand (multiple=True
settles many): about as little CPU per message as a client can spend, so the
broker's own cost is what limits it.

`python -m bench.lean_amqp consume URL QUEUE SECONDS_IDLE` consumes from an existing
queue (a second subscriber process on the same queue shows whether the subscriber is
the bottleneck) and prints `[[at, body], ...]` as JSON once nothing arrived for
SECONDS_IDLE; `python -m bench.lean_amqp publish URL KEY BODY_BYTES COUNT` publishes
and prints {"t0", "t1", "cpu_s"}.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from typing import Any
from urllib.parse import unquote, urlparse

from pamqp import commands, frame
from pamqp.base import Frame

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
_HEAD = struct.Struct(">BHI")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
DELIVER = _U32.pack((60 << 16) | 60)  # basic.deliver's class and method ids
ACK = _U32.pack((60 << 16) | 80)  # basic.ack (a publisher confirm)
NACK = _U32.pack((60 << 16) | 120)  # basic.nack
CHANNEL = 1


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.replies: asyncio.Queue[Frame] = asyncio.Queue()
        self.received: list[tuple[float, bytes]] = []
        self.streaming = False
        self._body: list[bytes] = []
        self._left = -1  # body bytes still to come; -1: waiting for a content header
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acked = 0
        """Highest delivery tag the broker confirmed (publisher side)."""
        self.on_ack: asyncio.Event = asyncio.Event()
        self.nacked = 0
        """Publishes the broker refused (basic.nack)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        now = time.perf_counter()
        pos = 0
        n = len(buf)
        while pos + 7 <= n:
            kind, _ch, size = _HEAD.unpack_from(buf, pos)
            end = pos + 7 + size + 1
            if end > n:
                break
            start = pos + 7
            if kind == FRAME_BODY:
                self._body.append(bytes(buf[start:start + size]))
                self._left -= size
                if self._left <= 0:
                    self._deliver(now)
            elif kind == FRAME_HEADER:
                (self._left,) = _U64.unpack_from(buf, start + 4)
                self._header(buf, start)
                if self._left == 0:
                    self._deliver(now)
            elif kind == FRAME_METHOD and buf[start:start + 4] == DELIVER:
                self._body.clear()
                self._delivery(buf, start + 4)
            elif kind == FRAME_METHOD and buf[start:start + 4] in (ACK, NACK):
                (tag,) = _U64.unpack_from(buf, start + 4)
                self._confirmed(tag, bool(buf[start + 12] & 1), buf[start:start + 4] == ACK)
            elif kind != FRAME_HEARTBEAT:
                _, _, value = frame.unmarshal(bytes(buf[pos:end]))
                self.replies.put_nowait(value)  # type: ignore[arg-type]
            pos = end
        del buf[:pos]
        self._read_done()

    def _delivery(self, buf: bytearray, pos: int) -> None:
        """A basic.deliver's arguments start at `pos` (for subclasses)."""

    def _header(self, buf: bytearray, start: int) -> None:
        """A content header's payload starts at `start` (for subclasses)."""

    def _confirmed(self, tag: int, multiple: bool, ok: bool) -> None:
        if not ok:
            self.nacked += 1
            return
        # Tags are confirmed in order on one channel here: the highest is enough.
        self.acked = max(self.acked, tag)
        self.on_ack.set()

    def _read_done(self) -> None:
        """Every complete frame of one read was handled (for subclasses)."""

    def _deliver(self, now: float) -> None:
        self.received.append((now, b"".join(self._body)))
        self._body.clear()
        self._left = -1


class LeanSubscriber:
    """Consumes `queue` (or an exclusive queue bound to `<host_id>.#` on `exchange`)."""

    def __init__(self, amqp_url: str, host_id: str = "", *, queue: str | None = None,
                 exchange: str = "vnetd.events") -> None:
        self.url = amqp_url
        self.host_id = host_id
        self.queue = queue
        self.exchange = exchange
        self._proto: _Protocol | None = None
        self.frame_max = 131072

    protocol: type[_Protocol] = _Protocol
    """What parses the connection's frames (LeanResponder's parses jobs)."""

    @property
    def received(self) -> list[tuple[float, bytes]]:
        return self._proto.received if self._proto is not None else []

    def _send(self, value: Frame, channel: int = CHANNEL) -> None:
        if self._proto is None or self._proto.transport is None:
            raise RuntimeError("not connected")
        self._proto.transport.write(frame.marshal(value, channel))

    async def _expect(self, kind: type[Frame]) -> Any:
        if self._proto is None:
            raise RuntimeError("not connected")
        value = await asyncio.wait_for(self._proto.replies.get(), 30)
        if not isinstance(value, kind):
            raise RuntimeError(f"AMQP: expected {kind.__name__}, got {value!r}")
        return value

    async def __aenter__(self) -> LeanSubscriber:
        queue = await self._open()
        if queue is None:
            self._send(commands.Queue.Declare(exclusive=True, auto_delete=True))
            queue = (await self._expect(commands.Queue.DeclareOk)).queue
            self._send(commands.Queue.Bind(queue=queue, exchange=self.exchange,
                                           routing_key=f"{self.host_id}.#"))
            await self._expect(commands.Queue.BindOk)
        self._send(commands.Basic.Consume(queue=queue, no_ack=True))
        await self._expect(commands.Basic.ConsumeOk)
        return self

    async def _open(self) -> str | None:
        """Connection and channel 1; returns the queue to consume (None: make one)."""
        u = urlparse(self.url)
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(self.protocol, u.hostname or "127.0.0.1",
                                                u.port or 5672)
        self._proto = proto
        if proto.transport is None:
            raise RuntimeError("not connected")
        proto.transport.write(b"AMQP\x00\x00\x09\x01")
        await self._expect(commands.Connection.Start)
        user, password = unquote(u.username or "guest"), unquote(u.password or "guest")
        self._send(commands.Connection.StartOk(response=f"\0{user}\0{password}"), 0)
        tune = await self._expect(commands.Connection.Tune)
        self.frame_max = int(tune.frame_max) or 131072
        self._send(commands.Connection.TuneOk(channel_max=tune.channel_max,
                                              frame_max=self.frame_max, heartbeat=0), 0)
        self._send(commands.Connection.Open(virtual_host=unquote(u.path[1:] or "/") or "/"), 0)
        await self._expect(commands.Connection.OpenOk)
        self._send(commands.Channel.Open())
        await self._expect(commands.Channel.OpenOk)
        return self.queue

    async def __aexit__(self, *exc: object) -> None:
        proto = self._proto
        if proto is None or proto.transport is None:
            return
        proto.transport.close()
        await asyncio.wait_for(asyncio.shield(proto.closed), 5)


class LeanPublisher(LeanSubscriber):
    """Publishes prebuilt messages with confirms (see the module's docstring)."""

    async def __aenter__(self) -> LeanPublisher:
        await self._open()
        self._send(commands.Confirm.Select())
        await self._expect(commands.Confirm.SelectOk)
        return self

    async def publish(self, routing_key: str, body: bytes, count: int, *, window: int = 512,
                      batch: int = 256) -> tuple[float, float]:
        """Publish `count` copies of `body` (persistent, like vnetd's); returns when the
        first was written and when the last was confirmed (perf_counter)."""
        from vnetd.events import frames

        proto = self._proto
        if proto is None or proto.transport is None:
            raise RuntimeError("not connected")
        t0 = time.perf_counter()
        sent = 0
        while sent < count:
            room = window - (sent - proto.acked)
            if room <= 0:
                proto.on_ack.clear()
                await proto.on_ack.wait()
                continue
            k = min(room, batch, count - sent)
            proto.transport.write(b"".join(
                frames.publish(CHANNEL, self.exchange, routing_key,
                               "application/cloudevents+json", 2, f"bench-{sent + i}", body,
                               self.frame_max - 8) for i in range(k)))
            sent += k
            await asyncio.sleep(0)
        while proto.acked < count:
            proto.on_ack.clear()
            await proto.on_ack.wait()
        return t0, time.perf_counter()


async def _consume(url: str, queue: str, idle: float) -> list[tuple[float, bytes]]:
    async with LeanSubscriber(url, queue=queue) as sub:
        print("ready", flush=True)
        seen = -1
        deadline = time.perf_counter() + 600
        while (not sub.received or len(sub.received) != seen) and time.perf_counter() < deadline:
            seen = len(sub.received)
            await asyncio.sleep(idle)
        return list(sub.received)


async def _publish(url: str, key: str, size: int, count: int) -> dict[str, float]:
    async with LeanPublisher(url) as pub:
        t0, t1 = await pub.publish(key, b"x" * size, count, window=2048)
    return {"t0": t0, "t1": t1, "cpu_s": time.process_time()}


def _cli() -> None:
    if sys.argv[1] == "consume":
        got = asyncio.run(_consume(sys.argv[2], sys.argv[3], float(sys.argv[4])))
        json.dump([[at, body.decode()] for at, body in got], sys.stdout)
    else:
        json.dump(asyncio.run(_publish(sys.argv[2], sys.argv[3], int(sys.argv[4]),
                                       int(sys.argv[5]))), sys.stdout)


if __name__ == "__main__":
    _cli()
