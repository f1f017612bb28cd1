"""The dispatcher: batches, unexpected failures, unserved ops, and KeyedLocks."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tests.unit.fakes import Caller, ExplodingNet, FakeNet
from vnetd.contract.commands import BridgeList, parse_request
from vnetd.contract.errors import ErrorCode, Internal, InvalidArgument, Unsupported
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import TAP_RUN, Dispatcher, KeyedLocks
from vnetd.handlers.policy import Policy
from vnetd.handlers.registry import build_registry


def sub(op: str, **args: Any) -> dict[str, Any]:
    return {"op": op, "args": args}


BATCH = [
    sub("bridge.ensure", name="br0"),
    sub("tap.ensure", name="tap0", bridge="nosuch"),  # not_found
    sub("tap.ensure", name="tap1", bridge="br0"),
    sub("bridge.delete", name="virbr0"),  # forbidden
    sub("tap.ensure", name="tap2", bridge="br0"),
]


async def test_batch_stops_on_the_first_error(net: FakeNet, call: Caller) -> None:
    net.add("virbr0", "bridge")
    result = await call("batch", commands=BATCH)
    assert (result["completed"], result["failed"], result["skipped"]) == (1, 1, 3)
    assert [r["ok"] for r in result["results"]] == [True, False]
    assert result["results"][1]["error"]["code"] == "not_found"
    assert "br0" in net.names()
    assert "tap1" not in net.names()


async def test_batch_goes_on_when_asked(net: FakeNet, call: Caller) -> None:
    net.add("virbr0", "bridge")
    result = await call("batch", commands=BATCH, stop_on_error=False)
    assert (result["completed"], result["failed"], result["skipped"]) == (3, 2, 0)
    assert [r["ok"] for r in result["results"]] == [True, False, True, False, True]
    assert [r["error"]["code"] for r in result["results"] if not r["ok"]] == [
        "not_found", "forbidden"]
    assert result["results"][2]["result"]["master"] == "br0"
    assert {"tap1", "tap2"} <= net.names()


async def test_batch_all_fine(call: Caller) -> None:
    result = await call("batch", commands=[sub("bridge.ensure", name="br0"),
                                           sub("bridge.ensure", name="br0")])
    assert (result["completed"], result["failed"], result["skipped"]) == (2, 0, 0)
    assert [r["result"]["created"] for r in result["results"]] == [True, False]


async def test_batch_failing_on_the_last_command(net: FakeNet, call: Caller) -> None:
    net.add("virbr0", "bridge")
    result = await call("batch", commands=[sub("bridge.ensure", name="br0"),
                                           sub("bridge.delete", name="virbr0")])
    assert (result["completed"], result["failed"], result["skipped"]) == (1, 1, 0)


async def test_an_invalid_batch_runs_nothing(net: FakeNet, dispatcher: Dispatcher) -> None:
    body = {"op": "batch", "args": {"commands": [sub("bridge.ensure", name="br0"),
                                                 sub("bridge.ensure", name="br1", mtu="9000")]}}
    with pytest.raises(InvalidArgument, match=r"commands\[1\]"):
        await dispatcher.execute(parse_request(body))
    assert net.calls == []


async def test_an_unexpected_exception_becomes_internal(policy: Policy) -> None:
    ctx = Context(host_id="hv1", net=ExplodingNet(), policy=policy, version="t")
    dispatcher = Dispatcher(build_registry(), ctx)
    with pytest.raises(Internal, match="RuntimeError: boom") as info:
        await dispatcher.execute(parse_request(sub("bridge.ensure", name="br0")))
    assert info.value.code is ErrorCode.INTERNAL
    assert info.value.details == {"op": "bridge.ensure"}
    assert isinstance(info.value.__cause__, RuntimeError)
    assert dispatcher.locks._locks == {}, "the lock is released after a failure"


async def test_an_unexpected_exception_inside_a_batch_is_reported_per_command(
        policy: Policy) -> None:
    ctx = Context(host_id="hv1", net=ExplodingNet(), policy=policy, version="t")
    dispatcher = Dispatcher(build_registry(), ctx)
    result = await dispatcher.execute(parse_request(sub(
        "batch", commands=[sub("host.health"), sub("tap.ensure", name="t0"),
                           sub("host.health")], stop_on_error=False)))
    assert [r["ok"] for r in result["results"]] == [True, False, True]
    assert result["results"][1]["error"]["code"] == "internal"


async def test_an_op_without_handler_is_unsupported(ctx: Context) -> None:
    registry = build_registry()
    del registry[BridgeList]
    with pytest.raises(Unsupported, match=r"bridge\.list"):
        await Dispatcher(registry, ctx).execute(BridgeList())


# -- KeyedLocks ---------------------------------------------------------------------


async def test_same_key_serialises() -> None:
    locks = KeyedLocks()
    active = 0
    peak = 0

    async def job() -> None:
        nonlocal active, peak
        async with locks.hold(["link:tap0"]):
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1

    await asyncio.gather(*(job() for _ in range(5)))
    assert peak == 1
    assert locks._locks == {}


async def test_different_keys_run_concurrently() -> None:
    locks = KeyedLocks()
    inside: set[str] = set()
    both_inside = asyncio.Event()

    async def job(key: str) -> None:
        async with locks.hold([key]):
            inside.add(key)
            if len(inside) == 2:
                both_inside.set()
            await asyncio.wait_for(both_inside.wait(), 1)

    await asyncio.wait_for(asyncio.gather(job("link:a"), job("link:b")), 2)
    assert locks._locks == {}


async def test_overlapping_key_sets_do_not_deadlock() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def job(name: str, keys: list[str]) -> None:
        async with locks.hold(keys):
            order.append(name)
            await asyncio.sleep(0.005)

    await asyncio.wait_for(asyncio.gather(job("x", ["a", "b"]), job("y", ["b", "a"]),
                                          job("z", ["a", "a"])), 2)
    assert sorted(order) == ["x", "y", "z"]
    assert locks._locks == {}


async def test_a_cancelled_waiter_does_not_leak_its_lock() -> None:
    locks = KeyedLocks()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold(["k"]):
            await release.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(holder())
    await asyncio.sleep(0)
    assert locks._locks["k"].users == 2
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert locks._locks["k"].users == 1
    release.set()
    await first
    assert locks._locks == {}
    async with locks.hold(["k"]):  # still usable afterwards
        assert locks._locks["k"].users == 1


async def test_shared_and_exclusive_holders_never_overlap_under_contention() -> None:
    """Random sharers and exclusive holders of one key (the fast path without waiters
    and the Condition with them): never an exclusive holder beside anyone else, and an
    exclusive waiter keeps new sharers out until it had its turn."""
    locks = KeyedLocks()
    rng = random.Random(7)
    shared_in, exclusive_in, violations = 0, 0, []

    async def job(i: int, exclusive: bool) -> None:
        nonlocal shared_in, exclusive_in
        await asyncio.sleep(rng.random() * 0.005)
        async with locks.hold(["k"] if exclusive else [], [] if exclusive else ["k"]):
            if exclusive:
                exclusive_in += 1
            else:
                shared_in += 1
            if exclusive_in > 1 or (exclusive_in and shared_in):
                violations.append(i)
            await asyncio.sleep(rng.random() * 0.002)
            if exclusive:
                exclusive_in -= 1
            else:
                shared_in -= 1

    await asyncio.wait_for(asyncio.gather(*(job(i, rng.random() < 0.2) for i in range(300))),
                           20)
    assert violations == [] and locks._locks == {}


async def test_an_exclusive_waiter_goes_before_later_sharers() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    first_in, release = asyncio.Event(), asyncio.Event()

    async def sharer(name: str, hold: asyncio.Event | None = None) -> None:
        async with locks.hold([], ["k"]):
            order.append(name)
            if hold is not None:
                first_in.set()
                await hold.wait()

    async def exclusive() -> None:
        async with locks.hold(["k"]):
            order.append("x")

    a = asyncio.create_task(sharer("a", release))
    await first_in.wait()
    x = asyncio.create_task(exclusive())
    await asyncio.sleep(0.01)
    b = asyncio.create_task(sharer("b"))
    await asyncio.sleep(0.01)
    assert order == ["a"]  # b waits behind the exclusive waiter
    release.set()
    await asyncio.gather(a, x, b)
    assert order == ["a", "x", "b"] and locks._locks == {}


async def test_dispatcher_serialises_jobs_on_one_name(net: FakeNet, call: Caller) -> None:
    results = await asyncio.gather(*(call("bridge.ensure", name="br0") for _ in range(4)))
    assert sum(r["created"] for r in results) == 1
    assert [c.method for c in net.mutations()].count("add_bridge") == 1


@pytest.mark.parametrize("op", ["tap.ensure", "port.attach"])
async def test_joining_a_bridge_is_serialised_with_deleting_it(net: FakeNet, call: Caller,
                                                               op: str) -> None:
    # A job that puts a port in br0 holds only its own name's lock; bridge.delete br0 can
    # then remove br0 between the job's checks and its RTM_NEWLINK with master=br0.
    await call("bridge.ensure", name="br0")
    if op == "port.attach":
        await call("tap.ensure", name="tap0")
    joining, deleting = await asyncio.gather(
        call(op, name="tap0", bridge="br0"), call("bridge.delete", name="br0"),
        return_exceptions=True)
    assert deleting == {"name": "br0", "deleted": True,
                        "detached_ports": ["tap0"] if isinstance(joining, dict) else []}
    if isinstance(joining, Exception):
        # Refused up front (the bridge was gone), not half-way through.
        assert getattr(joining, "code", None) is ErrorCode.NOT_FOUND
        assert "bridge br0" in str(joining)


class InstantNet(FakeNet):
    """Answers without yielding to the loop, as the real backend does when the kernel's
    answer is already in the socket's buffer after the send."""

    async def _io(self, call: Any) -> None:
        self.calls.append(call)


async def test_a_batch_gives_the_loop_its_turn_between_commands(policy: Policy) -> None:
    net = InstantNet()
    dispatcher = Dispatcher(build_registry(), Context(host_id="hv1", net=net, policy=policy,
                                                      version="t"))
    turns = 0

    async def other_work() -> None:  # the event watcher, the broker's heartbeats
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    start = turns
    result = await dispatcher.execute(parse_request(sub("batch", commands=[
        sub("tap.delete", name=f"t{i}") for i in range(20)])))
    assert result["completed"] == 20
    assert turns - start >= 19
    # tap.ensure commands go TAP_RUN at a time (one read, one creation): a turn between
    start = turns
    result = await dispatcher.execute(parse_request(sub("batch", commands=[
        sub("tap.ensure", name=f"t{i}") for i in range(3 * TAP_RUN)])))
    other.cancel()
    assert result["completed"] == 3 * TAP_RUN
    assert turns - start >= 2
    assert [c.method for c in net.calls].count("add_taps") == 3
