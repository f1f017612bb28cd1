"""A stop after a drain timeout: the jobs still running are cancelled, left unacked."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.unit.amqp_fakes import FakeChannel, FakeMessage
from tests.unit.test_consumer import DEFINE, consumer, replies
from vnetd.contract.commands import Command


class Slow:
    """A job that runs until it is cancelled (and says so)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def __call__(self, cmd: Command) -> dict[str, Any]:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return {"name": "br0"}


async def test_a_delivery_cancelled_by_its_channel_still_runs_its_job_to_the_end() -> None:
    channel, job = FakeChannel(), Slow()
    c = consumer(channel, job)  # type: ignore[arg-type]
    msg = FakeMessage(DEFINE, message_id="m1", reply_to="reply-q")
    delivery = asyncio.create_task(c._on_message(channel.deliver(msg)))
    await job.started.wait()
    delivery.cancel()  # what aiormq does to a delivery when the channel closes
    await asyncio.sleep(0.05)
    assert not delivery.done() and not job.cancelled  # not abandoned half-way
    assert await c.drain(0.05) == 1
    assert await c.abandon(1.0) == 0
    assert delivery.done() and job.cancelled


async def test_abandon_ends_the_jobs_left_unacked_and_unanswered() -> None:
    channel, job = FakeChannel(), Slow()
    c = consumer(channel, job)  # type: ignore[arg-type]
    msg = FakeMessage(DEFINE, message_id="m1", reply_to="reply-q")
    delivery = asyncio.create_task(c._on_message(channel.deliver(msg)))
    await job.started.wait()
    await c.stop()
    assert await c.drain(0.05) == 1  # the drain bound ran out
    assert await c.abandon(1.0) == 0
    assert delivery.done() and delivery.cancelled()
    assert job.cancelled
    assert msg.settled is None  # neither acked nor rejected: the broker redelivers it
    assert replies(channel) == []
    assert c.inflight == 0
    # The redelivery runs it again: no reply cached, no "running" entry left.
    assert c.cache.running("m1") is None and c.cache.get("m1") is None


async def test_abandon_with_nothing_in_flight_is_a_no_op() -> None:
    c = consumer(FakeChannel(), Slow())  # type: ignore[arg-type]
    assert await c.abandon(0.1) == 0
