"""Delayed requeue of jobs that met a temporary failure and have nobody to tell.

The job is published again, unchanged but for its attempt header, to the
host's retry queue with the retry delay as its expiration; the broker
dead-letters it back to the host queue when it expires (topology.py). Only
once that publish is confirmed is the delivery acked, so a daemon killed in
between leaves the job in the host queue, and at worst it runs twice, which
idempotent ops make safe. After the last attempt the job is published to
vnetd.dead with the reason and attempt count in its headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from vnetd.amqp.outcome import Delivery
from vnetd.amqp.topology import DEAD_EXCHANGE

ATTEMPT_HEADER = "x-vnetd-attempt"
REASON_HEADER = "x-vnetd-reason"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    queue: str
    """The retry queue's name (topology.retry_queue_name)."""
    delay_seconds: float = 5.0
    attempts: int = 60
    """Attempts in all, the first included; 1 = never retried."""


def attempt_of(message: AbstractIncomingMessage) -> int:
    """This delivery's attempt: 1, or what the retry header says (clamped, never trusted)."""
    raw = (message.headers or {}).get(ATTEMPT_HEADER)
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1:
        return min(raw, 1_000_000)
    return 1


def delivery_of(message: AbstractIncomingMessage, policy: RetryPolicy | None) -> Delivery:
    return Delivery(reply_to=bool(message.reply_to), attempt=attempt_of(message),
                    attempts=policy.attempts if policy is not None else 1)


def _copy(message: AbstractIncomingMessage, headers: dict[str, Any],
          expiration: float | None = None) -> aio_pika.Message:
    kept = {k: v for k, v in (message.headers or {}).items() if k != "x-death"}
    return aio_pika.Message(
        message.body,
        headers={**kept, **headers},
        content_type=message.content_type,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        reply_to=message.reply_to,
        user_id=None,  # the broker checks user_id against the publisher: ours, not the sender's
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        expiration=expiration,
    )


async def requeue_later(channel: AbstractChannel, policy: RetryPolicy,
                        message: AbstractIncomingMessage, reason: str) -> int:
    """Publish the job to the retry queue (confirmed); returns the next attempt's number."""
    attempt = attempt_of(message) + 1
    copy = _copy(message, {ATTEMPT_HEADER: attempt, REASON_HEADER: reason[:1000]},
                 expiration=policy.delay_seconds)
    await channel.default_exchange.publish(copy, routing_key=policy.queue)
    return attempt


async def give_up(channel: AbstractChannel, message: AbstractIncomingMessage,
                  reason: str) -> None:
    """Publish the job to vnetd.dead with why it was given up (confirmed)."""
    exchange = await channel.get_exchange(DEAD_EXCHANGE, ensure=False)
    copy = _copy(message, {ATTEMPT_HEADER: attempt_of(message), REASON_HEADER: reason[:1000]})
    await exchange.publish(copy, routing_key=message.routing_key or "")
