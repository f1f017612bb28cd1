"""The transport's limit: a no-op aio-pika responder that answers like vnetd does.

Same broker, same exchange, a quorum queue with vnetd's arguments, the same
prefetch, a publisher-confirmed reply on the default exchange, then an ack:
everything vnetd's consumer does except the work. Run as its own process (as
the daemon is): `python -m bench.responder URL HOST_ID PREFETCH`.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

REPLY = b'{"ok":true,"result":{}}'


async def main(url: str, host_id: str, prefetch: int) -> None:
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=prefetch)
    commands = await channel.declare_exchange("vnetd.commands", aio_pika.ExchangeType.TOPIC,
                                              durable=True)
    dead = await channel.declare_exchange("vnetd.dead", aio_pika.ExchangeType.FANOUT,
                                          durable=True)
    del dead
    queue = await channel.declare_queue(
        f"vnetd.host.{host_id}", durable=True,
        arguments={"x-queue-type": "quorum", "x-delivery-limit": 5,
                   "x-dead-letter-exchange": "vnetd.dead"})
    await queue.bind(commands, routing_key=f"host.{host_id}")

    async def on_message(message: AbstractIncomingMessage) -> None:
        if message.reply_to:
            await channel.default_exchange.publish(
                aio_pika.Message(REPLY, content_type="application/json",
                                 correlation_id=message.correlation_id,
                                 headers={"host_id": host_id},
                                 delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
                routing_key=message.reply_to, mandatory=False)
        await message.ack()

    await queue.consume(on_message, no_ack=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    await stop.wait()
    await connection.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
