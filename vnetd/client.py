"""An async client for the vnetd contract: what vnetctl uses and a control plane imports.

It speaks only the documented contract (docs/contract.md): JSON jobs to the
`vnetd.commands` exchange, replies on a private queue matched by correlation id.

Given several broker URLs (a cluster's nodes) it connects to the first that
answers and, when that node goes away, to the next (vnetd.amqp.connection).
Its reply queue is exclusive and auto-delete, never a quorum queue: it lives on
the node the client is connected to and is declared again after a failover
under the same name. A reply that was on its way during a failover is lost with
the old queue: `call(..., resend_every=S)` sends the job again, with the same
message_id (the daemon answers a resent message_id from its dedupe cache
without redoing the work) and the same correlation id, until one reply arrives.

Jobs are published on a channel of their own, and a publish the broker nacks
replaces that channel. Seen in bench/cluster.py's kill rounds on RabbitMQ
3.10: a channel whose first publish to a quorum queue comes while the queue's
record still names a dead node as leader (the minute around a leader loss)
has that node first in its per-channel server list, asks it for the queue's
version, gets `badrpc nodedown` and nacks the publish; it never looks again
(rabbit_fifo_client keeps that state for the channel's life), so every
resend on that channel is nacked until the dead node returns. A new channel
reads the queue's record afresh, which names the new leader once one is
elected.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue
from aio_pika.abc import AbstractRobustConnection as Connection
from yarl import URL

from vnetd.amqp.connection import address_of, connect_cluster

COMMANDS_EXCHANGE = "vnetd.commands"
RENEW_INTERVAL = 0.5


@dataclass(frozen=True)
class Reply:
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    host_id: str | None = None

    @property
    def error_code(self) -> str | None:
        return None if self.error is None else str(self.error.get("code"))


class CallTimeout(Exception):
    """No reply arrived in time. The job may still run: resend it with the same message_id."""


class VnetClient:
    def __init__(self, url: str | Sequence[str], *, ssl_context: ssl.SSLContext | None = None,
                 reconnect_interval: float = 0.5, user_id: str | None = None) -> None:
        self.urls = split_urls(url)
        self.url = self.urls[0]
        # The sender's login as the `user_id` property: RabbitMQ refuses a message
        # whose user_id is not the connection's user, so a daemon with
        # `allowed_senders` can trust it. Default: the URL's user (none for a
        # login by client certificate: pass it then).
        self.user_id = user_id if user_id is not None else (URL(self.url).user or None)
        self.ssl_context = ssl_context
        self.reconnect_interval = reconnect_interval
        self._connection: Connection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._publisher: AbstractChannel | None = None
        self._publisher_generation = 0
        self._publisher_renewed_at = 0.0
        self._renewal: asyncio.Task[None] | None = None
        self.publisher_renewals = 0
        """How many times a nacked publish replaced the publishing channel."""
        self._queue: AbstractQueue | None = None
        self._waiting: dict[str, tuple[asyncio.Future[Reply] | None, list[Reply]]] = {}

    async def __aenter__(self) -> VnetClient:
        await self.connect()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def connect(self) -> None:
        self._connection = await connect_cluster(
            self.urls, reconnect_interval=self.reconnect_interval, name="vnetd-client",
            ssl_context=self.ssl_context)
        self._channel = await self._connection.channel(publisher_confirms=True)
        self._queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await self._queue.consume(self._on_reply, no_ack=True)
        await self._open_publisher()

    async def _open_publisher(self) -> None:
        """The channel jobs are published on (its confirms say the job is queued)."""
        if self._connection is None:
            raise RuntimeError("VnetClient: call connect() first")
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(
            COMMANDS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        self._publisher = channel
        self._publisher_generation += 1

    async def _renew_publisher(self, generation: int) -> None:
        """Replace the publishing channel after a nack on it (see the module's
        docstring); once for all the calls nacked on that channel, and at most
        every RENEW_INTERVAL: right after a leader loss a new channel can still
        be given the dead node, until the election is over."""
        if generation != self._publisher_generation:
            return  # a nack of a channel already replaced
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._publisher_renewed_at + RENEW_INTERVAL - loop.time()))
        old = self._publisher
        try:
            await self._open_publisher()
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError):
            return  # the connection is away: its own reconnect comes first
        finally:
            self._publisher_renewed_at = loop.time()
        self.publisher_renewals += 1
        if old is not None:
            with contextlib.suppress(Exception):  # it is being dropped either way
                await old.close()

    @property
    def node(self) -> str | None:
        """host:port of the broker node the client is connected to."""
        url = getattr(self._connection, "connected_url", None)
        return None if url is None else address_of(url)

    async def close(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        entry = self._waiting.get(message.correlation_id or "")
        if entry is None:
            return  # a late reply to a call that already timed out
        try:
            body = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            return
        headers = message.headers or {}
        reply = Reply(ok=bool(body.get("ok")), result=body.get("result") or {},
                      error=body.get("error"), host_id=str(headers.get("host_id") or "") or None)
        future, gathered = entry
        gathered.append(reply)
        if future is not None and not future.done():
            future.set_result(reply)

    async def _publish(self, routing_key: str, op: str, args: dict[str, Any] | None,
                       correlation_id: str, message_id: str | None) -> None:
        if self._exchange is None or self._queue is None:
            raise RuntimeError("VnetClient: call connect() first")
        generation = self._publisher_generation
        try:
            await self._exchange.publish(
                aio_pika.Message(
                    orjson.dumps({"op": op, "args": args or {}}),
                    content_type="application/json",
                    correlation_id=correlation_id,
                    message_id=message_id or str(uuid.uuid4()),
                    reply_to=self._queue.name,
                    user_id=self.user_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=routing_key,
            )
        except aio_pika.exceptions.DeliveryError:
            # Nacked: not queued. The caller resends (same message_id); a new channel
            # is opened meanwhile, in a task of its own: not cut short by a caller's
            # timeout, and once for all the calls nacked on this channel.
            if self._renewal is None or self._renewal.done():
                self._renewal = asyncio.create_task(self._renew_publisher(generation))
            raise

    async def call(self, host_id: str, op: str, args: dict[str, Any] | None = None, *,
                   timeout: float = 30.0, message_id: str | None = None,
                   resend_every: float | None = None) -> Reply:
        """Send one job to one host and wait for its reply.

        With `resend_every`, a job without a reply after that long (or whose
        publish failed: the broker node went away) is sent again with the same
        message_id until `timeout`; the first reply is returned, later copies
        are dropped."""
        correlation_id = str(uuid.uuid4())
        message_id = message_id or str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._waiting[correlation_id] = (future, [])
        deadline = loop.time() + timeout
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                wait = left if resend_every is None else min(left, resend_every)
                try:
                    # Bounded: a publish can hang while the connection is away (aio-pika #636).
                    await asyncio.wait_for(self._publish(
                        f"host.{host_id}", op, args, correlation_id, message_id), wait)
                except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError,
                        RuntimeError):
                    if resend_every is None:
                        raise
                    await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
                    continue
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future),
                                                  max(0.0, min(wait, deadline - loop.time())))
                if resend_every is None:
                    raise TimeoutError
        except TimeoutError as exc:
            raise CallTimeout(f"no reply from {host_id} to {op} within {timeout:g}s") from exc
        finally:
            self._waiting.pop(correlation_id, None)

    async def broadcast(self, op: str, args: dict[str, Any] | None = None, *,
                        timeout: float = 3.0) -> list[Reply]:
        """Send a job to every host (routing key hosts.all); gather replies until timeout."""
        correlation_id = str(uuid.uuid4())
        gathered: list[Reply] = []
        self._waiting[correlation_id] = (None, gathered)
        try:
            await self._publish("hosts.all", op, args, correlation_id, None)
            await asyncio.sleep(timeout)
            return list(gathered)
        finally:
            self._waiting.pop(correlation_id, None)


def split_urls(url: str | Sequence[str]) -> list[str]:
    """Broker URLs from one string (comma-separated allowed) or a list of them."""
    items = [url] if isinstance(url, str) else list(url)
    urls = [u.strip() for item in items for u in item.split(",") if u.strip()]
    if not urls:
        raise ValueError("no broker URL given")
    return urls
