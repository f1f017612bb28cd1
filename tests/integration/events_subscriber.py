"""A subscriber written against the documented event contract only (no vnetd imports).

Binds a queue to the topic exchange ``vnetd.events`` with ``<host_id>.#``, parses
structured CloudEvents, and keeps a view of the host's links the way
docs/contract.md tells a subscriber to: snapshot, then apply only events of the
same epoch with a larger sequence; on a gap, a new epoch or a ``host.resync``
with a lost range, snapshot again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

EXCHANGE = "vnetd.events"


@dataclass
class Received:
    event: dict[str, Any]
    at: float  # time.perf_counter() at receipt
    routing_key: str
    content_type: str | None

    @property
    def type(self) -> str:
        return str(self.event["type"]).removeprefix("io.vnetd.")

    @property
    def seq(self) -> int:
        return int(self.event["sequence"])

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.event["data"])


@dataclass
class Subscriber:
    url: str
    host_id: str
    queue_name: str = ""
    """'' = exclusive server-named queue; a name = durable queue that survives a broker restart."""
    received: list[Received] = field(default_factory=list)
    _conn: AbstractConnection | None = None
    _ch: AbstractChannel | None = None
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Subscriber:
        self._conn = await aio_pika.connect_robust(self.url)
        self._ch = await self._conn.channel()
        await self._ch.set_qos(prefetch_count=1000)
        ex = await self._ch.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        if self.queue_name:
            q = await self._ch.declare_queue(self.queue_name, durable=True)
        else:
            q = await self._ch.declare_queue("", exclusive=True)
        await q.bind(ex, routing_key=f"{self.host_id}.#")
        await q.consume(self._on_message)
        self._queue = q
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.queue_name and self._ch is not None and not self._ch.is_closed:
            with contextlib.suppress(Exception):
                await self._queue.delete(if_unused=False, if_empty=False)
        if self._conn is not None:
            await self._conn.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        now = time.perf_counter()
        event = json.loads(message.body)
        self.received.append(Received(event, now, message.routing_key or "",
                                      message.content_type))
        await message.ack()
        self._new.set()

    async def wait_for(self, pred: Callable[[Received], bool], timeout: float = 10.0,
                       start: int = 0) -> Received:
        """The first event from index `start` on that matches `pred`."""
        deadline = asyncio.get_running_loop().time() + timeout
        i = start
        while True:
            while i < len(self.received):
                if pred(self.received[i]):
                    return self.received[i]
                i += 1
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                seen = [(r.seq, r.type, r.event.get("subject")) for r in self.received[start:]]
                raise TimeoutError(f"no matching event within {timeout}s; seen {seen[-30:]}")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), left)

    async def wait_type(self, type_: str, subject: str | None = None, timeout: float = 10.0,
                        start: int = 0) -> Received:
        return await self.wait_for(
            lambda r: r.type == type_ and (subject is None or r.event.get("subject") == subject),
            timeout, start)

    async def quiet(self, seconds: float = 0.5, timeout: float = 60.0) -> None:
        """Wait until no event arrived for `seconds`."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            n = len(self.received)
            if n == last:
                return
            last = n
            await asyncio.sleep(seconds)
        raise TimeoutError("events kept coming")


@dataclass
class LinkFollower:
    """The documented algorithm: snapshot + later events, resnapshot on a gap."""

    links: dict[int, dict[str, Any]] = field(default_factory=dict)
    epoch: str | None = None
    sequence: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)
    resyncs: list[dict[str, Any]] = field(default_factory=list)
    needs_snapshot: bool = True

    def load_snapshot(self, result: dict[str, Any]) -> None:
        self.links = {link["index"]: link for link in result["links"]}
        self.epoch = result["events"]["epoch"]
        self.sequence = int(result["events"]["sequence"])
        self.needs_snapshot = False

    def apply(self, event: dict[str, Any]) -> None:
        seq = int(event["sequence"])
        if event["epoch"] != self.epoch:
            self.needs_snapshot = True  # a restart: only a snapshot tells the state
            return
        if seq <= self.sequence:
            return  # already in the snapshot, or a duplicate
        if seq != self.sequence + 1:
            self.gaps.append((self.sequence + 1, seq - 1))
            self.needs_snapshot = True
        self.sequence = seq
        kind = str(event["type"]).removeprefix("io.vnetd.")
        data = event["data"]
        if kind in ("link.added", "link.changed"):
            self.links[data["index"]] = {k: v for k, v in data.items()
                                         if k not in ("changes", "previous")}
        elif kind == "link.removed":
            self.links.pop(data["index"], None)
        elif kind == "host.resync":
            self.resyncs.append(data)
            if "lost" in data:
                self.needs_snapshot = True
