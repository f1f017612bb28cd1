"""The job consumer's settlement of each delivery: reply, ack, dead-letter, retry later."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.unit.amqp_fakes import FakeChannel, FakeMessage, no_queue
from vnetd.amqp.consumer import JobConsumer
from vnetd.amqp.dedupe import ReplyCache
from vnetd.amqp.retry import ATTEMPT_HEADER, REASON_HEADER, RetryPolicy
from vnetd.contract.commands import Command
from vnetd.contract.errors import Unavailable

DEFINE = orjson.dumps({"op": "bridge.ensure", "args": {"name": "br0"}})
POLICY = RetryPolicy(queue="vnetd.retry.hv1", delay_seconds=0.5, attempts=3)


class Handler:
    """What the dispatcher would do: returns `result` or raises `error`."""

    def __init__(self, result: Any = None, error: Exception | None = None) -> None:
        self.result = result if result is not None else {"name": "br0"}
        self.error = error
        self.calls = 0

    async def __call__(self, cmd: Command) -> dict[str, Any]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[no-any-return]


def consumer(channel: FakeChannel, handler: Handler, *,
             policy: RetryPolicy | None = POLICY) -> JobConsumer:
    return JobConsumer(channel.as_channel(), no_queue(), handler, ReplyCache(60, 100), "hv1",
                       retry_policy=policy)


async def deliver(c: JobConsumer, channel: FakeChannel, msg: FakeMessage) -> None:
    """`msg` delivered on `channel` and handled, its settlement written."""
    await c._on_message(channel.deliver(msg))
    await c.drain(1.0)


def replies(channel: FakeChannel) -> list[dict[str, Any]]:
    return [orjson.loads(p.message.body) for p in channel.to("", "reply-q")]


async def test_a_result_that_cannot_be_serialised_is_answered_internal_and_settled() -> None:
    channel = FakeChannel()
    msg = FakeMessage(DEFINE, message_id="m1", reply_to="reply-q")
    c = consumer(channel, Handler(result={"name": "br0", "odd": object()}))
    await deliver(c, channel, msg)
    [reply] = replies(channel)
    assert reply["ok"] is False and reply["error"]["code"] == "internal"
    assert "cannot be serialised" in reply["error"]["message"]
    assert msg.settled == "reject"  # dead-lettered, so the prefetch slot is free
    assert c.inflight == 0


async def test_an_unexpected_exception_from_execute_is_internal_too() -> None:
    channel = FakeChannel()
    msg = FakeMessage(DEFINE, reply_to="reply-q")
    await deliver(consumer(channel, Handler(error=KeyError("x"))), channel, msg)
    assert replies(channel)[0]["error"]["code"] == "internal"
    assert msg.settled == "reject"


async def test_unavailable_without_reply_to_goes_to_the_retry_queue_then_acked() -> None:
    channel = FakeChannel()
    msg = FakeMessage(DEFINE, message_id="m2", headers={"trace": "t1"})
    handler = Handler(error=Unavailable("libvirtd is unreachable"))
    c = consumer(channel, handler)
    await deliver(c, channel, msg)
    [again] = channel.to("", POLICY.queue)
    assert again.message.body == DEFINE and again.message.message_id == "m2"
    assert again.message.headers[ATTEMPT_HEADER] == 2
    assert again.message.headers["trace"] == "t1"
    assert "libvirtd is unreachable" in str(again.message.headers[REASON_HEADER])
    assert again.message.expiration == 0.5
    assert msg.settled == "ack"
    # The retry is not remembered as this message_id's reply: it must run again.
    assert c.cache.get("m2") is None


async def test_the_last_attempt_is_dead_lettered_with_the_reason() -> None:
    channel = FakeChannel()
    msg = FakeMessage(DEFINE, message_id="m3", headers={ATTEMPT_HEADER: 3,
                                                        "x-death": [{"count": 2}]})
    c = consumer(channel, Handler(error=Unavailable("libvirtd is unreachable")))
    await deliver(c, channel, msg)
    assert channel.to("", POLICY.queue) == []
    [dead] = channel.to("vnetd.dead")
    assert dead.message.headers[ATTEMPT_HEADER] == 3
    reason = str(dead.message.headers[REASON_HEADER])
    assert reason.startswith("unavailable: libvirtd is unreachable") and "3 attempts" in reason
    assert "x-death" not in dead.message.headers
    assert msg.settled == "ack"


async def test_unavailable_with_reply_to_is_answered_once_and_acked() -> None:
    channel = FakeChannel()
    msg = FakeMessage(DEFINE, reply_to="reply-q")
    await deliver(consumer(channel, Handler(error=Unavailable("down"))), channel, msg)
    assert [r["error"]["code"] for r in replies(channel)] == ["unavailable"]
    assert channel.to("", POLICY.queue) == [] and channel.to("vnetd.dead") == []
    assert msg.settled == "ack"


async def test_without_a_retry_policy_a_temporary_failure_is_still_not_dropped() -> None:
    channel = FakeChannel()
    msg = FakeMessage(DEFINE)
    c = consumer(channel, Handler(error=Unavailable("down")), policy=None)
    await deliver(c, channel, msg)
    assert len(channel.to("vnetd.dead")) == 1 and msg.settled == "ack"


@pytest.mark.parametrize("header", ["2", -1, True, None])
async def test_a_forged_attempt_header_counts_as_the_first(header: object) -> None:
    channel = FakeChannel()
    msg = FakeMessage(DEFINE, headers={ATTEMPT_HEADER: header})
    await deliver(consumer(channel, Handler(error=Unavailable("down"))), channel, msg)
    [again] = channel.to("", POLICY.queue)
    assert again.message.headers[ATTEMPT_HEADER] == 2


class Recorder:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def job_finished(self, record: Any) -> None:
        self.records.append(record)


async def test_observers_hear_of_a_retried_job_once_with_its_final_outcome() -> None:
    channel, seen = FakeChannel(), Recorder()
    handler = Handler(error=Unavailable("down"))
    c = JobConsumer(channel.as_channel(), no_queue(), handler, ReplyCache(60, 100), "hv1",
                    observers=[seen], retry_policy=POLICY)
    await deliver(c, channel, FakeMessage(DEFINE, message_id="m9"))
    assert seen.records == []  # sent to run again: not finished
    handler.error = None
    await deliver(c, channel, FakeMessage(DEFINE, message_id="m9",
                                    headers={ATTEMPT_HEADER: 2}))
    assert [(r.op, r.ok) for r in seen.records] == [("bridge.ensure", True)]
