"""A minimal RPC client written against the documented AMQP contract only.

It imports nothing from ``vnetd``: if it works, any foreign client can talk to vnetd.

Contract: publish JSON ``{"op": op, "args": {...}}`` (content_type application/json) to the
topic exchange ``vnetd.commands`` with routing key ``host.<host_id>``, ``reply_to`` = the
client's own reply queue, ``correlation_id`` = a uuid, ``message_id`` = a uuid (the
daemon's dedupe key). The reply is JSON ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": {"code": ..., "message": ..., "details": {...}}}``.

    async with RawRpc(url) as rpc:
        reply = await rpc.call("h1", "host.health", {})
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

EXCHANGE = "vnetd.commands"


def routing_key(host_id: str) -> str:
    return f"host.{host_id}"


class RpcTimeoutError(TimeoutError):
    """No reply arrived in time (replies are best-effort: the job may still run)."""


class UnroutableError(RuntimeError):
    """The broker returned the message: no queue is bound for this host's routing key."""


@dataclass
class Reply:
    body: bytes
    content_type: str | None
    correlation_id: str | None
    message_id: str | None
    headers: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body)
        if not isinstance(data, dict):
            raise ValueError(f"reply is not a JSON object: {self.body!r}")
        return data


class RawRpc:
    def __init__(self, url: str, *, exchange: str = EXCHANGE) -> None:
        self.url = url
        self.exchange_name = exchange
        self._conn: AbstractConnection | None = None
        self._reply_ch: AbstractChannel | None = None
        self._pub_ch: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._reply_queue: AbstractQueue | None = None
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self.stray_replies: list[Reply] = []  # replies nobody waited for (late or unknown)

    # ------------------------------------------------------------ lifecycle
    async def connect(self) -> RawRpc:
        self._conn = await aio_pika.connect(self.url)
        self._reply_ch = await self._conn.channel()
        self._reply_queue = await self._reply_ch.declare_queue("", exclusive=True, auto_delete=True)
        await self._reply_queue.consume(self._on_reply, no_ack=True)
        return self

    async def close(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def __aenter__(self) -> RawRpc:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def reply_queue(self) -> str:
        assert self._reply_queue is not None, "not connected"
        return self._reply_queue.name

    async def _publisher(self) -> AbstractExchange:
        """The publishing channel, reopened if the broker closed it (e.g. 404 exchange)."""
        assert self._conn is not None, "not connected"
        if self._pub_ch is None or self._pub_ch.is_closed or self._exchange is None:
            if self._pub_ch is not None and not self._pub_ch.is_closed:
                await self._pub_ch.close()
            self._pub_ch = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
            # passive: the daemon owns the exchange; a missing one raises ChannelNotFoundEntity
            self._exchange = await self._pub_ch.declare_exchange(self.exchange_name, passive=True)
        return self._exchange

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        reply = Reply(
            body=message.body,
            content_type=message.content_type,
            correlation_id=message.correlation_id,
            message_id=message.message_id,
            headers=dict(message.headers or {}),
        )
        fut = self._pending.pop(message.correlation_id or "", None)
        if fut is None or fut.done():
            self.stray_replies.append(reply)
        else:
            fut.set_result(reply)

    # ------------------------------------------------------------ publishing
    async def publish(
        self,
        host_id: str,
        body: bytes,
        content_type: str | None = "application/json",
        *,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        routing_key_override: str | None = None,
        expiration: float | None = None,
    ) -> str:
        """Publish one message (confirmed by the broker); returns its message_id."""
        message_id = message_id or str(uuid.uuid4())
        exchange = await self._publisher()
        msg = aio_pika.Message(
            body=body,
            content_type=content_type,
            reply_to=reply_to,
            correlation_id=correlation_id,
            message_id=message_id,
            headers=dict(headers or {}),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            expiration=expiration,
        )
        rk = routing_key_override if routing_key_override is not None else routing_key(host_id)
        try:
            await exchange.publish(msg, routing_key=rk, mandatory=True)
        except aio_pika.exceptions.DeliveryError as exc:
            raise UnroutableError(f"no queue bound for routing key {rk!r}") from exc
        return message_id

    async def publish_no_reply(
        self,
        host_id: str,
        op: str | None = None,
        args: Mapping[str, Any] | None = None,
        *,
        body: bytes | None = None,
        content_type: str | None = "application/json",
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Fire and forget (no reply_to): give ``op``/``args`` or a raw ``body``."""
        if body is None:
            body = encode(op or "", args)
        return await self.publish(
            host_id, body, content_type, message_id=message_id, headers=headers
        )

    # ------------------------------------------------------------ request/reply
    async def call_raw_message(
        self,
        host_id: str,
        body: bytes,
        content_type: str | None = "application/json",
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        timeout: float = 10.0,
        routing_key_override: str | None = None,
    ) -> Reply:
        correlation_id = correlation_id or str(uuid.uuid4())
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = fut
        try:
            await self.publish(
                host_id,
                body,
                content_type,
                reply_to=self.reply_queue,
                correlation_id=correlation_id,
                message_id=message_id,
                headers=headers,
                routing_key_override=routing_key_override,
            )
            try:
                return await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise RpcTimeoutError(
                    f"no reply from host {host_id!r} within {timeout}s "
                    f"(correlation_id={correlation_id}, body={body[:200]!r})"
                ) from None
        finally:
            self._pending.pop(correlation_id, None)

    async def call_raw(
        self,
        host_id: str,
        body: bytes,
        content_type: str | None = "application/json",
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Send arbitrary bytes (malformed-input tests); returns the decoded JSON reply."""
        reply = await self.call_raw_message(
            host_id,
            body,
            content_type,
            message_id=message_id,
            correlation_id=correlation_id,
            headers=headers,
            timeout=timeout,
        )
        return reply.json()

    async def call(
        self,
        host_id: str,
        op: str,
        args: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        timeout: float = 10.0,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One request/reply; returns ``{"ok": ..., "result"|"error": ...}``."""
        return await self.call_raw(
            host_id,
            encode(op, args),
            "application/json",
            message_id=message_id,
            headers=headers,
            timeout=timeout,
        )

    async def call_many(
        self,
        host_id: str,
        requests: Sequence[tuple[str, Mapping[str, Any] | None]],
        *,
        concurrency: int = 64,
        timeout: float = 30.0,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run ``requests`` ((op, args) pairs) with at most ``concurrency`` in flight.

        Results are in request order; with ``return_exceptions`` a failed call yields
        its exception instead of raising.
        """
        sem = asyncio.Semaphore(concurrency)

        async def one(op: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
            async with sem:
                return await self.call(host_id, op, args, timeout=timeout)

        results: list[Any] = await asyncio.gather(
            *(one(op, a) for op, a in requests), return_exceptions=return_exceptions
        )
        return results

    async def wait_ok(
        self,
        host_id: str,
        op: str = "host.health",
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float = 30.0,
        interval: float = 0.2,
        per_call_timeout: float = 2.0,
    ) -> dict[str, Any]:
        """Call ``op`` until it returns an ok reply; raises TimeoutError with the last error."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: object = None
        while True:
            try:
                reply = await self.call(host_id, op, args, timeout=per_call_timeout)
                if reply.get("ok") is True:
                    return reply
                last = reply
            except (RpcTimeoutError, UnroutableError, aio_pika.exceptions.AMQPError) as exc:
                last = exc
                self._exchange = None  # reopen the publishing channel next time
            if loop.time() >= deadline:
                raise TimeoutError(f"{op} on {host_id!r} not ok after {timeout}s: {last!r}")
            await asyncio.sleep(interval)


def encode(op: str, args: Mapping[str, Any] | None = None) -> bytes:
    return json.dumps({"op": op, "args": dict(args or {})}).encode()


class _Host(Protocol):
    @property
    def host_id(self) -> str: ...


async def ok(rpc: RawRpc, host: _Host, op: str, **args: Any) -> dict[str, Any]:
    """Call `op` on `host` (a daemon: anything with a host_id) and return its result;
    a reply that is not ok fails the test, showing the reply."""
    reply = await rpc.call(host.host_id, op, args)
    assert reply["ok"] is True, reply
    result: dict[str, Any] = reply["result"]
    return result
