"""The publisher's confirm bookkeeping (events/publisher.py _Confirms): what is confirmed
is the prefix of delivery tags every one of which the broker acked."""

from __future__ import annotations

import asyncio

import aiormq

from vnetd.events.publisher import _Confirms


def ack(tag: int, multiple: bool = False) -> aiormq.spec.Basic.Ack:
    return aiormq.spec.Basic.Ack(delivery_tag=tag, multiple=multiple)


def nack(tag: int, multiple: bool = False) -> aiormq.spec.Basic.Nack:
    return aiormq.spec.Basic.Nack(delivery_tag=tag, multiple=multiple)


async def confirms(published: int) -> tuple[_Confirms, list[int]]:
    calls: list[int] = []
    c = _Confirms(asyncio.get_running_loop().create_future(), 0, lambda: calls.append(1))
    c.last = published
    return c, calls


async def test_single_acks_out_of_order_advance_the_prefix_only_when_the_gap_closes() -> None:
    c, calls = await confirms(5)
    await c.on_frame(ack(2))
    await c.on_frame(ack(3))
    assert c.acked == 0 and not c.settled
    await c.on_frame(ack(1))
    assert c.acked == 3
    await c.on_frame(ack(5))
    assert c.acked == 3
    await c.on_frame(ack(4))
    assert c.acked == 5 and c.settled and len(calls) == 5


async def test_a_multiple_ack_settles_everything_up_to_its_tag() -> None:
    c, _ = await confirms(300)
    await c.on_frame(ack(250, multiple=True))
    assert c.acked == 250
    await c.on_frame(ack(252))
    await c.on_frame(ack(251))
    assert c.acked == 252
    await c.on_frame(ack(300, multiple=True))
    assert c.acked == 300 and c.settled and c.failed is None


async def test_a_nack_fails_and_the_prefix_stops_before_it() -> None:
    c, _ = await confirms(10)
    await c.on_frame(ack(3, multiple=True))
    await c.on_frame(nack(6))
    assert c.failed is not None and c.nacked == 6
    assert not c.settled  # 4 and 5 may still be acked
    await c.on_frame(ack(5))
    await c.on_frame(ack(4))
    assert c.acked == 5 and c.settled
    await c.on_frame(ack(7))
    assert c.acked == 5  # never past a nacked tag


async def test_a_multiple_nack_fails_from_the_first_unconfirmed_tag() -> None:
    c, _ = await confirms(10)
    await c.on_frame(ack(2, multiple=True))
    await c.on_frame(nack(8, multiple=True))
    assert c.nacked == 3 and c.settled


async def test_a_closed_channel_settles_what_it_never_will_confirm() -> None:
    c, _ = await confirms(4)
    await c.on_frame(ack(1))
    c.closed.set_exception(aiormq.exceptions.ChannelClosed(None, None))
    c.closed.exception()
    assert c.settled and c.acked == 1
