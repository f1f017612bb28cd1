"""An async client for the vnetd contract: what vnetctl uses and a control plane imports.

It speaks only the documented contract (docs/contract.md): JSON jobs to the
`vnetd.commands` exchange, replies on a private queue matched by correlation id.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue
from aio_pika.abc import AbstractRobustConnection as Connection

COMMANDS_EXCHANGE = "vnetd.commands"


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
    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: Connection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None
        self._waiting: dict[str, tuple[asyncio.Future[Reply] | None, list[Reply]]] = {}

    async def __aenter__(self) -> VnetClient:
        await self.connect()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def connect(self) -> None:
        self._connection = await aio_pika.connect_robust(
            self.url, client_properties={"connection_name": "vnetd-client"})
        self._channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await self._channel.declare_exchange(
            COMMANDS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        self._queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await self._queue.consume(self._on_reply, no_ack=True)

    async def close(self) -> None:
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
        await self._exchange.publish(
            aio_pika.Message(
                orjson.dumps({"op": op, "args": args or {}}),
                content_type="application/json",
                correlation_id=correlation_id,
                message_id=message_id or str(uuid.uuid4()),
                reply_to=self._queue.name,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key,
        )

    async def call(self, host_id: str, op: str, args: dict[str, Any] | None = None, *,
                   timeout: float = 30.0, message_id: str | None = None) -> Reply:
        """Send one job to one host and wait for its reply."""
        correlation_id = str(uuid.uuid4())
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = (future, [])
        try:
            await self._publish(f"host.{host_id}", op, args, correlation_id, message_id)
            return await asyncio.wait_for(future, timeout)
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
