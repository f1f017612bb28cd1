"""Jobs set aside (retry queue, vnetd.dead) survive a channel that the broker nacks for good."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import aio_pika
import aiormq
import orjson
import pytest

from tests.unit.amqp_fakes import FakeChannel, FakeExchange, FakeMessage, no_queue
from vnetd.amqp import renewing
from vnetd.amqp.consumer import JobConsumer
from vnetd.amqp.dedupe import ReplyCache
from vnetd.amqp.renewing import RenewingPublisher
from vnetd.amqp.retry import RetryPolicy
from vnetd.contract.base import Command
from vnetd.contract.errors import Unavailable

DEFINE = orjson.dumps({"op": "bridge.ensure", "args": {"name": "br0"}})
POLICY = RetryPolicy(queue="vnetd.retry.hv1", delay_seconds=0.5, attempts=3)


class NackingExchange(FakeExchange):
    async def publish(self, message: aio_pika.Message, routing_key: str, **_: Any) -> None:
        raise aiormq.exceptions.DeliveryError(None, cast(Any, None))


@dataclass
class StuckChannel(FakeChannel):
    """What RabbitMQ 3.10 does to a channel whose first publish to a quorum queue
    came while the queue's recorded leader was dead: it nacks every publish."""

    closed: bool = False

    @property
    def default_exchange(self) -> FakeExchange:
        return NackingExchange("", self.published)

    async def get_exchange(self, name: str, *, ensure: bool = True) -> FakeExchange:
        return NackingExchange(name, self.published)

    async def close(self) -> None:
        self.closed = True


class Channels:
    """open_channel for the publisher: the stuck channels first, then good ones."""

    def __init__(self, stuck: int) -> None:
        self.made: list[FakeChannel] = []
        self.stuck = stuck

    async def __call__(self) -> Any:
        ch = StuckChannel() if len(self.made) < self.stuck else FakeChannel()
        self.made.append(ch)
        return ch


async def unavailable(cmd: Command) -> dict[str, Any]:
    raise Unavailable("libvirtd is unreachable")


def consumer(channels: Channels, jobs: FakeChannel | None = None) -> JobConsumer:
    return JobConsumer((jobs or FakeChannel()).as_channel(), no_queue(), unavailable,
                       ReplyCache(60, 100), "hv1", retry_policy=POLICY,
                       aside=RenewingPublisher(channels))


@pytest.fixture(autouse=True)
def short_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(renewing, "FIRST_PAUSE", 0.01)


async def test_a_nacked_retry_copy_is_published_again_on_a_new_channel_then_acked() -> None:
    channels, jobs = Channels(stuck=2), FakeChannel()
    c = consumer(channels, jobs)
    msg = FakeMessage(DEFINE, message_id="m1")
    await c._on_message(jobs.deliver(msg))
    await c.drain(1.0)  # the ack written
    assert len(channels.made) == 3
    assert all(cast(StuckChannel, ch).closed for ch in channels.made[:2])
    [again] = channels.made[2].to("", POLICY.queue)
    assert again.message.message_id == "m1"
    assert msg.settled == "ack"  # only once the copy was confirmed
    assert c.aside is not None and c.aside.renewals == 2


async def test_the_channel_is_kept_while_the_broker_confirms() -> None:
    channels, jobs = Channels(stuck=0), FakeChannel()
    c = consumer(channels, jobs)
    for i in range(3):
        await c._on_message(jobs.deliver(FakeMessage(DEFINE, message_id=f"m{i}")))
    assert len(channels.made) == 1 and len(channels.made[0].to("", POLICY.queue)) == 3


async def test_nacked_for_too_long_the_job_is_left_unacked_for_redelivery(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(renewing, "GIVE_UP_AFTER", 0.05)
    jobs = FakeChannel()
    c = consumer(Channels(stuck=1000), jobs)
    msg = FakeMessage(DEFINE, message_id="m9")
    with pytest.raises(aiormq.exceptions.DeliveryError):
        await c._on_message(jobs.deliver(msg))
    await c.drain(1.0)
    assert msg.settled is None  # neither acked nor dropped: the broker gets it back
