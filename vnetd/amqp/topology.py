"""Exchanges, queues and bindings of contract v1, declared idempotently."""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

COMMANDS_EXCHANGE = "vnetd.commands"
DEAD_EXCHANGE = "vnetd.dead"
DEAD_QUEUE = "vnetd.dead"
BROADCAST_KEY = "hosts.all"


def host_queue_name(host_id: str) -> str:
    return f"vnetd.host.{host_id}"


def host_routing_key(host_id: str) -> str:
    return f"host.{host_id}"


def retry_queue_name(host_id: str) -> str:
    return f"vnetd.retry.{host_id}"


@dataclass(frozen=True)
class Topology:
    commands: AbstractExchange
    queue: AbstractQueue
    retry_queue: AbstractQueue


async def declare(channel: AbstractChannel, host_id: str, delivery_limit: int,
                  group_size: int = 3) -> Topology:
    """Declare everything a daemon needs; safe to run on every start and reconnect.

    The host's queues are quorum queues replicated on `group_size` nodes (RabbitMQ
    caps it to the cluster's size: one broker works as is). The group size is a
    creation-time argument, not part of the equivalence check, so a queue made
    before it was configured is declared again without a conflict. Reply queues
    are the callers' own and never quorum (exclusive, auto-delete)."""
    replicas = {"x-quorum-initial-group-size": group_size}
    commands = await channel.declare_exchange(
        COMMANDS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(DEAD_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    dead_queue = await channel.declare_queue(
        DEAD_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    await dead_queue.bind(dead, routing_key="#")
    queue = await channel.declare_queue(
        host_queue_name(host_id),
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": DEAD_EXCHANGE,
            **replicas,
        },
    )
    await queue.bind(commands, routing_key=host_routing_key(host_id))
    await queue.bind(commands, routing_key=BROADCAST_KEY)
    # Temporary failures wait here (no consumer): each message carries its delay as
    # its expiration, and expired messages are dead-lettered back to the host's
    # queue. All delays of one daemon are equal, so the head always expires first.
    # At-least-once dead-lettering (it needs reject-publish overflow): a job that
    # waits here must not be lost on its way back.
    retry_queue = await channel.declare_queue(
        retry_queue_name(host_id),
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": COMMANDS_EXCHANGE,
            "x-dead-letter-routing-key": host_routing_key(host_id),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            **replicas,
        },
    )
    return Topology(commands=commands, queue=queue, retry_queue=retry_queue)
