"""Fixtures of the unit tier: a FakeNet, a policy, and a dispatcher over them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.unit.fakes import Caller, FakeNet
from vnetd.contract.commands import parse_request
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import Dispatcher
from vnetd.handlers.policy import Policy
from vnetd.handlers.registry import build_registry


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running: whatever it started must be stopped.

    Autouse, so it is set up first and torn down last, after the test's other
    fixtures have stopped what they own. Tasks being cancelled get a few loop
    turns to finish; the leaked ones are cancelled so they cannot spill into
    the next test.
    """
    yield
    leaked = await stop_leaked_tasks()
    if leaked:
        pytest.fail(f"the test left {len(leaked)} asyncio task(s) running: {', '.join(leaked)}",
                    pytrace=False)


async def stop_leaked_tasks(turns: int = 20) -> list[str]:
    """Tasks of this loop still running after `turns` loop turns: cancelled, and named."""
    me = asyncio.current_task()
    leaked: list[asyncio.Task[Any]] = []
    for _ in range(turns):
        leaked = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if not leaked:
            return []
        await asyncio.sleep(0)
    for task in leaked:
        task.cancel()
    await asyncio.gather(*leaked, return_exceptions=True)
    return sorted(f"{t.get_name()} ({t.get_coro()!r})" for t in leaked)


@pytest.fixture
def net() -> FakeNet:
    return FakeNet()


@pytest.fixture
def policy() -> Policy:
    return Policy(attachable=("eth*", "ens*"), protected=("lo", "br-ext*"))


@pytest.fixture
def ctx(net: FakeNet, policy: Policy) -> Context:
    return Context(host_id="hv1", net=net, policy=policy, version="0.0-test",
                   components=lambda: {"amqp": "connected", "libvirt": "disabled"})


@pytest.fixture
def dispatcher(ctx: Context) -> Dispatcher:
    return Dispatcher(build_registry(), ctx)


@pytest.fixture
def call(dispatcher: Dispatcher) -> Caller:
    """Run one request the way the consumer does: validate the body, then dispatch."""

    async def run(op: str, **args: Any) -> dict[str, Any]:
        return await dispatcher.execute(parse_request({"op": op, "args": args}))

    return run
