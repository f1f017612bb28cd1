"""Looking into vnetd's RabbitMQ queues from a test, over a connection of its own."""

from __future__ import annotations

import asyncio
import time

import aio_pika
from aio_pika.abc import AbstractIncomingMessage


async def take_dead_letter(amqp_url: str, message_id: str,
                           timeout: float) -> AbstractIncomingMessage | None:
    """Ack and return the message with `message_id` from vnetd.dead, None if it does not
    arrive within `timeout` s. Other messages (other tests') are put back."""
    conn = await aio_pika.connect(amqp_url)
    try:
        ch = await conn.channel()
        queue = await ch.declare_queue("vnetd.dead", passive=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = await queue.get(fail=False, no_ack=False)
            if msg is None:
                await asyncio.sleep(0.1)
                continue
            if msg.message_id == message_id:
                await msg.ack()
                return msg
            await msg.nack(requeue=True)
            await asyncio.sleep(0.01)
        return None
    finally:
        await conn.close()


async def queue_counts(amqp_url: str, host_id: str) -> tuple[int, int]:
    """(messages ready, consumers) of the host queue, from a passive declare."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"vnetd.host.{host_id}", passive=True)
        result = queue.declaration_result
        return result.message_count, result.consumer_count
