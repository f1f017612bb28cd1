"""ReplyCache: replies kept by message_id, with an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from vnetd.amqp.dedupe import ReplyCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def finished(cache: ReplyCache, message_id: str, reply: bytes) -> None:
    cache.start(message_id)
    cache.finish(message_id, reply)


async def test_a_reply_is_kept_for_the_window(clock: Clock) -> None:
    cache = ReplyCache(60, 100, clock=clock)
    await finished(cache, "m1", b"r1")
    assert cache.get("m1") == b"r1"
    clock.now += 60
    assert cache.get("m1") == b"r1", "still inside the window at its edge"
    clock.now += 0.001
    assert cache.get("m1") is None
    assert len(cache) == 0


async def test_expiry_is_per_entry(clock: Clock) -> None:
    cache = ReplyCache(10, 100, clock=clock)
    await finished(cache, "old", b"1")
    clock.now += 6
    await finished(cache, "new", b"2")
    clock.now += 6
    assert cache.get("old") is None
    assert cache.get("new") == b"2"


async def test_max_entries_drops_the_oldest(clock: Clock) -> None:
    cache = ReplyCache(600, 3, clock=clock)
    for i in range(5):
        await finished(cache, f"m{i}", str(i).encode())
        clock.now += 1
    assert len(cache) == 3
    assert [cache.get(f"m{i}") for i in range(5)] == [None, None, b"2", b"3", b"4"]


@pytest.mark.parametrize(("window", "entries"), [(0, 100), (60, 0)])
async def test_a_disabled_cache_keeps_nothing(clock: Clock, window: float, entries: int) -> None:
    cache = ReplyCache(window, entries, clock=clock)
    await finished(cache, "m1", b"r")
    assert cache.get("m1") is None
    assert len(cache) == 0


async def test_unknown_id(clock: Clock) -> None:
    cache = ReplyCache(60, 10, clock=clock)
    assert cache.get("nope") is None
    assert cache.running("nope") is None


async def test_a_second_delivery_waits_for_the_running_one(clock: Clock) -> None:
    cache = ReplyCache(60, 10, clock=clock)
    cache.start("m1")
    running = cache.running("m1")
    assert running is not None
    waiter = asyncio.ensure_future(asyncio.shield(running))
    await asyncio.sleep(0)
    assert not waiter.done()
    cache.finish("m1", b"reply")
    assert await waiter == b"reply"
    assert cache.running("m1") is None
    assert cache.get("m1") == b"reply"


async def test_finish_none_cancels_waiters_and_keeps_nothing(clock: Clock) -> None:
    cache = ReplyCache(60, 10, clock=clock)
    cache.start("m1")
    running = cache.running("m1")
    assert running is not None
    cache.finish("m1", None)
    assert running.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert cache.running("m1") is None
    assert cache.get("m1") is None


async def test_finish_without_start_still_records(clock: Clock) -> None:
    cache = ReplyCache(60, 10, clock=clock)
    cache.finish("m1", b"r")
    assert cache.get("m1") == b"r"


async def test_a_reply_not_kept_still_answers_the_waiting_delivery(clock: Clock) -> None:
    # A read-only op (a 10,000-link host.snapshot is megabytes): the delivery waiting
    # for it gets its reply, nothing is held for the window, a later one runs again.
    cache = ReplyCache(60, 10, clock=clock)
    cache.start("m1")
    running = cache.running("m1")
    assert running is not None
    cache.finish("m1", b"snapshot", keep=False)
    assert await running == b"snapshot"
    assert cache.get("m1") is None and len(cache) == 0
