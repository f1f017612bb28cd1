"""Replies and acks written together, and never an ack before its reply's confirm."""

from __future__ import annotations

import asyncio

import aio_pika
import aiormq
import orjson
import pytest
from aiormq.abc import ChannelFrame
from pamqp import commands

from tests.unit.amqp_fakes import FakeChannel, FakeMessage, FakeWire
from tests.unit.test_consumer import DEFINE, Handler, consumer, replies
from vnetd.amqp import wire
from vnetd.amqp.outbox import Outbox


def outbox(w: FakeWire) -> Outbox:
    frames = wire.ReplyFrames(w.number, "application/json", {"host_id": "hv1"}, 1,
                              w.max_content_size)
    return Outbox(w, frames, asyncio.get_running_loop())  # type: ignore[arg-type]


def acks(w: FakeWire) -> list[int]:
    return [f.delivery_tag for f in w.frames if isinstance(f, commands.Basic.Ack)]


async def test_what_jobs_hand_over_in_one_loop_pass_is_one_write() -> None:
    w = FakeWire([])
    box = outbox(w)
    confirms = [box.reply("reply-q", f"c{i}", b'{"ok": true}') for i in range(5)]
    box.ack(7)
    box.ack(8)
    await asyncio.gather(*confirms)
    assert len(w.writes) == 1
    assert [p.message.correlation_id for p in w.published] == [f"c{i}" for i in range(5)]
    assert acks(w) == [7, 8]
    assert w.delivery_tag == 5 and w.confirmations == {}


async def test_a_publish_under_aio_pikas_lock_is_waited_for_and_tags_stay_in_order() -> None:
    w = FakeWire([])
    box = outbox(w)
    await w.lock_.acquire()  # aio-pika's basic_publish between its tag and its frames
    w.delivery_tag += 1
    theirs = w.confirmations[1] = w.create_future()
    confirmed = box.reply("reply-q", "c1", b"{}")
    await asyncio.sleep(0.01)
    assert w.writes == []  # not written past aio-pika's publish
    w.put_nowait(ChannelFrame(payload=box.frames.publish("retry-q", None, b"x"),
                              should_close=False))
    w.lock_.release()
    await confirmed
    await theirs
    assert [p.routing_key for p in w.published] == ["retry-q", "reply-q"]
    assert w.delivery_tag == 2 and w.confirmations == {}


async def test_a_closed_channel_fails_the_replies_not_yet_written() -> None:
    w = FakeWire([])
    box = outbox(w)
    confirmed = box.reply("reply-q", "c1", b"{}")
    box.ack(1)
    w.is_closed = True
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError, match="closed"):
        await confirmed
    assert w.writes == []


async def test_concurrent_jobs_are_acked_only_after_their_own_replies_are_confirmed() -> None:
    channel = FakeChannel()
    channel.wire.hold_confirms = True
    c = consumer(channel, Handler())
    msgs = [FakeMessage(DEFINE, message_id=f"m{i}", correlation_id=f"c{i}",
                        reply_to="reply-q") for i in range(4)]
    tasks = [asyncio.create_task(c._on_message(channel.deliver(m))) for m in msgs]
    await asyncio.sleep(0.05)
    assert len(replies(channel)) == 4  # every reply written without waiting for another
    assert [m.settled for m in msgs] == [None] * 4  # but no ack before a confirm
    assert len(channel.wire.writes) == 1  # the four replies went out in one write
    # the broker confirms the third one first
    channel.wire._confirm(3)
    await asyncio.sleep(0.01)
    assert [m.settled for m in msgs] == [None, None, "ack", None]
    channel.wire.confirm_all()
    await asyncio.gather(*tasks)
    await c.drain(1.0)
    assert [m.settled for m in msgs] == ["ack"] * 4
    assert acks(channel.wire) == [3, 1, 2, 4]


async def test_a_nacked_reply_is_never_followed_by_an_ack() -> None:
    channel = FakeChannel()
    channel.wire.nack = True
    c = consumer(channel, Handler())
    msg = FakeMessage(DEFINE, message_id="m1", reply_to="reply-q")
    with pytest.raises(aio_pika.exceptions.DeliveryError):  # aiormq logs it
        await c._on_message(channel.deliver(msg))
    await c.drain(1.0)
    assert msg.settled is None  # the broker redelivers it
    assert orjson.loads(channel.published[0].message.body)["ok"] is True
    # Its reply is remembered: the redelivery is answered without running it again.
    assert c.cache.get("m1") is not None


async def test_a_channel_closed_before_the_confirm_leaves_the_job_unacked() -> None:
    channel = FakeChannel()
    channel.wire.hold_confirms = True
    c = consumer(channel, Handler())
    msg = FakeMessage(DEFINE, message_id="m1", reply_to="reply-q")
    task = asyncio.create_task(c._on_message(channel.deliver(msg)))
    await asyncio.sleep(0.02)
    channel.wire.close()
    await asyncio.wait([task])
    assert task.exception() is not None
    assert msg.settled is None and acks(channel.wire) == []
